"""Crash matrix for the catalogue operations (rescue, snapshot, rebuild, guest
agent, devices...): a real CLI process is SIGKILLed just before each step
during execute, and a new `computeflow resume` process must finish the
operation. For each operation one more case kills inside a revert (the last
step failed) and the resume must converge back to exactly the prior state.
On SQLite and PostgreSQL. `when=before` only, to keep the suite short: the
after-side-effect boundaries are covered without a crash in tests/flows."""

from __future__ import annotations


import pytest

from conductor import config
from conductor.api import Conductor
from flows import catalog
from persistence import instances, operations
from tests.conftest import write_conf
from tests.integration.crash import alternating, kill_then_resume
from tests.flows import catalogue
from tests.flows.test_devices_and_agent import CASES as DEVICE_CASES, resolved
from tests.flows.test_images_and_rescue import CASES as IMAGE_CASES

pytestmark = pytest.mark.integration

# One case per operation kind (its first in the flow tests).
CASES = list({c.op: c for c in reversed(IMAGE_CASES + DEVICE_CASES)}.values())[::-1]
# take_hold and mark_done are the same steps in every one of these flows: they
# are killed in the first case only, the operation's own steps in every case.
_SHARED = {"take_hold", "mark_done"}
EXECUTE = [(c, step) for i, c in enumerate(CASES) for step in catalogue.steps_of(c) if i == 0 or step not in _SHARED]
# One revert crash per operation kind: inside the revert of its first real step.
REVERT = [(c, catalogue.steps_of(c)[1]) for c in CASES]


def cli_args(case: catalogue.Case, tmp_path, params: dict) -> list[str]:
    kind = catalog.get(case.op)
    args = [kind.verb, "vm1"]
    secret = {p.name for p in kind.params if p.secret}
    for name, value in params.items():
        flag = "--" + name.replace("_", "-")
        if name in secret:
            f = tmp_path / f"{name}.secret"
            f.write_text(value)
            args += [flag + "-file", str(f)]
        elif value is True:
            args.append(flag)
        elif isinstance(value, list):
            for v in value:
                args += [flag, v]
        else:
            args += [flag, str(value)]
    return args


def _name(v) -> str:
    return v.id if isinstance(v, catalogue.Case) else str(v)


def _prepare(tmp_path, url, case):
    calm = write_conf(tmp_path / "calm.conf", tmp_path / "state", url)
    with Conductor(config.load([str(calm)])) as c:
        c.add_host("h1", vcpus=8, ram_mb=16384, disk_gb=200)
        uuid = catalogue.prepare(c, case)
        before = catalogue.world(c, uuid)
    return calm, uuid, before


def _crash_and_resume(tmp_path, calm, url, case, faults: list[str]):
    with Conductor(config.load([str(calm)])) as c:
        with c.db.session() as s:
            uuid = instances.find_live(s, "vm1").uuid
        params = resolved(c, uuid, case)
    kill_then_resume(tmp_path, calm, url, cli_args(case, tmp_path, params), faults)
    c = Conductor(config.load([str(calm)]))
    with c.db.session() as s:
        (op,) = operations.listing(s, limit=1)
    return c, op


@pytest.mark.parametrize("case,step,crash_db_url", alternating(EXECUTE, _name), indirect=["crash_db_url"])
def test_kill_before_each_step_then_resume_finishes(tmp_path, crash_db_url, case, step):
    calm, uuid, _ = _prepare(tmp_path, crash_db_url, case)
    c, op = _crash_and_resume(tmp_path, calm, crash_db_url, case, [f"{step}:execute:kill:before"])
    with c:
        assert op.state == operations.SUCCEEDED, op.error
        with c.db.session() as s:
            inst = instances.get(s, uuid)
        assert inst.held_by is None and inst.task_state is None
        if case.end:
            assert (inst.vm_state, inst.power_state) == case.end


@pytest.mark.parametrize("case,step,crash_db_url", alternating(REVERT, _name), indirect=["crash_db_url"])
def test_kill_during_revert_then_resume_restores(tmp_path, crash_db_url, case, step):
    calm, uuid, before = _prepare(tmp_path, crash_db_url, case)
    c, op = _crash_and_resume(
        tmp_path, calm, crash_db_url, case, ["mark_done:execute:fail:after", f"{step}:revert:kill:before"]
    )
    with c:
        assert op.state == operations.REVERTED, op.error
        after = catalogue.world(c, uuid, ignore=case.irreversible)
        assert after == _ignoring(before, case.irreversible)


def _ignoring(world: dict, keys: tuple[str, ...]) -> dict:
    for state in world["fake"].values():
        catalogue._without(state, keys)
    return world
