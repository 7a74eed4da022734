"""Rescue, unrescue, snapshot and rebuild: each succeeds (on every database),
and a failure injected at each step, before or after its side effect, leaves
the instance record, claims, images, image store and every fake host exactly
as before (on SQLite: the code paths are the database-independent ones that
the spawn tests cover on all three)."""

from __future__ import annotations

import pytest

from flows.errors import InvalidRequest, InvalidState, NotFound
from persistence import hosts, operations
from tests.flows.catalogue import Case, instance, prepare, steps_of, world
from tests.flows.test_spawn import spawn

CASES = [
    Case("rescue", end=("rescued", "running")),
    Case("rescue", {"image": "debian-12"}, setup=(("power_off", {}),), end=("rescued", "running")),
    Case("unrescue", setup=(("rescue", {}),), end=("active", "running")),
    Case("snapshot", {"image_name": "snap1"}, end=("active", "running")),
    Case("rebuild", {"image": "debian-12"}, end=("active", "running")),
    Case(
        "rebuild",
        {"image": "debian-12", "preserve_ephemeral": True},
        setup=(("power_off", {}),),
        end=("active", "running"),
    ),
]
FAILURES = [(case, step, when) for case in CASES for step in steps_of(case) for when in ("before", "after")]
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _id(v):
    return v.id + ("-" + "/".join(s for s, _ in v.setup) if v.setup else "") if isinstance(v, Case) else None


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_operation_succeeds(conductor, case):
    uuid = prepare(conductor, case)
    status = conductor.run(conductor.submit(case.op, "vm1", **case.params))
    assert status.state == operations.SUCCEEDED, status.error
    inst = instance(conductor, uuid)
    assert (inst.vm_state, inst.power_state, inst.task_state, inst.held_by) == (*case.end, None, None)
    guest = conductor.rt.driver_for("h1").state.read()["guests"][uuid]
    assert guest["power_state"] == case.end[1]
    assert ("rescue" in guest) == (case.op == "rescue")


@sqlite_only
@pytest.mark.parametrize("case,step,when", FAILURES, ids=lambda v: _id(v) or v)
def test_failure_at_each_step_restores_everything(conductor, case, step, when):
    uuid = prepare(conductor, case)
    before = world(conductor, uuid)
    conductor.rt.faults.arm(f"{step}:execute:fail:{when}")
    status = conductor.run(conductor.submit(case.op, "vm1", **case.params))
    assert status.state == operations.REVERTED, status.error
    assert f"injected failure at step {step}" in status.error
    assert world(conductor, uuid) == before


@sqlite_only
def test_unrescue_after_rescue_with_an_image_restores_the_disk(conductor):
    uuid = prepare(conductor, Case("rescue"))
    before = world(conductor, uuid)["fake"]
    assert conductor.run(conductor.submit("rescue", "vm1", image="debian-12")).state == "SUCCEEDED"
    assert instance(conductor, uuid).system_metadata["rescue_image"]["name"] == "debian-12"
    assert conductor.run(conductor.submit("unrescue", "vm1")).state == "SUCCEEDED"
    assert world(conductor, uuid)["fake"] == before
    assert "rescue_image" not in instance(conductor, uuid).system_metadata


@sqlite_only
def test_snapshot_is_a_usable_image(conductor):
    uuid = prepare(conductor, Case("snapshot"))
    assert conductor.run(conductor.submit("snapshot", "vm1", image_name="snap1")).state == "SUCCEEDED"
    with conductor.db.session() as s:
        img = hosts.get_image(s, "snap1")
    assert img.path.startswith(conductor.conf.image_store_path) and img.size_mb == 10 * 1024
    with open(img.path) as f:
        assert uuid in f.read()
    # usable by a spawn, and refused twice under one name
    op_id = conductor.submit_spawn(
        __import__("conductor.api").api.SpawnRequest(name="vm2", flavor="m1.small", image="snap1")
    )
    assert conductor.run(op_id).state == "SUCCEEDED"
    with pytest.raises(InvalidRequest, match="'snap1' already exists"):
        conductor.submit("snapshot", "vm1", image_name="snap1")


@sqlite_only
def test_rebuild_changes_the_image_and_honours_preserve_ephemeral(conductor):
    uuid = prepare(conductor, Case("rebuild"))
    drv = conductor.rt.driver_for("h1")
    assert conductor.run(conductor.submit("rebuild", "vm1", image="debian-12")).state == "SUCCEEDED"
    disks = {d["kind"]: d for d in drv.state.read()["disks"].values()}
    assert disks["root"]["image"] == "debian-12" and disks["root"]["backing"].endswith("debian-12")
    assert disks["ephemeral"]["image_of_data"] == "debian-12"  # wiped
    assert instance(conductor, uuid).image == "debian-12"
    assert (
        conductor.run(conductor.submit("rebuild", "vm1", image="cirros", preserve_ephemeral=True)).state == "SUCCEEDED"
    )
    disks = {d["kind"]: d for d in drv.state.read()["disks"].values()}
    assert "image_of_data" not in disks["ephemeral"]


@sqlite_only
@pytest.mark.parametrize(
    "op,params,error,match",
    [
        ("unrescue", {}, InvalidState, "cannot unrescue instance vm1: it is active"),
        ("rescue", {"image": "nope"}, NotFound, "unknown image 'nope'"),
        ("rebuild", {}, InvalidRequest, "rebuild needs image"),
        ("rebuild", {"image": "nope"}, NotFound, "unknown image 'nope'"),
        ("snapshot", {"image_name": "cirros"}, InvalidRequest, "'cirros' already exists"),
        ("snapshot", {"image_name": "bad name"}, InvalidRequest, "invalid image name"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(conductor, op, params, error, match):
    spawn(conductor)
    uuid = instance_uuid(conductor)
    before = world(conductor, uuid)
    with pytest.raises(error, match=match):
        conductor.submit(op, "vm1", **params)
    assert world(conductor, uuid) == before


def instance_uuid(c) -> str:
    return c.rt.driver_for("h1").list_instance_uuids()[0]
