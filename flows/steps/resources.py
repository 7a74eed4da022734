"""Resource claims on a host."""

from __future__ import annotations

from typing import Any

from flows import runtime
from flows.errors import InsufficientCapacity
from flows.params import FlavorParams
from flows.steps.base import Step
from persistence import claims, instances


def flavor_disk_gb(flavor: FlavorParams) -> int:
    """Disk a flavor claims: root + ephemeral + swap rounded up to whole GB.

    Submission's capacity check and the claim itself must agree, so both use this.
    """
    return flavor["root_gb"] + flavor["ephemeral_gb"] + -(-flavor["swap_mb"] // 1024)


class ClaimResources(Step):
    """Claim the flavor's vCPUs, RAM and disk on the target host."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="claim_resources", **kw)

    def execute(self, operation_id: str, instance_uuid: str, host: str, flavor: FlavorParams) -> None:
        disk_gb = flavor_disk_gb(flavor)
        with runtime.current().db.session() as s:
            if not claims.claim(s, operation_id, host, instance_uuid, flavor["vcpus"], flavor["ram_mb"], disk_gb):
                raise InsufficientCapacity(
                    host, f"{flavor['vcpus']} vCPU, {flavor['ram_mb']} MB RAM, {disk_gb} GB disk requested"
                )
            instances.update_if_held(s, instance_uuid, operation_id, host=host)

    def revert(self, operation_id: str, instance_uuid: str, host: str, **_: object) -> None:
        with runtime.current().db.session() as s:
            claims.release(s, operation_id, host)
            instances.update_if_held(s, instance_uuid, operation_id, host=None)


class ReleaseInstanceClaims(Step):
    """Forward-only: give back everything the instance holds on its host and
    on the other hosts a resize left copies on (destroy's copy_hosts)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="release_claims", **kw)

    def execute(self, instance_uuid: str, host: str, copy_hosts: list[str] | None = None) -> None:
        with runtime.current().db.session() as s:
            for h in {host, *(copy_hosts or [])}:
                claims.release_for_instance(s, instance_uuid, h)
