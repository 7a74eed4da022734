"""The wrapper every LibvirtDriver call goes through: libvirt's errors
translated into computeflow's driver errors, and a daemon restart waited out.

Apart from driver.py so the contract's methods read as what they do, and the
reconnection policy (docs/libvirt.md, "A daemon that restarts") is read in
one place.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from typing import TYPE_CHECKING

import libvirt

from drivers.errors import ConnectionLost, DriverError, GuestNotFound, HypervisorUnavailable
from drivers.libvirt.host import is_connection_error

if TYPE_CHECKING:
    from drivers.libvirt.driver import LibvirtDriver

#: Pause before a call is repeated after a lost connection came back.
_REPEAT_PAUSE_S = 0.5
LOG = logging.getLogger(__name__)


def translated(method=None, *, repeatable: bool = True):
    """Turn libvirtError into computeflow's driver errors, riding out a daemon restart.

    A lost connection (the daemon restarted or crashed; or, for a call that
    makes the daemon talk to another one, that one went away) is waited out:
    the driver reconnects every half second, up to `reconnect_timeout`
    seconds, then makes the call again from the start. That is safe because
    every call here is written to be repeated, as a step's retry repeats it:
    each first looks at what the daemon and the disk hold (a guest already
    running is not started again; a migration job still running is watched,
    not started twice). A `repeatable=False` call is not repeated. If the
    daemon does not come back (or was never reached by this driver: a wrong
    URI is reported at once), ConnectionLost (HypervisorUnavailable, transient)
    goes to the step. A vanished domain is GuestNotFound; any other failure
    a DriverError carrying libvirt's message.
    """
    if method is None:
        return functools.partial(translated, repeatable=repeatable)
    has_uuid = "instance_uuid" in inspect.signature(method).parameters

    @functools.wraps(method)
    def wrapper(self: LibvirtDriver, *args, **kwargs):
        deadline = None
        while True:
            try:
                return method(self, *args, **kwargs)
            except libvirt.libvirtError as e:
                if not is_connection_error(e):
                    instance_uuid = kwargs.get("instance_uuid", args[0] if has_uuid and args else None)
                    if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN and instance_uuid:
                        raise GuestNotFound(instance_uuid) from None
                    raise DriverError(f"libvirt on {self.host}: {e}") from None
                self._host.connection_failed()
                lost: HypervisorUnavailable = ConnectionLost(self.host, str(e))
            except ConnectionLost as e:
                lost = e
            if not repeatable or self._host.closed or not self._host.ever_connected:
                raise lost from None  # a daemon never reached is likely a wrong URI: say so now
            if deadline is None:
                deadline = time.monotonic() + self.reconnect_timeout
            left = deadline - time.monotonic()
            if left <= 0:
                raise lost from None
            LOG.warning(
                "%s on %s: %s; waiting up to %.0fs for the daemon, then repeating the call",
                method.__name__,
                self.host,
                lost,
                left,
            )
            if not self._host.wait_until_reachable(deadline):
                raise lost from None
            threading.Event().wait(_REPEAT_PAUSE_S)  # a peer's error comes back at once

    return wrapper
