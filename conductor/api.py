"""The Conductor: validate a request, record it, run it, and resume orphans.

Submission checks everything it can (names, flavor, image, host, capacity,
instance state) before writing anything, then writes the instance, the
operation, the hold and any encrypted secret in one transaction. A request
that fails validation leaves the database exactly as it was.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass

from oslo_config import cfg
from sqlalchemy import exc as sa_exc

from conductor import boards, config, ownership
from conductor import moves
from conductor.handle import OperationHandle
from conductor.runner import EventSink, LeaseKeeper, LostOwnership, NotOwner, Runner, StepEvent, WaitingForHostSlot
from conductor.wakeups import Wakeups, open_wakeups
from drivers import DRIVER_NAMES
from drivers.base import ComputeDriver, LifecycleEvent
from drivers.faults import FaultPlan
from flows import catalog, placement, prepare, runtime
from flows.step_pool import StepPool
from flows.steps import attempts
from conductor.logs import remember_secret as logs_secret
from flows.errors import InstanceLocked, InvalidRequest, InvalidState, NotFound
from persistence import claims, events, hosts, instances, operations, operator_actions, schema
from persistence.models import Operation, utcnow
from persistence.secrets import SecretBox

LOG = logging.getLogger(__name__)
#: The live-output line of a run waiting in line for a host slot.
WAITING_STEP = "(waiting for a host slot)"
MAX_CAPACITY = 2**31 - 1  # the columns are 32-bit INTEGERs on every database
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class SpawnRequest:
    name: str
    flavor: str
    image: str
    host: str | None = None
    networks: tuple[str, ...] = ("default",)
    admin_password: str | None = None

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return (
            f"SpawnRequest(name={self.name!r}, flavor={self.flavor!r}, image={self.image!r}, "
            f"host={self.host!r}, networks={self.networks!r}, admin_password=<hidden>)"
        )


@dataclass(frozen=True)
class OperationStatus:
    id: str
    kind: str
    instance_uuid: str | None
    state: str
    error: str | None

    @classmethod
    def of(cls, op: Operation) -> OperationStatus:
        return cls(op.id, op.kind, op.instance_uuid, op.state, op.error)


class Conductor:
    """An in-process conductor bound to one configuration."""

    def __init__(self, conf: cfg.ConfigOpts, *, faults: FaultPlan | None = None) -> None:
        self.conf = conf
        self.db = config.open_database(conf)
        schema.ensure_current(self.db, auto_upgrade=conf.conductor.auto_upgrade and self.db.dialect == "sqlite")
        self.rt = runtime.Runtime(
            conf=conf,
            db=self.db,
            secrets=SecretBox(conf.database.secret_key_file),
            faults=faults or FaultPlan(conf.fake.faults),
        )
        self.rt.on_new_driver.append(self._listen_to)
        self.owner = conf.conductor.name or ownership.my_identity()
        self.lease_seconds = conf.conductor.lease_seconds
        self._executor = StepPool(conf.conductor.workers, name="step", idle_seconds=conf.conductor.idle_thread_seconds)
        attempts.configure_call_threads(conf.conductor.idle_thread_seconds)
        self._leases = LeaseKeeper(self.rt, self.owner, self.lease_seconds).__enter__()
        self._board: boards.Board | None = None
        self._wakeups: Wakeups | None = None
        # With a jobboard a conductor service runs the operation: submit it unowned.
        self._submit_owner = None if conf.conductor.jobboard else self.owner
        self.runner = Runner(
            self.rt, self.owner, lease_seconds=self.lease_seconds, executor=self._executor, leases=self._leases
        )
        runtime.install(self.rt)  # last: a constructor that failed leaves none behind

    @property
    def board(self) -> boards.Board:
        """Where submissions are posted ([conductor] jobboard); opened on first use."""
        if self._board is None:
            self._board = boards.open_board(self.conf, self.owner, self.db)
        return self._board

    @property
    def wakeups(self) -> Wakeups:
        """Notices of ended operations for `wait()` (conductor/wakeups.py); opened on first use."""
        if self._wakeups is None:
            self._wakeups = open_wakeups(self.conf, self.db, self.board)
        return self._wakeups

    def _submitted(self, op_id: str) -> OperationHandle:
        """Post the committed operation; if posting fails, a conductor's
        reconciliation posts it (the row is the source of truth)."""
        if self.conf.conductor.jobboard:
            try:
                self.board.post(op_id, utcnow())
            except Exception as e:  # noqa: BLE001 - any board failure is recovered the same way
                LOG.warning("operation %s recorded but not posted (%s); a conductor will post it", op_id, e)
        return OperationHandle(op_id, self)

    def release_idle_connections(self) -> None:
        """After a burst: the database connections the pools kept for it go
        back to the server, and their client-side buffers to the allocator,
        but one per pool, open for the next operation."""
        self.db.release_idle_connections()
        self.runner.backend.release_idle_connections()

    def close(self) -> None:
        if self._wakeups is not None:
            self._wakeups.close()
        if self._board is not None:
            self._board.close()
        self._leases.__exit__(None, None, None)
        self._executor.shutdown(wait=True)
        self.rt.close_drivers()  # before the database: late events must still find it
        self.runner.backend.close()
        runtime.uninstall(self.rt)
        self.db.dispose()

    def __enter__(self) -> Conductor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- hypervisor events ---------------------------------------------------
    def _listen_to(self, drv: ComputeDriver) -> None:
        drv.register_event_listener(self._on_lifecycle_event)

    def _on_lifecycle_event(self, ev: LifecycleEvent) -> None:
        """A guest changed state by itself: record the event and, unless an
        operation holds the instance (it owns the record then), its power state."""
        with self.db.session() as s:
            events.record(s, ev.instance_uuid, ev.host, "lifecycle", ev.power_state.value)
            synced = instances.sync_power_state(s, ev.instance_uuid, ev.host, ev.power_state.value)
        LOG.info(
            "instance %s on %s is %s (reported by the hypervisor%s)",
            ev.instance_uuid,
            ev.host,
            ev.power_state.value,
            "" if synced else "; record held or elsewhere, kept",
        )

    # -- hosts --------------------------------------------------------------
    def add_host(
        self, name: str, *, vcpus: int, ram_mb: int, disk_gb: int, driver: str | None = None, uri: str | None = None
    ) -> None:
        driver = driver or self.conf.compute_driver
        if not NAME_RE.match(name):
            raise InvalidRequest(f"invalid host name {name!r}: 1-63 letters, digits, '.', '_' or '-'")
        if driver not in DRIVER_NAMES:
            raise InvalidRequest(f"unknown driver {driver!r} (known: {', '.join(DRIVER_NAMES)})")
        for what, value in (("vcpus", vcpus), ("ram_mb", ram_mb), ("disk_gb", disk_gb)):
            if not 0 < value <= MAX_CAPACITY:
                raise InvalidRequest(f"{what} must be between 1 and {MAX_CAPACITY}, got {value}")
        with self.db.session() as s:
            if hosts.get_host(s, name) is not None:
                raise InvalidRequest(f"host {name!r} already exists")
            hosts.add_host(s, name, driver, uri, vcpus, ram_mb, disk_gb)

    # -- submission ---------------------------------------------------------
    def submit_spawn(self, req: SpawnRequest) -> OperationHandle:
        if not NAME_RE.match(req.name):
            raise InvalidRequest(f"invalid instance name {req.name!r}: 1-63 letters, digits, '.', '_' or '-'")
        kind = catalog.get("spawn")
        op_id, inst_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        with self.db.session() as s:
            flavor_d = prepare.flavor_dict(s, req.flavor)
            image_d = prepare.image_dict(s, req.image)
            if instances.find_live(s, req.name) is not None:
                raise InvalidRequest(f"an instance named {req.name!r} already exists")
            host = placement.place(s, flavor_d, req.host)
            vifs = [{"id": str(uuid.uuid4()), "mac": _mac(), "network": n} for n in req.networks]
            instances.create(s, inst_uuid, req.name, flavor_d["name"], image_d["name"], held_by=op_id, vifs=vifs)
            params = {
                "instance_uuid": inst_uuid,
                "name": req.name,
                "host": host,
                "flavor": flavor_d,
                "image": image_d,
                "vifs": vifs,
                "admin_password": (self.rt.secrets.store(s, op_id, req.admin_password) if req.admin_password else None),
            }
            operations.create(
                s, op_id, "spawn", inst_uuid, params, kind.version, self._submit_owner, self.lease_seconds
            )
            try:
                s.flush()
            except sa_exc.IntegrityError:
                raise InvalidRequest(f"an instance named {req.name!r} already exists") from None
        LOG.info("submitted spawn %s of %s on %s", op_id, req.name, host)
        return self._submitted(op_id)

    def submit(self, kind_name: str, instance: str, **params) -> OperationHandle:
        """Submit an operation on an existing instance.

        Refused before anything is written when the operation or a parameter
        is unknown or mistyped, the instance does not exist, its vm_state is
        not one the operation accepts, or another operation holds it.
        """
        try:
            kind = catalog.get(kind_name)
        except KeyError as e:
            raise InvalidRequest(str(e.args[0])) from None
        if kind.accepts_vm_states is None:
            raise InvalidRequest(f"{kind_name} does not act on an existing instance")
        values = _validated_params(kind, params)
        op_id = str(uuid.uuid4())
        with self.db.session() as s:
            inst = instances.find_live(s, instance)
            if inst is None:
                raise NotFound("instance", instance)
            if inst.held_by is not None:
                raise _busy(s, inst.name, inst.held_by)
            if inst.vm_state not in kind.accepts_vm_states:
                raise InvalidState(inst.name, inst.vm_state, kind_name, kind.accepts_vm_states)
            with runtime.active(self.rt):  # a prepare may read this conductor's options
                extra = kind.prepare(s, inst, values, op_id) if kind.prepare else {}
            holder = instances.take_hold(s, inst.uuid, op_id)
            if holder is not None:
                raise _busy(s, inst.name, holder)
            for p in kind.params:
                if p.secret and values.get(p.name) is not None:
                    logs_secret(values[p.name])
                    values[p.name] = self.rt.secrets.store(s, op_id, values[p.name])
            stored = {
                "operation": kind_name,
                "instance_uuid": inst.uuid,
                "name": inst.name,
                "host": inst.host,
                "vifs": inst.vifs,
                "prior_vm_state": inst.vm_state,
                "prior_power_state": inst.power_state,
                **values,
                **extra,
            }
            operations.create(
                s, op_id, kind_name, inst.uuid, stored, kind.version, self._submit_owner, self.lease_seconds
            )
        LOG.info("submitted %s %s of %s", kind_name, op_id, inst.name)
        return self._submitted(op_id)

    def submit_destroy(self, instance: str) -> OperationHandle:
        return self.submit("destroy", instance)

    # -- running ------------------------------------------------------------
    def run(
        self, op_id: str, on_event: EventSink | None = None, *, dead_owners: tuple[str, ...] = ()
    ) -> OperationStatus:
        """Run the operation here, waiting in line first if a per-host limit
        is reached (conductor/host_limits.py); `on_event` hears of the wait once."""
        said = False
        while True:
            seen = self.runner.slots.generation()
            try:
                return OperationStatus.of(self.runner.run(op_id, dead_owners=dead_owners, on_event=on_event))
            except WaitingForHostSlot as e:
                if not said:
                    LOG.info("%s", e)
                    if on_event is not None:
                        on_event(StepEvent(op_id, WAITING_STEP, "WAITING", "; ".join(str(w) for w in e.waits)))
                    said = True
                with self.db.session() as s:  # a submission of ours stays ours while it waits
                    operations.renew_leases(s, self.owner, [op_id], self.lease_seconds)
                # A release here wakes it at once; one elsewhere is seen on the next try.
                self.runner.slots.wait_for_release(seen, self.conf.conductor.poll_interval)

    def resume(self, on_event: EventSink | None = None) -> list[OperationStatus]:
        """Finish every operation whose owner is gone (dead process or lapsed
        lease), each in the direction its recovery plan chooses (recovery.py)."""
        from conductor import recovery  # it imports this module's users

        recovery.default_directions(self.conf)  # a bad setting fails before anything runs
        done = []
        with self.db.session() as s:
            orphans = operations.resumable(s)
        for op in orphans:
            try:
                done.append(recovery.resume_one(self, op.id, None, self.owner, on_event))
            except (NotOwner, LostOwnership, operator_actions.Refused):
                continue  # another conductor has it, or it ended meanwhile
        for op_id in moves.auto_confirm(self):  # resizes past [conductor] resize_confirm_window
            done.append(OperationStatus.of(self.runner.run(op_id, on_event=on_event)))
        return done

    def status(self, op_id: str) -> OperationStatus:
        with self.db.session() as s:
            op = operations.get(s, op_id)
            if op is None:
                raise NotFound("operation", op_id)
            return OperationStatus.of(op)

    def leaks(self) -> dict:
        """What the drivers and claims still hold (used by tests and `inventory`)."""
        with self.db.session() as s:
            host_names = [h.name for h in hosts.list_hosts(s)]
            held = [c.operation_id for c in claims.all_claims(s)]
        return {"claims": held, "hosts": {h: self.rt.driver_for(h).inventory() for h in host_names}}


def _validated_params(kind: catalog.OperationKind, params: dict) -> dict:
    known = {p.name: p for p in kind.params}
    unknown = set(params) - set(known)
    if unknown:
        raise InvalidRequest(f"{kind.name} takes no parameter {', '.join(sorted(unknown))}")
    values = {}
    for p in kind.params:
        value = params.get(p.name, p.default)
        if value is None and p.required:
            raise InvalidRequest(f"{kind.name} needs {p.name}")
        if value is not None and not isinstance(value, p.type):
            raise InvalidRequest(f"{kind.name}: {p.name} must be {p.type.__name__}, got {type(value).__name__}")
        values[p.name] = value
    return values


def _mac() -> str:
    b = uuid.uuid4().bytes
    return "fa:16:3e:" + ":".join(f"{x:02x}" for x in b[:3])


def _busy(s, instance: str, holder: str) -> InstanceLocked:
    """The refusal for a held instance, saying whether its holder runs or needs repair."""
    op = operations.get(s, holder)
    return InstanceLocked(instance, holder, op.state if op is not None else None)
