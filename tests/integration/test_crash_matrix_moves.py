"""Crash matrix for resize, migrate, confirm, revert and evacuate: a real CLI
process is SIGKILLed just before each step during execute, and a new
`computeflow resume` process must finish the operation. Resize, migrate and
evacuate also get one kill inside a revert (their last step failed), after
which the resume must converge back to exactly the prior state. Confirm and
revert are forward-only: after a crash they finish forward, and their flow
log shows no revert at all. On SQLite and PostgreSQL. `when=before` only:
the after-side-effect boundaries are covered without a crash in tests/flows.
"""

from __future__ import annotations


import pytest

from conductor import config, moves
from conductor.api import Conductor
from persistence import claims, flowlog, hosts, instances, operations
from tests.conftest import write_conf
from tests.integration.crash import alternating, fault_conf, kill_then_resume
from tests.flows import catalogue
from tests.flows.catalogue import Case
from tests.flows.test_evacuate import steps as evacuate_steps
from tests.flows.test_resize import RUNNING_STEPS

pytestmark = pytest.mark.integration

CASES = {
    "resize": (Case("resize", {"flavor": "m1.medium"}, end=("resized", "running")), RUNNING_STEPS),
    "migrate": (Case("migrate", {"target_host": "h2"}, end=("resized", "running")), RUNNING_STEPS),
    "confirm": (
        Case("confirm_resize", setup=(("migrate", {}),), end=("active", "running")),
        ["take_hold", "confirm_migration", "release_source_claims", "mark_done"],
    ),
    "revert": (
        Case("revert_resize", setup=(("migrate", {}),), end=("active", "running")),
        [
            "take_hold",
            "destroy_on_destination",
            "unplug_vifs",
            "finish_revert_migration",
            "release_destination_claim",
            "mark_done",
        ],
    ),
    "evacuate": (Case("evacuate", end=("active", "running")), evacuate_steps(False)),
    "evacuate-shared": (Case("evacuate", end=("active", "running")), evacuate_steps(True)),
}
FORWARD_ONLY = {"confirm", "revert"}
_SHARED_STEPS = {"take_hold", "mark_done"}  # killed in the first case that has them only
EXECUTE = []
for label, (_case, steps) in CASES.items():
    seen = {s for _, s in EXECUTE}
    EXECUTE += [(label, s) for s in steps if not (s in seen and (s in _SHARED_STEPS or label == "evacuate-shared"))]
REVERT = [(label, "claim_destination") for label in ("resize", "migrate", "evacuate")]


def _shared(label: str) -> str:
    return "shared_storage = h1+h2\n" if label == "evacuate-shared" else ""


def _prepare(tmp_path, url, label):
    case = CASES[label][0]
    calm = write_conf(tmp_path / "calm.conf", tmp_path / "state", url, fault_conf([], _shared(label)))
    with Conductor(config.load([str(calm)])) as c:
        c.add_host("h1", vcpus=8, ram_mb=16384, disk_gb=200)
        uuid = catalogue.prepare(c, Case(case.op))  # lands on h1: the only host yet
        c.add_host("h2", vcpus=8, ram_mb=16384, disk_gb=200)
        with c.rt.driver_for("h2").state.change():
            pass
        for op, params in case.setup:
            assert c.run(c.submit(op, "vm1", **params)).state == "SUCCEEDED"
        if case.op == "evacuate":
            moves.set_host_down(c, "h1")
        before = catalogue.world(c, uuid)
    return calm, uuid, before


def _crash_and_resume(tmp_path, calm, url, label, faults: list[str]):
    case = CASES[label][0]
    args = [case.op.replace("_", "-"), "vm1"]
    for name, value in case.params.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    kill_then_resume(tmp_path, calm, url, args, faults, fake_extra=_shared(label))
    c = Conductor(config.load([str(calm)]))
    with c.db.session() as s:
        op = next(o for o in operations.listing(s, limit=5) if o.kind == case.op)
        log = flowlog.entries(s, op.id)
    return c, op, log


def assert_usage_matches_claims(c: Conductor) -> None:
    with c.db.session() as s:
        rows = claims.all_claims(s)
        for h in hosts.list_hosts(s):
            mine = [r for r in rows if r.host == h.name]
            assert (h.used_vcpus, h.used_ram_mb, h.used_disk_gb) == (
                sum(r.vcpus for r in mine),
                sum(r.ram_mb for r in mine),
                sum(r.disk_gb for r in mine),
            )


@pytest.mark.parametrize("label,step,crash_db_url", alternating(EXECUTE), indirect=["crash_db_url"])
def test_kill_before_each_step_then_resume_finishes(tmp_path, crash_db_url, label, step):
    case = CASES[label][0]
    calm, uuid, _ = _prepare(tmp_path, crash_db_url, label)
    c, op, log = _crash_and_resume(tmp_path, calm, crash_db_url, label, [f"{step}:execute:kill:before"])
    with c:
        assert op.state == operations.SUCCEEDED, op.error
        with c.db.session() as s:
            inst = instances.get(s, uuid)
            on = sorted({cl.host for cl in claims.claims_for_instance(s, uuid)})
        assert inst.held_by is None and inst.task_state is None
        assert (inst.vm_state, inst.power_state) == case.end
        assert_usage_matches_claims(c)
        inv = {h: c.rt.driver_for(h).inventory() for h in ("h1", "h2")}
        if label in ("resize", "migrate"):
            assert (inst.host, on) == ("h2", ["h1", "h2"])
            assert inv["h2"].guests == (uuid,) and inv["h1"].guests == (f"{uuid} (resize source)",)
        elif label == "confirm":
            assert (inst.host, on) == ("h2", ["h2"]) and inv["h1"].empty
        elif label == "revert":
            assert (inst.host, on) == ("h1", ["h1"]) and inv["h2"].empty
            assert inv["h1"].guests == (uuid,)
        else:
            assert (inst.host, on) == ("h2", ["h2"]) and inv["h2"].guests == (uuid,)
        if label in FORWARD_ONLY:  # forward after the crash, never a revert
            assert not [e for e in log if e.state.startswith("REVERT")], [(e.step, e.state) for e in log]


@pytest.mark.parametrize("label,step,crash_db_url", alternating(REVERT), indirect=["crash_db_url"])
def test_kill_during_revert_then_resume_restores(tmp_path, crash_db_url, label, step):
    calm, uuid, before = _prepare(tmp_path, crash_db_url, label)
    c, op, _ = _crash_and_resume(
        tmp_path, calm, crash_db_url, label, ["mark_done:execute:fail:after", f"{step}:revert:kill:before"]
    )
    with c:
        assert op.state == operations.REVERTED, op.error
        assert catalogue.world(c, uuid) == before
