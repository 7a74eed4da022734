"""Live migration of a real QEMU guest between two libvirt daemons on this
machine: qemu:///system (host `src`) and the second daemon of
scripts/libvirt/start_second_daemon.sh (host `dst`), end to end through the
live_migration flow and the conductor.

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
from pathlib import Path

import libvirt
import pytest

from conductor.api import SpawnRequest
from flows import live_migration
from persistence import claims, flowlog, operations, progress
from tests.conftest import REPO
from tests.drivers.libvirt.conftest import SCRIPTS, missing, poll
from tests.drivers.libvirt.test_qemu_guests import BOOT_S, BOOTED, Console

pytestmark = pytest.mark.integration

SECOND_DIR = os.environ.get("COMPUTEFLOW_TEST_SECOND_DAEMON_DIR", "/var/tmp/computeflow-libvirt2")
SECOND_URI = f"qemu+unix:///system?socket={SECOND_DIR}/sock/libvirt-sock"
MIGRATE_S = 120
SLOW_MIB_S = 1  # a migration capped at this speed takes minutes: time to act on it


@pytest.fixture(scope="session")
def second_daemon(qemu_system) -> str:
    probe = subprocess.run(["virsh", "-c", SECOND_URI, "version"], capture_output=True,
                           text=True, timeout=30)
    if probe.returncode != 0:
        missing(f"second libvirtd not answering at {SECOND_URI}: {probe.stderr.strip()}",
                f"{SCRIPTS}/start_second_daemon.sh as root")
    return SECOND_URI


@pytest.fixture
def pair(make_conductor, qemu_system, second_daemon, test_guest, shared_tmp):
    """A conductor with hosts src (qemu:///system) and dst (the second daemon), vm1 on src
    printing ticks; returns (conductor, instance uuid, console on src, config file)."""
    kernel, initrd = test_guest
    c = make_conductor(
        f"[libvirt]\ninstances_path = {shared_tmp}/instances\nguest_kernel = {kernel}\n"
        f"guest_initrd = {initrd}\nguest_cmdline = console=ttyS0 quiet\n",
        state_path=shared_tmp / "state")
    c.conf.set_override("boot_timeout", BOOT_S)
    c.add_host("src", vcpus=2, ram_mb=4096, disk_gb=20, driver="libvirt", uri=qemu_system)
    c.add_host("dst", vcpus=2, ram_mb=4096, disk_gb=20, driver="libvirt", uri=second_daemon)
    op_id = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros", host="src"))
    status = c.run(op_id)
    assert status.state == operations.SUCCEEDED, status.error
    with c.db.session() as s:
        uuid = operations.get(s, op_id).instance_uuid
    con = Console(c.rt.driver_for("src"), uuid)
    con.wait_ticks_beyond(1, boots=1)
    conf_file = max(Path(c.conf.config_file[0]).parent.glob("computeflow-*.conf"),
                    key=lambda p: p.stat().st_mtime)
    return c, uuid, con, conf_file


def progress_of(c, op_id: str) -> list[str]:
    with c.db.session() as s:
        return [r.result for r in flowlog.entries(s, op_id) if r.state == progress.PROGRESS]


def domain(c, host: str, uuid: str) -> libvirt.virDomain:
    return c.rt.driver_for(host)._host.get_connection().lookupByUUIDString(uuid)


def assert_kept_running_on_dst(c, uuid: str, tick_before: int) -> None:
    dst, src = c.rt.driver_for("dst"), c.rt.driver_for("src")
    assert dst.inventory().guests == (uuid,)
    assert src.inventory().guests == () and src.inventory().disks == ()
    con = Console(dst, uuid)
    try:
        poll(lambda: len(con.ticks()) >= 2, MIGRATE_S, "ticks on the destination's console")
    except pytest.fail.Exception as e:  # say what the guest was doing
        dom = domain(c, "dst", uuid)
        raise AssertionError(f"{e}; destination domain state {dom.state()}, console tail "
                             f"{con.text()[-400:]!r}") from None
    # The same boot goes on counting on the destination: no boot line, ticks past the old ones.
    assert BOOTED not in con.text()
    assert con.ticks()[0] > 1 and con.ticks()[-1] > tick_before
    with c.db.session() as s:
        assert {(cl.host, cl.instance_uuid) for cl in claims.all_claims(s)} == {("dst", uuid)}


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
    xml = (f"<domain type='qemu'><name>cf-{uuid}</name><memory unit='MiB'>64</memory>"
           "<os><type arch='x86_64'>hvm</type></os></domain>")
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
    cli = subprocess.Popen([sys.executable, "-m", "conductor.cli", "--config-file", str(conf_file),
                            "live-migration", "vm1", "--target-host", "dst"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    resumed = subprocess.run([sys.executable, "-m", "conductor.cli", "--config-file",
                              str(conf_file), "resume"], cwd=REPO, capture_output=True,
                             text=True, timeout=MIGRATE_S)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{migration} live_migration SUCCEEDED" in resumed.stdout
    assert_kept_running_on_dst(c, uuid, tick)
