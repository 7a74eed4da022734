"""Virtual interfaces and the wait for the network to report them plugged."""

from __future__ import annotations

import logging
from typing import Any

from drivers.base import Vif
from flows import runtime
from flows.errors import VifPlugTimeout
from flows.steps.base import Step

LOG = logging.getLogger(__name__)


class PlugVif(Step):
    def __init__(self, index: int, vif: dict[str, Any], **kw: Any) -> None:
        super().__init__(name=f"plug_vif_{index}", **kw)
        self.vif = vif

    def execute(self, instance_uuid: str, host: str) -> None:
        runtime.current().driver_for(host).plug_vif(instance_uuid, Vif(**self.vif))

    def revert(self, instance_uuid: str, host: str, **_: object) -> None:
        runtime.current().driver_for(host).unplug_vif(instance_uuid, self.vif["id"])


class WaitVifPlugged(Step):
    """Honour vif_plugging_timeout / vif_plugging_is_fatal."""

    def __init__(self, vif_ids: list[str], **kw: Any) -> None:
        super().__init__(name="wait_vif_plugged", **kw)
        self.vif_ids = vif_ids

    def execute(self, instance_uuid: str, host: str) -> bool:
        rt = runtime.current()
        timeout, fatal = rt.conf.vif_plugging_timeout, rt.conf.vif_plugging_is_fatal
        if not self.vif_ids or (timeout == 0 and not fatal):
            return True
        if rt.driver_for(host).wait_for_vif_plugged(instance_uuid, self.vif_ids, timeout):
            return True
        if fatal:
            raise VifPlugTimeout(instance_uuid, timeout)
        LOG.warning(
            "vif-plugged events for %s missing after %ss; booting anyway (vif_plugging_is_fatal=False)",
            instance_uuid,
            timeout,
        )
        return False


class UnplugVifs(Step):
    """Forward-only: remove the host side of every interface."""

    def __init__(self, vif_ids: list[str], **kw: Any) -> None:
        super().__init__(name="unplug_vifs", **kw)
        self.vif_ids = vif_ids

    def execute(self, instance_uuid: str, host: str) -> None:
        drv = runtime.current().driver_for(host)
        for vif_id in self.vif_ids:
            drv.unplug_vif(instance_uuid, vif_id)
