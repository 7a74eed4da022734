"""Spawn on every database: success, and a failure injected at each step
reverts everything (no hold, no claim, nothing on the fake hypervisor)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from conductor.api import Conductor, SpawnRequest
from flows.spawn import build
from persistence import instances, operations
from persistence.models import Claim, Host

FLAVOR = {"name": "m1.small", "vcpus": 1, "ram_mb": 2048, "root_gb": 10, "ephemeral_gb": 5, "swap_mb": 512}
SPAWN_STEPS = [
    "take_hold",
    "claim_resources",
    "ensure_base_image",
    "create_root_disk",
    "create_ephemeral_disk",
    "create_swap_disk",
    "plug_vif_0",
    "wait_vif_plugged",
    "define_guest",
    "power_on",
    "wait_running",
    "mark_active",
]


def spawn(c: Conductor, name: str = "vm1", **kw) -> tuple[str, str]:
    op_id = c.submit_spawn(SpawnRequest(name=name, flavor="m1.small", image="cirros", **kw))
    return op_id, c.run(op_id).state


def assert_fully_reverted(c: Conductor, op_id: str) -> None:
    with c.db.session() as s:
        op = operations.get(s, op_id)
        inst = instances.get(s, op.instance_uuid)
        host = s.get(Host, "h1")
        assert op.state == operations.REVERTED, op.error
        assert inst.held_by is None
        assert inst.vm_state == "error"
        assert s.scalar(sa.select(sa.func.count()).select_from(Claim)) == 0
        assert (host.used_vcpus, host.used_ram_mb, host.used_disk_gb) == (0, 0, 0)
    inv = c.rt.driver_for("h1").inventory()
    assert inv.empty, inv


def test_spawn_succeeds_and_releases_hold(conductor):
    op_id, state = spawn(conductor)
    assert state == operations.SUCCEEDED
    with conductor.db.session() as s:
        op = operations.get(s, op_id)
        inst = instances.get(s, op.instance_uuid)
        assert (inst.vm_state, inst.power_state, inst.task_state, inst.held_by, inst.host) == (
            "active",
            "running",
            None,
            None,
            "h1",
        )
        assert s.get(Host, "h1").used_vcpus == 1
    inv = conductor.rt.driver_for("h1").inventory()
    assert (len(inv.guests), len(inv.disks), len(inv.ports)) == (1, 3, 1)


def test_flow_has_the_documented_steps(conductor):
    op_id, _ = spawn(conductor)
    with conductor.db.session() as s:
        from persistence import flowlog

        steps = [st.step for st in flowlog.summarize(flowlog.entries(s, op_id))]
    assert sorted(steps) == sorted(SPAWN_STEPS)


@pytest.mark.parametrize("step", SPAWN_STEPS)
def test_failure_at_each_step_reverts_everything(conductor, step):
    conductor.rt.faults.arm(f"{step}:execute:fail")
    op_id, state = spawn(conductor)
    assert state == operations.REVERTED
    assert_fully_reverted(conductor, op_id)
    with conductor.db.session() as s:
        assert f"injected failure at step {step}" in operations.get(s, op_id).error


@pytest.mark.parametrize("step", SPAWN_STEPS)
def test_failure_after_side_effect_reverts_everything(conductor, step):
    conductor.rt.faults.arm(f"{step}:execute:fail:after")
    op_id, state = spawn(conductor)
    assert state == operations.REVERTED
    assert_fully_reverted(conductor, op_id)


def test_reverted_instance_can_be_destroyed_and_name_reused(conductor):
    conductor.rt.faults.arm("power_on:execute:fail")
    spawn(conductor)
    conductor.rt.faults.clear()
    assert conductor.run(conductor.submit_destroy("vm1")).state == operations.SUCCEEDED
    assert spawn(conductor)[1] == operations.SUCCEEDED


def test_vif_timeout_fatal_reverts(conductor):
    conductor.conf.set_override("deliver_vif_events", False, "fake")
    conductor.conf.set_override("vif_plugging_timeout", 1)
    op_id, state = spawn(conductor)
    assert state == operations.REVERTED
    with conductor.db.session() as s:
        assert "vif-plugged events" in operations.get(s, op_id).error
    assert_fully_reverted(conductor, op_id)


def test_vif_timeout_not_fatal_boots_anyway(conductor):
    conductor.conf.set_override("deliver_vif_events", False, "fake")
    conductor.conf.set_override("vif_plugging_timeout", 0)
    conductor.conf.set_override("vif_plugging_is_fatal", False)
    assert spawn(conductor)[1] == operations.SUCCEEDED


def test_use_cow_images_and_preallocation_are_honoured(conductor):
    conductor.conf.set_override("use_cow_images", False)
    conductor.conf.set_override("preallocate_images", "space")
    conductor.rt._drivers.clear()
    spawn(conductor)
    disks = {
        d.kind.value: d
        for d in conductor.rt.driver_for("h1").get_instance_disk_info(
            conductor.rt.driver_for("h1").list_instance_uuids()[0]
        )
    }
    assert disks["root"].backing_file is None and disks["root"].preallocated
    conductor.conf.clear_override("use_cow_images")
    conductor.conf.clear_override("preallocate_images")
    conductor.rt._drivers.clear()
    spawn(conductor, name="vm2")
    uuids = conductor.rt.driver_for("h1").list_instance_uuids()
    backed = [
        d
        for u in uuids
        for d in conductor.rt.driver_for("h1").get_instance_disk_info(u)
        if d.kind.value == "root" and d.backing_file
    ]
    assert len(backed) == 1 and backed[0].backing_file.endswith("_base/cirros")


def test_each_step_is_idempotent_when_run_twice(conductor):
    """Run the whole flow's steps twice in a row: the second pass changes nothing."""
    from taskflow import engines

    op_id, _ = spawn(conductor)
    before = conductor.rt.driver_for("h1").inventory()
    with conductor.db.session() as s:
        op = operations.get(s, op_id)
        params = dict(op.parameters)
        instances.take_hold(s, op.instance_uuid, op_id)  # re-arm the hold for a second pass
    engines.run(
        build(flavor=params["flavor"], vifs=params["vifs"]), store={"operation_id": op_id, **params}, engine="serial"
    )
    assert conductor.rt.driver_for("h1").inventory() == before
    with conductor.db.session() as s:
        assert s.get(Host, "h1").used_vcpus == 1
        assert instances.get(s, params["instance_uuid"]).vm_state == "active"
