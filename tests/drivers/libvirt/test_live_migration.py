"""Live migration of a real QEMU guest between two libvirt daemons on this
machine: qemu:///system (host `src`) and the second daemon of
scripts/libvirt/start_second_daemon.sh (host `dst`), end to end through the
live_migration flow and the conductor, in both directions.

Host `src` is reached through the path start_daemon.sh binds the system
daemon's /run/libvirt to: the second daemon has a /run/libvirt of its own, so
there `qemu:///system` would be itself, and it is the source daemon that
connects to the destination.

The guest's serial console is the proof: it prints "tick N" every second, so
a guest that kept running across the move goes on counting on the
destination without printing "booted" again, and one that stayed on the
source after a rollback goes on counting there.

A migration is made slow where a test needs to act while it runs (abort,
a conductor killed mid-way) by capping the domain's migration bandwidth
through libvirt, as a slow network would: no sleeps as synchronisation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import libvirt
import pytest

from conductor.api import SpawnRequest
from flows import live_migration
from persistence import claims, flowlog, instances, operations, progress
from tests.conftest import REPO
from tests.drivers.libvirt.conftest import SCRIPTS, missing, poll
from tests.drivers.libvirt.test_qemu_guests import BOOT_S, Console

pytestmark = pytest.mark.integration

SECOND_DIR = os.environ.get("COMPUTEFLOW_TEST_SECOND_DAEMON_DIR", "/var/tmp/computeflow-libvirt2")
SECOND_URI = f"qemu+unix:///system?socket={SECOND_DIR}/sock/libvirt-sock"
SHARED_SOCK_DIR = os.environ.get("COMPUTEFLOW_TEST_SYSTEM_SOCK_DIR", "/var/tmp/computeflow-libvirt1/sock")
#: qemu:///system under a name that means it in the second daemon's namespace too.
SYSTEM_SHARED_URI = f"qemu+unix:///system?socket={SHARED_SOCK_DIR}/libvirt-sock"
MIGRATE_S = 120
SLOW_MIB_S = 1  # a migration capped at this speed takes minutes: time to act on it


@pytest.fixture(scope="session")
def second_daemon(qemu_system) -> str:
    probe = subprocess.run(["virsh", "-c", SECOND_URI, "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        missing(
            f"second libvirtd not answering at {SECOND_URI}: {probe.stderr.strip()}",
            f"{SCRIPTS}/start_second_daemon.sh as root",
        )
    return SECOND_URI


def _host_uuid(uri: str) -> str:
    conn = libvirt.open(uri)
    try:
        return conn.getCapabilities().split("<uuid>", 1)[1].split("<", 1)[0]
    finally:
        conn.close()


@pytest.fixture(scope="session")
def system_shared(qemu_system) -> str:
    """qemu:///system at the path that names it in both daemons' namespaces."""
    fix = f"{SCRIPTS}/start_daemon.sh as root"
    try:
        same = _host_uuid(SYSTEM_SHARED_URI) == _host_uuid(qemu_system)
    except libvirt.libvirtError as e:
        missing(f"qemu:///system not reachable at {SYSTEM_SHARED_URI}: {e}", fix)
    if not same:
        missing(f"{SYSTEM_SHARED_URI} is not the daemon of {qemu_system}", fix)
    return SYSTEM_SHARED_URI


@pytest.fixture
def make_pair(make_conductor, system_shared, second_daemon, test_guest, shared_tmp):
    """make(cmdline, libvirt_conf): a conductor with hosts src (qemu:///system) and dst (the
    second daemon), vm1 on src printing ticks; returns (conductor, instance uuid, console on
    src, config file)."""
    return lambda cmdline="", libvirt_conf="": _pair(
        make_conductor, system_shared, second_daemon, test_guest, shared_tmp, cmdline, libvirt_conf
    )


@pytest.fixture
def pair(make_pair):
    return make_pair()


def _pair(make_conductor, system_shared, second_daemon, test_guest, shared_tmp, cmdline: str, libvirt_conf: str):
    kernel, initrd = test_guest
    c = make_conductor(
        f"[libvirt]\ninstances_path = {shared_tmp}/instances\nguest_kernel = {kernel}\n"
        f"guest_initrd = {initrd}\nguest_cmdline = console=ttyS0 quiet {cmdline}\n" + libvirt_conf,
        state_path=shared_tmp / "state",
    )
    c.conf.set_override("boot_timeout", BOOT_S)
    c.add_host("src", vcpus=2, ram_mb=4096, disk_gb=20, driver="libvirt", uri=system_shared)
    c.add_host("dst", vcpus=2, ram_mb=4096, disk_gb=20, driver="libvirt", uri=second_daemon)
    op_id = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros", host="src"))
    status = c.run(op_id)
    assert status.state == operations.SUCCEEDED, status.error
    with c.db.session() as s:
        uuid = operations.get(s, op_id).instance_uuid
    con = Console(c.rt.driver_for("src"), uuid)
    con.wait_ticks_beyond(1, boots=1)
    conf_file = max(Path(c.conf.config_file[0]).parent.glob("computeflow-*.conf"), key=lambda p: p.stat().st_mtime)
    return c, uuid, con, conf_file


def progress_of(c, op_id: str) -> list[str]:
    with c.db.session() as s:
        return [r.result for r in flowlog.entries(s, op_id) if r.state == progress.PROGRESS]


def domain(c, host: str, uuid: str) -> libvirt.virDomain:
    return c.rt.driver_for(host)._host.get_connection().lookupByUUIDString(uuid)


def assert_kept_running_on(c, uuid: str, host: str, tick_before: int, boots: int = 0) -> None:
    """The guest runs on `host` alone, holds its only claim there, and goes on counting:
    ticks past `tick_before` and no boot line beyond the `boots` its console file had."""
    here, there = c.rt.driver_for(host), c.rt.driver_for("dst" if host == "src" else "src")
    assert here.inventory().guests == (uuid,)
    assert there.inventory().guests == () and there.inventory().disks == ()
    con = Console(here, uuid)
    try:
        poll(
            lambda: con.boots() == boots and con.last_tick() > tick_before,
            MIGRATE_S,
            f"ticks past {tick_before} on {host}'s console",
        )
    except pytest.fail.Exception as e:  # say what the guest was doing
        dom = domain(c, host, uuid)
        raise AssertionError(f"{e}; domain state on {host} {dom.state()}, console tail {con.text()[-400:]!r}") from None
    with c.db.session() as s:
        assert {(cl.host, cl.instance_uuid) for cl in claims.all_claims(s)} == {(host, uuid)}


def assert_kept_running_on_dst(c, uuid: str, tick_before: int) -> None:
    # The same boot goes on counting on the destination: no boot line, ticks past the old ones.
    assert_kept_running_on(c, uuid, "dst", tick_before)
    assert Console(c.rt.driver_for("dst"), uuid).ticks()[0] > 1


def migrate(c, target: str) -> float:
    """Live-migrate vm1 to `target`; the seconds it took (printed: docs/libvirt.md's figures)."""
    started = time.monotonic()
    op_id = c.submit("live_migration", "vm1", target_host=target)
    status = c.run(op_id)
    took = time.monotonic() - started
    assert status.state == operations.SUCCEEDED, status.error
    assert progress_of(c, op_id)[-1] == "100%"
    print(f"live migration to {target}: {took:.1f} s")
    return took


def test_live_migration_moves_a_running_guest_and_it_keeps_printing(pair):
    c, uuid, con, _ = pair
    tick = con.wait_ticks_beyond(2)
    op_id = c.submit("live_migration", "vm1", target_host="dst")
    status = c.run(op_id)
    assert status.state == operations.SUCCEEDED, status.error
    rows = progress_of(c, op_id)
    assert rows and rows[-1] == "100%", rows
    assert_kept_running_on_dst(c, uuid, tick)
    assert domain(c, "dst", uuid).isPersistent()
    # destroy on the destination leaves nothing on either daemon
    assert c.run(c.submit("destroy", "vm1")).state == operations.SUCCEEDED
    for host in ("src", "dst"):
        inv = c.rt.driver_for(host).inventory()
        assert inv.empty, (host, inv)


def test_a_failing_destination_rolls_back_and_the_guest_runs_on(pair, second_daemon):
    c, uuid, con, _ = pair
    # The destination daemon already has another domain of the guest's name: it refuses
    # the incoming migration.
    squatter = libvirt.open(second_daemon)
    xml = (
        f"<domain type='qemu'><name>cf-{uuid}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    squatter.defineXML(xml)
    try:
        tick = con.wait_ticks_beyond(2)
        status = c.run(c.submit("live_migration", "vm1", target_host="dst"))
        assert status.state == operations.REVERTED, status.error
        assert c.rt.driver_for("dst").inventory().empty
    finally:
        squatter.lookupByName(f"cf-{uuid}").undefine()
        squatter.close()
    assert c.rt.driver_for("src").inventory().guests == (uuid,)
    con.wait_ticks_beyond(tick + 1)
    assert con.boots() == 1
    with c.db.session() as s:
        assert {cl.host for cl in claims.all_claims(s)} == {"src"}


def test_abort_of_a_running_migration(pair):
    c, uuid, con, _ = pair
    domain(c, "src", uuid).migrateSetMaxSpeed(SLOW_MIB_S, 0)
    op_id = c.submit("live_migration", "vm1", target_host="dst")
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("status", c.run(op_id)))
    t.start()
    poll(lambda: progress_of(c, op_id), MIGRATE_S, "a progress row")
    with c.db.session() as s:
        live_migration.request(s, "vm1", "abort")
    t.join(MIGRATE_S)
    assert out["status"].state == operations.REVERTED
    assert "aborted on request" in out["status"].error
    assert c.rt.driver_for("dst").inventory().empty
    tick = con.last_tick()
    con.wait_ticks_beyond(tick)
    assert con.boots() == 1


def test_conductor_killed_mid_migration_resumes_by_waiting_for_the_job(pair):
    c, uuid, con, conf_file = pair
    dom = domain(c, "src", uuid)
    dom.migrateSetMaxSpeed(SLOW_MIB_S, 0)
    tick = con.wait_ticks_beyond(2)
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conductor.cli",
            "--config-file",
            str(conf_file),
            "live-migration",
            "vm1",
            "--target-host",
            "dst",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def op_id():
            with c.db.session() as s:
                ops = [o for o in operations.listing(s, limit=5) if o.kind == "live_migration"]
            return ops[0].id if ops and progress_of(c, ops[0].id) else None

        migration = poll(op_id, MIGRATE_S, "the migration's first progress row")
    finally:
        cli.send_signal(signal.SIGKILL)
        out, err = cli.communicate(timeout=30)
    assert cli.returncode == -signal.SIGKILL, err
    assert "PROGRESS" in out
    # The job belongs to the source daemon: it goes on without the conductor.
    assert dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_UNBOUNDED
    dom.migrateSetMaxSpeed(8192, 0)  # the slow link recovers
    resumed = subprocess.run(
        [sys.executable, "-m", "conductor.cli", "--config-file", str(conf_file), "resume"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=MIGRATE_S,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{migration} live_migration SUCCEEDED" in resumed.stdout
    assert_kept_running_on_dst(c, uuid, tick)


def test_a_guest_migrated_there_and_back_keeps_counting(pair):
    c, uuid, con, _ = pair
    tick = con.wait_ticks_beyond(2)
    migrate(c, "dst")
    assert_kept_running_on_dst(c, uuid, tick)
    tick = Console(c.rt.driver_for("dst"), uuid).last_tick()
    migrate(c, "src")  # the second daemon is the source now
    assert_kept_running_on(c, uuid, "src", tick)  # src's console file went with the first move
    assert domain(c, "src", uuid).isPersistent()
    with c.db.session() as s:
        assert instances.get(s, uuid).host == "src"


def test_revert_of_a_completed_migration_migrates_the_guest_back(pair):
    """The migration completed but the switch-over failed: the guest runs on the destination
    while the record names the source, so the revert migrates it back."""
    c, uuid, con, _ = pair
    tick = con.wait_ticks_beyond(2)
    c.rt.faults.arm("switch_over:execute:fail:before")
    op_id = c.submit("live_migration", "vm1", target_host="dst")
    status = c.run(op_id)
    assert status.state == operations.REVERTED, status.error
    assert progress_of(c, op_id)[-1] == "100%"  # it had moved to dst
    # src's console file stayed (nothing cleaned the source up): the same one boot, counting on.
    assert_kept_running_on(c, uuid, "src", tick, boots=1)
    with c.db.session() as s:
        assert instances.get(s, uuid).host == "src"


CHURN_MIB = 64  # rewritten without pause by the guest: far more per second than the link
CHURN_LINK_MIB_S = 32  # moves the rest of the guest in seconds, never the churn's dirt


def test_a_churning_guest_never_converges_and_post_copy_completes_it_across_a_crash(make_pair):
    """Pre-copy of a guest that dirties memory faster than the link goes round and round;
    force-complete starts post-copy (the source says so with its suspended-for-post-copy
    event; the switch-over was recorded first), then the CLI process is SIGKILLed: the job
    goes on in the source daemon and `computeflow resume` waits for it and finishes
    forward; one guest, on dst, still counting. The downtime is printed (bench/README.md
    has it side by side with the downtime route)."""
    c, uuid, con, conf_file = make_pair(f"computeflow.churn={CHURN_MIB}", "live_migration_permit_post_copy = true\n")
    poll(
        lambda: "computeflow-guest: churning" in con.text(),
        MIGRATE_S,
        "the guest to churn (a test guest built before its churn mode? run build_guest.sh)",
    )
    tick = con.last_tick()
    dom = domain(c, "src", uuid)
    dom.migrateSetMaxSpeed(CHURN_LINK_MIB_S, 0)
    # Post-copy's own link is slow: the kill lands while it runs.
    dom.migrateSetMaxSpeed(SLOW_MIB_S, libvirt.VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY)
    seen: list[tuple[int, int]] = []  # the source domain's lifecycle events
    completed: list[dict] = []  # the source's statistics of the finished job (downtime)
    conn = c.rt.driver_for("src")._host.get_connection()
    callbacks = [
        conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda _c, _d, ev, detail, _o: seen.append((ev, detail)), None
        ),
        conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, lambda _c, _d, stats, _o: completed.append(stats), None
        ),
    ]
    post_copy = (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY)
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conductor.cli",
            "--config-file",
            str(conf_file),
            "live-migration",
            "vm1",
            "--target-host",
            "dst",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def iteration() -> int:
            try:
                return dom.jobStats().get("memory_iteration", 0)
            except libvirt.libvirtError:
                return 0

        # Bound: the passes after the first still leave more dirty memory than the allowed
        # downtime can send, so libvirt keeps iterating instead of switching over.
        poll(lambda: iteration() >= 3, MIGRATE_S, "pre-copy pass 3")
        assert cli.poll() is None and c.rt.driver_for("src").inventory().guests == (uuid,)
        with c.db.session() as s:
            live_migration.request(s, "vm1", "force_complete")
        poll(lambda: post_copy in seen, MIGRATE_S, "the source to enter post-copy")
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.communicate(timeout=30)
    assert cli.returncode == -signal.SIGKILL
    with c.db.session() as s:  # the point of no return was recorded before post-copy
        assert instances.get(s, uuid).host == "dst"
    assert dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_UNBOUNDED  # post-copy still running
    dom.migrateSetMaxSpeed(8192, libvirt.VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY)
    resumed = subprocess.run(
        [sys.executable, "-m", "conductor.cli", "--config-file", str(conf_file), "resume"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=MIGRATE_S,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "live_migration SUCCEEDED" in resumed.stdout, resumed.stdout
    assert_kept_running_on_dst(c, uuid, tick)
    stats = poll(lambda: completed, 30, "the source's job-completed event")[0]
    for callback in callbacks:
        conn.domainEventDeregisterAny(callback)
    print(
        f"post-copy force-complete: downtime {stats.get('downtime')} ms after "
        f"{stats.get('memory_iteration')} passes, {stats.get('memory_postcopy_requests')} "
        f"pages requested by the destination, migration {stats.get('time_elapsed')} ms"
    )
