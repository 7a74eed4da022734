"""A libvirt daemon restarted in the middle of an operation, for real.

The daemon is stopped (SIGTERM, as its scripts stop it) while an operation is
in flight, the driver's next call finds the connection dead and waits for the
daemon (drivers/libvirt/calls.py, [libvirt] reconnect_timeout), the test sees
it waiting (`Host.waiting`) and starts the daemon again with the project's
script; the call is then made again from the start and the operation
finishes. Afterwards nothing is left over: the hosts' reports hold exactly the
instance's guest, disks and port, and a reconcile dry run finds nothing.

Synchronisation is on observable state only: a flow-log row, the driver
waiting for its daemon, the guest's console.

- spawn: the daemon goes away while the spawn holds before power_on (its
  guest defined, its disks made);
- snapshot: the daemon goes away while the snapshot holds the guest paused
  (between its pause and its unpause);
- live migration: the source daemon goes away while the migration job runs;
  the restarted daemon cancels the job it finds (the guest runs on on the
  source), the repeated call starts the migration again and it completes.
"""

from __future__ import annotations

import signal
import threading
import time

import libvirt
import pytest

from conductor import reconcile
from conductor.api import SpawnRequest
from drivers.base import Held, PowerState
from drivers.libvirt import snapshot as libvirt_snapshot
from persistence import flowlog, hosts, instances, operations
from tests.drivers.libvirt.conftest import poll
from tests.drivers.libvirt.daemons import SECOND, SYSTEM
from tests.drivers.libvirt.test_live_migration import (  # noqa: F401 - fixtures
    MIGRATE_S,
    SLOW_MIB_S,
    assert_kept_running_on,
    domain,
    make_pair,
    pair,
    progress_of,
    second_daemon,
    system_shared,
)
from tests.drivers.libvirt.test_qemu_guests import (
    BOOT_S,
    Console,
    qemu_conductor,  # noqa: F401 - fixture
    spawn_vm1,
)

pytestmark = pytest.mark.integration

RESTART_S = 120  # bound on a daemon's stop plus start (2-12 s seen here)


@pytest.fixture
def daemons_back():
    """Both daemons run again after the test, whatever it did (torn down before the
    conductor fixture requested ahead of it cleans up through them)."""
    yield
    SYSTEM.ensure_running()
    SECOND.ensure_running()


def _in_thread(c, op_id: str) -> tuple[threading.Thread, dict]:
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("status", c.run(op_id)), daemon=True)
    t.start()
    return t, out


def _step_states(c, op_id: str, step: str) -> list[str]:
    with c.db.session() as s:
        return [r.state for r in flowlog.entries(s, op_id) if r.step == step]


def _restart_while_waited_for(daemon, drv) -> float:
    """The daemon is down and a call of `drv` waits for it: start it; seconds it was away."""
    poll(lambda: drv.daemon.waiting > 0, RESTART_S, f"a call on {drv.host} to wait for its daemon")
    started = time.monotonic()
    daemon.start()
    return time.monotonic() - started


def _holds_exactly(drv, instance_uuid: str) -> None:
    """The host's report: the instance's guest, its disks and its port, nothing else."""
    report = drv.host_report().resources
    assert {r.instance_uuid for r in report} == {instance_uuid}, report
    kinds = {r.kind for r in report}
    assert {Held.GUEST, Held.DISK, Held.PORT} <= kinds <= {Held.GUEST, Held.DISK, Held.PORT}, report


def _audit_clean(c) -> None:
    found = reconcile.audit(c)
    assert found.findings == [], [f.line() for f in found.findings]


def test_spawn_rides_out_a_daemon_restart(qemu_conductor, daemons_back):
    c = qemu_conductor
    drv = c.rt.driver_for("qemu1")
    drv.init_host()  # connected once: the driver knows the daemon
    reconnects = drv.daemon.reconnects
    c.rt.faults.arm("power_on:execute:hang:before")
    op_id = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros"))
    started = time.monotonic()
    t, out = _in_thread(c, op_id)
    poll(lambda: "RUNNING" in _step_states(c, op_id, "power_on"), BOOT_S, "power_on to start")
    SYSTEM.stop()
    c.rt.faults.release_hangs.set()
    away = _restart_while_waited_for(SYSTEM, drv)
    t.join(RESTART_S)
    took = time.monotonic() - started
    assert out["status"].state == operations.SUCCEEDED, out["status"].error
    assert drv.daemon.reconnects > reconnects
    with c.db.session() as s:
        instance_uuid = operations.get(s, op_id).instance_uuid
    Console(drv, instance_uuid).wait_ticks_beyond(1, boots=1)
    assert drv.get_info(instance_uuid).state is PowerState.RUNNING
    _holds_exactly(drv, instance_uuid)
    _audit_clean(c)
    print(f"spawn across a restart of the system daemon: {took:.1f} s, of which the daemon's start {away:.1f} s")


def test_snapshot_rides_out_a_daemon_restart_while_the_guest_is_paused(qemu_conductor, daemons_back, monkeypatch):
    c = qemu_conductor
    drv, instance_uuid = spawn_vm1(c)
    con = Console(drv, instance_uuid)
    tick = con.wait_ticks_beyond(1, boots=1)
    real_export, paused_at_copy = libvirt_snapshot.disks.export_flat, []

    def export_while_the_daemon_is_away(*args, **kwargs):
        # Called with the guest paused by the snapshot: the daemon goes away now.
        if not paused_at_copy:
            paused_at_copy.append(drv.get_info(instance_uuid).state)
            SYSTEM.stop()
        return real_export(*args, **kwargs)

    monkeypatch.setattr(libvirt_snapshot.disks, "export_flat", export_while_the_daemon_is_away)
    op_id = c.submit("snapshot", "vm1", image_name="vm1-snap")
    started = time.monotonic()
    t, out = _in_thread(c, op_id)
    away = _restart_while_waited_for(SYSTEM, drv)
    t.join(RESTART_S)
    took = time.monotonic() - started
    assert out["status"].state == operations.SUCCEEDED, out["status"].error
    assert paused_at_copy == [PowerState.PAUSED]
    # Unpaused after the restart, in the same boot, counting on; the marker is gone.
    assert drv.get_info(instance_uuid).state is PowerState.RUNNING
    con.wait_ticks_beyond(tick)
    assert con.boots() == 1
    assert libvirt_snapshot.PAUSE_MARKER not in {r.detail for r in drv.host_report().resources if r.kind is Held.DISK}
    with c.db.session() as s:
        image = hosts.get_image(s, "vm1-snap")
    assert image is not None and image.size_mb == 1024
    _holds_exactly(drv, instance_uuid)
    _audit_clean(c)
    print(f"snapshot across a restart of the system daemon: {took:.1f} s, of which the daemon's start {away:.1f} s")


def test_live_migration_rides_out_a_restart_of_the_source_daemon(pair, daemons_back):
    c, uuid, con, _ = pair
    src = c.rt.driver_for("src")
    tick = con.wait_ticks_beyond(2)
    domain(c, "src", uuid).migrateSetMaxSpeed(SLOW_MIB_S, 0)  # slow: the restart lands mid-job
    op_id = c.submit("live_migration", "vm1", target_host="dst")
    t, out = _in_thread(c, op_id)
    poll(lambda: progress_of(c, op_id), MIGRATE_S, "the migration's first progress row")
    t0 = time.monotonic()
    SYSTEM.stop(signal.SIGKILL)  # a crash: SIGTERM would wait 30 s for the migration's call
    stopped = time.monotonic() - t0
    away = _restart_while_waited_for(SYSTEM, src)
    t1 = time.monotonic()
    # Either the restarted daemon cancelled the job it found (the guest runs on, on the
    # source, and the repeated call migrates it again, at full speed now: seen with
    # SIGTERM), or the guest is on the destination when the daemon answers and the
    # repeated call finds it arrived (seen with SIGKILL).
    try:
        domain(c, "src", uuid).migrateSetMaxSpeed(8192, 0)
        on_source_after_restart = True
    except libvirt.libvirtError:
        on_source_after_restart = False
    t.join(MIGRATE_S)
    assert out["status"].state == operations.SUCCEEDED, out["status"].error
    assert progress_of(c, op_id)[-1] == "100%"
    print(
        f"source daemon: stopped in {stopped:.1f} s, started in {away:.1f} s; the migration "
        f"then finished in {time.monotonic() - t1:.1f} s; the guest was "
        f"{'still' if on_source_after_restart else 'no longer'} on the source after the restart"
    )
    with c.db.session() as s:
        assert instances.get(s, uuid).host == "dst"
    assert_kept_running_on(c, uuid, "dst", tick)
    _holds_exactly(c.rt.driver_for("dst"), uuid)
    assert src.host_report().resources == ()
    _audit_clean(c)


def test_live_migration_survives_a_crash_of_the_destination_daemon(pair, daemons_back):
    """The destination daemon is SIGKILLed and started again while the job runs (its
    QEMU runs on; the new daemon takes it over). Whichever way the job ends, the
    operation ends by itself: completed (the guest on dst; seen every time) or
    reverted (on src), one guest counting in the same boot, the other daemon holding
    nothing of it."""
    c, uuid, con, _ = pair
    tick = con.wait_ticks_beyond(2)
    domain(c, "src", uuid).migrateSetMaxSpeed(SLOW_MIB_S, 0)
    op_id = c.submit("live_migration", "vm1", target_host="dst")
    t, out = _in_thread(c, op_id)
    poll(lambda: progress_of(c, op_id), MIGRATE_S, "the migration's first progress row")
    SECOND.stop(signal.SIGKILL)
    SECOND.start()
    try:  # the link recovers: no need to wait minutes at 1 MiB/s
        domain(c, "src", uuid).migrateSetMaxSpeed(8192, 0)
    except libvirt.libvirtError:
        pass  # the job ended meanwhile
    t.join(MIGRATE_S)
    status = out["status"]
    assert status.state in (operations.SUCCEEDED, operations.REVERTED), status.error
    host = "dst" if status.state == operations.SUCCEEDED else "src"
    with c.db.session() as s:
        assert instances.get(s, uuid).host == host
    assert_kept_running_on(c, uuid, host, tick, boots=1 if host == "src" else 0)
    _holds_exactly(c.rt.driver_for(host), uuid)
    _audit_clean(c)
    print(f"destination daemon crashed mid-migration: {status.state}")
