"""Force-complete of a live migration that does not converge, on real QEMU: post-copy
against the downtime route, side by side.

The test guest runs in its churn mode (scripts/libvirt/guest-init: `computeflow.churn=MIB`
rewrites MIB MiB of RAM without pause) and the migration link is capped below that rate,
so pre-copy goes round and round. After pre-copy pass 3 the bench asks for
force-complete through the flow (`live_migration.request`), once with
`[libvirt] live_migration_permit_post_copy = true` (migrateStartPostCopy) and once
without (the allowed downtime raised to 30 s), and prints per route the downtime and
total time libvirt reports in the source's job-completed event, the pre-copy passes,
and the seconds from the request to the flow's end.

Needs what tests/drivers/libvirt/test_live_migration.py needs (root, both daemons of
scripts/libvirt/start_daemon.sh and start_second_daemon.sh, the test guest).

Usage: .venv/bin/python bench/force_complete_bench.py [--rounds 1] [--churn-mib 64]
                                                      [--link-mib-s 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import libvirt

from conductor import config
from conductor.api import Conductor, SpawnRequest
from flows import live_migration
from persistence import operations, schema
from persistence.session import Database

GUEST_DIR = Path(os.environ.get("COMPUTEFLOW_TEST_GUEST_DIR", "/var/tmp/computeflow-guest"))
SRC_URI = "qemu+unix:///system?socket=/var/tmp/computeflow-libvirt1/sock/libvirt-sock"
DST_URI = "qemu+unix:///system?socket=/var/tmp/computeflow-libvirt2/sock/libvirt-sock"
TIMEOUT_S = 180


def wait_for(predicate, what: str, timeout: float = TIMEOUT_S):
    deadline, pause = time.monotonic() + timeout, threading.Event()
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.1)
    return value


def one_round(post_copy: bool, churn_mib: int, link_mib_s: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="computeflow-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    url = f"sqlite:///{work}/computeflow.sqlite"
    db = Database(url)
    schema.upgrade(db)
    db.dispose()
    conf = work / "computeflow.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_path = {work}/state\nboot_timeout = 120\n"
        f"[database]\nconnection = {url}\n[libvirt]\ninstances_path = {work}/instances\n"
        f"guest_kernel = {GUEST_DIR}/vmlinuz\nguest_initrd = {GUEST_DIR}/initrd.gz\n"
        f"guest_cmdline = console=ttyS0 quiet computeflow.churn={churn_mib}\n"
        f"live_migration_permit_post_copy = {str(post_copy).lower()}\n"
    )
    c = Conductor(config.load([str(conf)]))
    try:
        c.add_host("src", vcpus=2, ram_mb=4096, disk_gb=20, driver="libvirt", uri=SRC_URI)
        c.add_host("dst", vcpus=2, ram_mb=4096, disk_gb=20, driver="libvirt", uri=DST_URI)
        op_id = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.tiny", image="cirros", host="src"))
        assert c.run(op_id).state == operations.SUCCEEDED
        src = c.rt.driver_for("src")
        with c.db.session() as s:
            uuid = operations.get(s, op_id).instance_uuid
        wait_for(lambda: "churning" in src.get_console_output(uuid), "the guest to churn")
        conn = src._host.get_connection()
        dom = conn.lookupByUUIDString(uuid)
        dom.migrateSetMaxSpeed(link_mib_s, 0)
        completed: list[dict] = []
        callback = conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, lambda _c, _d, stats, _o: completed.append(stats), None
        )
        mig = c.submit("live_migration", "vm1", target_host="dst")
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("status", c.run(mig)))
        t.start()

        def iteration() -> int:
            try:
                return dom.jobStats().get("memory_iteration", 0)
            except libvirt.libvirtError:
                return 0

        wait_for(lambda: iteration() >= 3, "pre-copy pass 3")
        asked = time.monotonic()
        with c.db.session() as s:
            live_migration.request(s, "vm1", "force_complete")
        t.join(TIMEOUT_S)
        done = time.monotonic() - asked
        assert out["status"].state == operations.SUCCEEDED, out["status"].error
        stats = wait_for(lambda: completed, "the job-completed event", 30)[0]
        conn.domainEventDeregisterAny(callback)
        assert c.run(c.submit("destroy", "vm1")).state == operations.SUCCEEDED
        return {
            "downtime_ms": stats.get("downtime"),
            "total_ms": stats.get("time_elapsed"),
            "passes": stats.get("memory_iteration"),
            "force_to_done_s": done,
        }
    finally:
        for drv in list(c.rt._drivers.values()):
            for leftover in drv.list_instance_uuids():
                drv.power_off(leftover)
                drv.undefine_guest(leftover)
            drv.cleanup_host()
        c.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--churn-mib", type=int, default=64)
    ap.add_argument("--link-mib-s", type=int, default=32)
    args = ap.parse_args()
    print(f"churn {args.churn_mib} MiB, link {args.link_mib_s} MiB/s, force-complete after pre-copy pass 3")
    print(f"{'route':<10} {'downtime ms':>12} {'migration s':>12} {'passes':>7} {'force->done s':>14}")
    for _ in range(args.rounds):  # interleaved: both routes see the same machine state
        for post_copy in (True, False):
            r = one_round(post_copy, args.churn_mib, args.link_mib_s)
            print(
                f"{'post-copy' if post_copy else 'downtime':<10} {r['downtime_ms']:>12} "
                f"{r['total_ms'] / 1000:>12.1f} {r['passes']:>7} {r['force_to_done_s']:>14.1f}"
            )


if __name__ == "__main__":
    main()
