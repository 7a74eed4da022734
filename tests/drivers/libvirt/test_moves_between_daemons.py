"""Cold moves between the two libvirt daemons, with a real guest.

Host `src` is served by qemu:///system, host `dst` by the second daemon
(scripts/libvirt/start_second_daemon.sh), both with one instances_path as two
machines sharing it would. The guest's console is the proof that it runs
where the database says, after each move.

- cold migration (the `migrate` operation, then `confirm_resize`) from one
  daemon to the other, and a resize (to m1.small, two disks more) back: the
  guest boots on the destination daemon with the disks it should have and
  prints ticks there; nothing is left on the other daemon;
- evacuate of a host whose daemon is stopped (and whose guest's QEMU is
  killed: a host that died runs nothing): the guest is rebuilt and boots on
  the other daemon; once the daemon is back, the stale copy on the dead host
  (its domain, disks, port) is reported and cleaned by `hosts set-up`, and a
  reconcile dry run then finds nothing.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from conductor import moves, reconcile
from drivers.base import PowerState
from persistence import claims, instances, operations
from tests.conftest import run_cli
from tests.drivers.libvirt.conftest import poll
from tests.drivers.libvirt.daemons import SYSTEM, qemu_pid
from tests.drivers.libvirt.test_daemon_faults import daemons_back  # noqa: F401 - fixture
from tests.drivers.libvirt.test_live_migration import (  # noqa: F401 - fixtures
    make_pair,
    pair,
    second_daemon,
    system_shared,
)
from tests.drivers.libvirt.test_qemu_guests import Console

pytestmark = pytest.mark.integration


def _cold_move(c, target: str, **params) -> float:
    """migrate (or, given a flavor, resize) + confirm_resize of vm1 to `target`; the
    seconds the move took."""
    started = time.monotonic()
    status = c.run(c.submit("resize" if params else "migrate", "vm1", target_host=target, **params))
    took = time.monotonic() - started
    assert status.state == operations.SUCCEEDED, status.error
    status = c.run(c.submit("confirm_resize", "vm1"))
    assert status.state == operations.SUCCEEDED, status.error
    return took


def _runs_only_on(c, uuid: str, host: str) -> Console:
    other = "dst" if host == "src" else "src"
    here = c.rt.driver_for(host)
    with c.db.session() as s:
        inst = instances.get(s, uuid)
        assert (inst.host, inst.vm_state) == (host, "active")
        assert {(cl.host, cl.instance_uuid) for cl in claims.all_claims(s)} == {(host, uuid)}
    assert here.inventory().guests == (uuid,)
    assert here.get_info(uuid).state is PowerState.RUNNING
    assert c.rt.driver_for(other).inventory().empty, c.rt.driver_for(other).inventory()
    con = Console(here, uuid)
    con.wait_ticks_beyond(1, boots=1)  # a fresh console there: this boot, counting
    return con


def test_cold_migration_to_the_other_daemon_and_resize_back(pair):
    """migrate to the second daemon, then resize back to qemu:///system as m1.small (an
    ephemeral and a swap disk more): the guest boots on each side with what it has."""
    c, uuid, _, _ = pair
    there = _cold_move(c, "dst")
    con = _runs_only_on(c, uuid, "dst")
    assert re.search(r"^computeflow-guest: ready disks=vda net=", con.text(), re.M), con.text()
    back = _cold_move(c, "src", flavor="m1.small")
    con = _runs_only_on(c, uuid, "src")
    assert re.search(r"^computeflow-guest: ready disks=vda vdb vdc net=", con.text(), re.M), con.text()
    with c.db.session() as s:
        assert instances.get(s, uuid).flavor == "m1.small"
    found = reconcile.audit(c)
    assert found.findings == [], [f.line() for f in found.findings]
    print(
        f"cold migration src -> dst {there:.1f} s, resize dst -> src {back:.1f} s (the "
        "operation, to the guest started on the destination; confirm not counted)"
    )


def test_evacuate_a_host_whose_daemon_is_stopped(pair, daemons_back):
    c, uuid, con, conf_file = pair
    src = c.rt.driver_for("src")
    con.wait_ticks_beyond(1)
    # The host dies: its daemon stops and nothing runs there any more.
    guest_pid = qemu_pid(SYSTEM, uuid)
    SYSTEM.stop()
    os.kill(guest_pid, signal.SIGKILL)
    poll(lambda: not os.path.exists(f"/proc/{guest_pid}"), 30, "the guest's QEMU to die")
    moves.set_host_down(c, "src")
    started = time.monotonic()
    status = c.run(c.submit("evacuate", "vm1", target_host="dst"))
    took = time.monotonic() - started
    assert status.state == operations.SUCCEEDED, status.error
    with c.db.session() as s:
        assert instances.get(s, uuid).host == "dst"
    dst = c.rt.driver_for("dst")
    assert dst.get_info(uuid).state is PowerState.RUNNING
    Console(dst, uuid).wait_ticks_beyond(1, boots=1)  # rebuilt from its image: a fresh boot

    # The daemon comes back: the dead host still holds its copy, stopped.
    SYSTEM.start()
    assert src.inventory().guests == (uuid,)
    assert src.get_info(uuid).state in (PowerState.CRASHED, PowerState.SHUTDOWN)
    found = reconcile.audit(c)
    assert "src" in found.skipped_hosts and "set-up" in found.skipped_hosts["src"]
    assert found.findings == [], [f.line() for f in found.findings]  # dst is as recorded
    dry_run = run_cli(conf_file, "reconcile")  # what an operator sees, from the CLI
    assert dry_run.returncode == 0, dry_run.stderr
    assert "1 live instance(s): 0 finding(s), 0 to fix" in dry_run.stdout, dry_run.stdout
    assert "skipped src: marked down" in dry_run.stdout, dry_run.stdout
    assert moves.set_host_up(c, "src") == [uuid]  # the stale copy is removed
    assert src.inventory().empty, src.inventory()
    _runs_only_on(c, uuid, "dst")
    found = reconcile.audit(c)
    assert found.findings == [] and not found.skipped_hosts, [f.line() for f in found.findings]
    inventory = run_cli(conf_file, "inventory")
    assert inventory.returncode == 0, inventory.stderr
    assert "src: 0 guests, 0 disks, 0 ports" in inventory.stdout, inventory.stdout
    assert "dst: 1 guests, 2 disks, 1 ports" in inventory.stdout, inventory.stdout
    print(f"evacuate to the second daemon: {took:.1f} s")
