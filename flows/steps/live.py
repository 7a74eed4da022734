"""Live-migration steps: a running guest moves from `host` to `destination`.

The point of no return is `switch_over`, which records the destination as
the instance's host. Until then every revert puts the world back as it was:
the guest running on the source, nothing on the destination, no claim there;
a migration that had already completed in the hypervisor is migrated back.
From then on the flow only goes forward. The reverts below therefore ask one
durable question first: has this operation switched the instance over?
A force-complete by post-copy moves that point earlier: the watcher records
the switch-over before post-copy starts (see _Watcher).
(After forward retries ran out, nothing is undone and take_hold's revert
leaves the instance in ERROR on the destination for an operator.)
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from computeflow.states import TaskState, VmState
from drivers.base import ComputeDriver
from drivers.errors import DriverError, GuestNotFound
from flows import runtime
from flows.steps import cancellation
from flows.errors import InsufficientCapacity, LiveMigrationAborted
from flows.params import FlavorParams
from flows.steps.base import Step
from flows.steps.instance import TakeHold
from flows.steps.resources import flavor_disk_gb
from persistence import claims, instances, progress

LOG = logging.getLogger(__name__)
STEP = "live_migration"


def switched_over(instance_uuid: str, destination: str) -> bool:
    """Whether the instance record already names the destination as its host."""
    with runtime.current().db.session() as s:
        inst = instances.get(s, instance_uuid)
        return inst is not None and inst.host == destination


class HoldForMigration(TakeHold):
    """take_hold; its revert leaves ERROR if the switch-over had happened."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(task_state=TaskState.MIGRATING, **kw)

    # taskflow passes every argument by name from the flow's store: the extra
    # `destination` is no Liskov hazard here.
    def revert(  # type: ignore[override]
        self,
        operation_id: str,
        instance_uuid: str,
        destination: str,
        prior_vm_state: str | None = None,
        prior_power_state: str | None = None,
        **_: object,
    ) -> None:
        if switched_over(instance_uuid, destination):
            with runtime.current().db.session() as s:
                instances.release_hold(s, instance_uuid, operation_id, task_state=None, vm_state=VmState.ERROR)
            return
        # TakeHold's own revert, without passing its fault checkpoints a second time.
        inspect.unwrap(TakeHold.revert)(
            self,
            operation_id=operation_id,
            instance_uuid=instance_uuid,
            prior_vm_state=prior_vm_state,
            prior_power_state=prior_power_state,
        )


class ClaimOnDestination(Step):
    """Claim the flavor on the destination (the source keeps its own claim)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="claim_destination", **kw)

    def execute(self, operation_id: str, instance_uuid: str, destination: str, flavor: FlavorParams) -> None:
        disk_gb = flavor_disk_gb(flavor)
        with runtime.current().db.session() as s:
            if not claims.claim(
                s, operation_id, destination, instance_uuid, flavor["vcpus"], flavor["ram_mb"], disk_gb
            ):
                raise InsufficientCapacity(
                    destination, f"{flavor['vcpus']} vCPU, {flavor['ram_mb']} MB RAM, {disk_gb} GB disk requested"
                )

    def revert(self, operation_id: str, instance_uuid: str, destination: str, **_: object) -> None:
        if not switched_over(instance_uuid, destination):
            with runtime.current().db.session() as s:
                claims.release(s, operation_id, destination)


def checked_migrate_data(instance_uuid: str, source: str, destination: str) -> dict[str, Any]:
    """The destination's check, then the source's; the destination's check is
    cleaned up whatever the source says. Only reads: safe to run again."""
    rt = runtime.current()
    dest_drv, src_drv = rt.driver_for(destination), rt.driver_for(source)
    dest_check = dest_drv.check_can_live_migrate_destination(instance_uuid, True)
    try:
        return src_drv.check_can_live_migrate_source(instance_uuid, dest_check)
    finally:
        dest_drv.check_can_live_migrate_destination_cleanup(dest_check)


class CheckLiveMigration(Step):
    def __init__(self, **kw: Any) -> None:
        super().__init__(name="check_live_migration", provides="migrate_data", **kw)

    def execute(self, instance_uuid: str, host: str, destination: str) -> dict[str, Any]:
        return checked_migrate_data(instance_uuid, host, destination)


class PreLiveMigration(Step):
    """Disks, ports and anything else the guest needs, made on the destination."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="pre_live_migration", provides="live_migrate_data", **kw)

    def execute(self, instance_uuid: str, destination: str, migrate_data: dict[str, Any]) -> dict[str, Any]:
        return runtime.current().driver_for(destination).pre_live_migration(instance_uuid, migrate_data)

    def revert(self, instance_uuid: str, destination: str, **_: object) -> None:
        if not switched_over(instance_uuid, destination):
            runtime.current().driver_for(destination).rollback_live_migration_at_destination(
                instance_uuid, destroy_disks=True
            )


class _Watcher:
    """The progress callback: writes a PROGRESS row when the percentage moves
    and passes on abort / force-complete requests found in the flow log.

    A force-complete that moves the guest beyond rollback (libvirt's post-copy)
    is the point of no return: the switch-over is recorded before it is asked
    for, so that no revert, now or after a crash, tries to undo the move."""

    def __init__(
        self, operation_id: str, instance_uuid: str, drv: ComputeDriver, destination: str, migrate_data: dict[str, Any]
    ) -> None:
        self.op, self.uuid, self.drv = operation_id, instance_uuid, drv
        self.destination, self.migrate_data = destination, migrate_data
        self.last_pct: int | None = None
        self.last_request = 0
        self.aborted = False

    def poll_requests(self) -> None:
        with runtime.current().db.session() as s:
            rows = progress.requests_after(s, self.op, self.last_request)
        for row in rows:
            self.last_request = row.id
            if row.state == progress.ABORT_REQUESTED:
                LOG.info("live migration of %s: abort requested", self.uuid)
                self.aborted = True
                self.drv.live_migration_abort(self.uuid)
            else:
                LOG.info("live migration of %s: force-complete requested", self.uuid)
                if self.drv.live_migration_force_complete_is_final(self.migrate_data):
                    with runtime.current().db.session() as s:
                        instances.update_if_held(s, self.uuid, self.op, host=self.destination)
                    LOG.info("live migration of %s: switched over to %s before post-copy", self.uuid, self.destination)
                self.drv.live_migration_force_complete(self.uuid)

    def __call__(self, pct: int) -> None:
        if pct != self.last_pct:
            text = f"{pct}%"
            run = cancellation.get(self.op)  # this run's ownership epoch: progress is fenced too
            with runtime.current().db.session() as s:
                progress.add(s, self.op, STEP, progress.PROGRESS, text, epoch=run.epoch if run is not None else None)
            progress.notify(self.op, STEP, text)
            self.last_pct = pct
        self.poll_requests()


class LiveMigrate(Step):
    """The migration itself, watched: progress to the flow log, requests to the driver.

    Run again after a crash, the driver re-attaches to a migration job the
    hypervisor still runs, or finishes one that completed meanwhile, or
    starts again (see docs/live-migration.md).
    """

    #: Done when the guest runs on the destination (a crash may come after the
    #: switch-over): recovery then goes forward whatever the default.
    probe_guest = "running"
    probe_host_arg = "destination"

    def __init__(self, **kw: Any) -> None:
        super().__init__(name=STEP, **kw)

    def execute(
        self, operation_id: str, instance_uuid: str, host: str, destination: str, live_migrate_data: dict[str, Any]
    ) -> None:
        drv = runtime.current().driver_for(host)
        watcher = _Watcher(operation_id, instance_uuid, drv, destination, live_migrate_data)
        watcher.poll_requests()  # an abort asked for before the migration began
        if watcher.aborted:
            raise LiveMigrationAborted(instance_uuid)
        try:
            drv.live_migration(instance_uuid, destination, live_migrate_data, progress=watcher)
        except DriverError:
            if watcher.aborted:
                raise LiveMigrationAborted(instance_uuid) from None
            raise

    def revert(self, instance_uuid: str, host: str, destination: str, **_: object) -> None:
        if switched_over(instance_uuid, destination):
            return
        rt = runtime.current()
        src, dest = rt.driver_for(host), rt.driver_for(destination)
        src.live_migration_abort(instance_uuid)  # a job still running (no-op without one)
        if _runs_on(dest, instance_uuid) and not _runs_on(src, instance_uuid):
            # It completed but was never switched over: the inverse of a migration.
            LOG.info("live migration of %s reverted: migrating it back to %s", instance_uuid, host)
            back = rt.driver_for(host).pre_live_migration(
                instance_uuid, checked_migrate_data(instance_uuid, destination, host)
            )
            dest.live_migration(instance_uuid, host, back)


def _runs_on(drv: ComputeDriver, instance_uuid: str) -> bool:
    try:
        drv.get_info(instance_uuid)
        return True
    except GuestNotFound:
        return False


class SwitchOver(Step):
    """Forward-only: the guest runs on the destination; the record says so."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="switch_over", **kw)

    def execute(self, operation_id: str, instance_uuid: str, destination: str) -> None:
        with runtime.current().db.session() as s:
            instances.update_if_held(s, instance_uuid, operation_id, host=destination)


class DriverCall(Step):
    """Forward-only: one post-migration driver call, idempotent."""

    def __init__(self, method: str, on: str, with_data: bool = False, **kw: Any) -> None:
        super().__init__(name=method, **kw)
        self.method, self.on, self.with_data = method, on, with_data

    def execute(self, instance_uuid: str, host: str, destination: str, live_migrate_data: dict[str, Any]) -> None:
        drv = runtime.current().driver_for(host if self.on == "source" else destination)
        args = (live_migrate_data,) if self.with_data else ()
        getattr(drv, self.method)(instance_uuid, *args)


class ReleaseSourceClaims(Step):
    """Forward-only: the source no longer runs the instance."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="release_source_claims", **kw)

    def execute(self, instance_uuid: str, host: str) -> None:
        with runtime.current().db.session() as s:
            claims.release_for_instance(s, instance_uuid, host)


class MarkMigrated(Step):
    """Forward-only: the instance shows its prior state on its new host; hold released."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(name="mark_done", **kw)

    def execute(
        self, operation_id: str, instance_uuid: str, destination: str, prior_vm_state: str, prior_power_state: str
    ) -> None:
        with runtime.current().db.session() as s:
            instances.release_hold(
                s,
                instance_uuid,
                operation_id,
                task_state=None,
                vm_state=prior_vm_state,
                power_state=prior_power_state,
                host=destination,
            )
