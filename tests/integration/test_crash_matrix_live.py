"""Crash matrix for live migration on the fake driver, on SQLite and PostgreSQL.

A real `computeflow live-migration` process is SIGKILLed just before each
step, and just after the side effect of the steps where it matters most
(the migration itself, the switch-over, the source cleanup); a new
`computeflow resume` process must finish the migration: the guest on h2, h1
empty, only h2's claim left. Past the switch-over that is "finishing
forward": the post-migration phase never reverts. Kills inside reverts
(the migration failed) must converge back to exactly the prior state.
"""

from __future__ import annotations


import pytest

from conductor import config
from conductor.api import Conductor, SpawnRequest
from persistence import claims, instances, operations
from tests.conftest import write_conf
from tests.integration.crash import kill_then_resume
from tests.flows import catalogue
from tests.flows.test_live_migration import STEPS

pytestmark = pytest.mark.integration

KILLS = [(s, "before") for s in STEPS] + [
    ("live_migration", "after"),
    ("switch_over", "after"),
    ("post_live_migration_at_source", "after"),
]
# (the failure that starts the revert, the revert step killed)
REVERTS = [
    ("live_migration:execute:fail:before", "pre_live_migration"),
    ("live_migration:execute:fail:before", "claim_destination"),
    ("live_migration:execute:fail:after", "live_migration"),
    ("switch_over:execute:fail:before", "pre_live_migration"),
]


def _prepare(tmp_path, url):
    calm = write_conf(tmp_path / "calm.conf", tmp_path / "state", url)
    with Conductor(config.load([str(calm)])) as c:
        c.add_host("h1", vcpus=8, ram_mb=16384, disk_gb=200)
        c.add_host("h2", vcpus=8, ram_mb=16384, disk_gb=200)
        op = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.small", image="cirros", host="h1"))
        assert c.run(op).state == operations.SUCCEEDED
        with c.rt.driver_for("h2").state.change():
            pass
        with c.db.session() as s:
            uuid = instances.find_live(s, "vm1").uuid
        before = catalogue.world(c, uuid)
    return calm, uuid, before


def _crash_and_resume(tmp_path, calm, url, faults: list[str]):
    resumed = kill_then_resume(
        tmp_path, calm, url, ["live-migration", "vm1", "--target-host", "h2"], faults, check_plan=True
    )
    c = Conductor(config.load([str(calm)]))
    with c.db.session() as s:
        (op,) = operations.listing(s, limit=1)
    return c, op, resumed


@pytest.mark.parametrize("step,when", KILLS)
def test_kill_at_each_step_then_resume_finishes_the_migration(tmp_path, crash_db_url, step, when):
    calm, uuid, _ = _prepare(tmp_path, crash_db_url)
    c, op, resumed = _crash_and_resume(tmp_path, calm, crash_db_url, [f"{step}:execute:kill:{when}"])
    with c:
        assert (op.kind, op.state) == ("live_migration", operations.SUCCEEDED), op.error
        with c.db.session() as s:
            inst = instances.get(s, uuid)
            held = {(cl.host, cl.instance_uuid) for cl in claims.all_claims(s)}
        assert (inst.host, inst.vm_state, inst.power_state, inst.held_by, inst.task_state) == (
            "h2",
            "active",
            "running",
            None,
            None,
        )
        assert held == {("h2", uuid)}
        assert c.rt.driver_for("h2").inventory().guests == (uuid,)
        assert c.rt.driver_for("h1").inventory().empty
        if STEPS.index(step) > STEPS.index("switch_over") or (step, when) == ("switch_over", "after"):
            assert "REVERT" not in resumed.stdout  # forward-only: nothing was undone


@pytest.mark.parametrize("failure,step", REVERTS)
def test_kill_during_revert_then_resume_restores(tmp_path, crash_db_url, failure, step):
    calm, uuid, before = _prepare(tmp_path, crash_db_url)
    c, op, _ = _crash_and_resume(tmp_path, calm, crash_db_url, [failure, f"{step}:revert:kill:before"])
    with c:
        assert op.state == operations.REVERTED, op.error
        assert catalogue.world(c, uuid) == before
