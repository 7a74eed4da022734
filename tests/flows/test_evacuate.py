"""Evacuate on the fake driver: a host marked down, its instance rebuilt on
another host, with fresh disks or (shared storage) the same disks; the dead
host's leftovers removed when it is marked up. A failure at each step leaves
everything (record, claims, usage, every fake host) as before."""

from __future__ import annotations

import pytest

from conductor import moves
from conductor.api import SpawnRequest
from flows import evacuate
from flows.errors import InvalidRequest
from persistence import claims, operations
from persistence.models import Host
from tests.flows.catalogue import Case, _atoms, instance, prepare, world

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SMALL = {"name": "m1.small", "vcpus": 1, "ram_mb": 2048, "root_gb": 10, "ephemeral_gb": 5, "swap_mb": 512}


def steps(shared: bool, running: bool = True) -> list[str]:
    flow = evacuate.build(flavor=SMALL, vifs=[{"id": "v", "mac": "m"}], shared_storage=shared, power_on=running)
    return [a.name for a in _atoms(flow)]


def down_with_vm1(c, shared: bool = False, setup=()) -> str:
    """vm1 on h1 (h2 added after, so the spawn lands on h1), then h1 down."""
    if shared:
        c.conf.set_override("shared_storage", ["h1+h2"], "fake")
    uuid = prepare(c, Case("evacuate", setup=setup))
    c.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    with c.rt.driver_for("h2").state.change():
        pass  # the file exists before, so "as before" compares it
    with c.rt.driver_for("h1").state.change() as s:  # data the guest wrote on its root disk
        next(d for d in s["disks"].values() if d["kind"] == "root")["data"] = "precious"
    moves.set_host_down(c, "h1")
    return uuid


def usage(c, host: str) -> tuple[int, int, int]:
    with c.db.session() as s:
        h = s.get(Host, host)
        return h.used_vcpus, h.used_ram_mb, h.used_disk_gb


def root_disk(c, host: str) -> dict:
    return next(d for d in c.rt.driver_for(host).state.read()["disks"].values() if d["kind"] == "root")


@pytest.mark.parametrize("shared", [False, True], ids=["own-storage", "shared-storage"])
def test_evacuate_rebuilds_elsewhere_and_set_up_cleans_the_dead_host(conductor, shared):
    c = conductor
    uuid = down_with_vm1(c, shared)
    status = c.run(c.submit("evacuate", "vm1"))
    assert status.state == operations.SUCCEEDED, status.error
    with c.db.session() as s:
        op = operations.get(s, status.id)
        assert op.parameters["shared_storage"] is shared
    inst = instance(c, uuid)
    assert (inst.host, inst.vm_state, inst.power_state, inst.held_by) == ("h2", "active", "running", None)
    h2 = c.rt.driver_for("h2").inventory()
    assert h2.guests == (uuid,) and len(h2.disks) == 3 and len(h2.ports) == 1
    # the data on the root disk survives only when the storage is shared
    assert root_disk(c, "h2").get("data") == ("precious" if shared else None)
    assert usage(c, "h1") == (0, 0, 0) and usage(c, "h2") == (1, 2048, 16)
    with c.db.session() as s:
        assert [cl.host for cl in claims.all_claims(s)] == ["h2"]
    # the dead host still has its copy until it comes back
    assert c.rt.driver_for("h1").inventory().guests == (uuid,)
    assert moves.set_host_up(c, "h1") == [uuid]
    assert c.rt.driver_for("h1").inventory().empty
    assert c.rt.driver_for("h2").inventory().guests == (uuid,) and len(h2.disks) == 3
    with c.db.session() as s:
        assert s.get(Host, "h1").down is False
    assert moves.set_host_up(c, "h1") == []  # idempotent
    # the evacuated instance lives on normally
    assert c.run(c.submit("destroy", "vm1")).state == operations.SUCCEEDED
    assert c.rt.driver_for("h2").inventory().empty


@sqlite_only
def test_a_stopped_instance_is_evacuated_stopped(conductor):
    uuid = down_with_vm1(conductor, setup=(("power_off", {}),))
    assert conductor.run(conductor.submit("evacuate", "vm1")).state == operations.SUCCEEDED
    inst = instance(conductor, uuid)
    assert (inst.host, inst.vm_state, inst.power_state) == ("h2", "stopped", "shutdown")
    assert conductor.rt.driver_for("h2").state.read()["guests"][uuid]["power_state"] == "shutdown"


@sqlite_only
@pytest.mark.parametrize(
    "shared,step,when",
    [(shared, step, when) for shared in (False, True) for step in steps(shared) for when in ("before", "after")],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_failure_at_each_step_restores_everything(conductor, shared, step, when):
    uuid = down_with_vm1(conductor, shared)
    before = world(conductor, uuid)
    conductor.rt.faults.arm(f"{step}:execute:fail:{when}")
    status = conductor.run(conductor.submit("evacuate", "vm1"))
    assert status.state == operations.REVERTED, status.error
    assert f"injected failure at step {step}" in status.error
    assert world(conductor, uuid) == before


@sqlite_only
def test_hosts_evacuate_moves_every_instance_and_nothing_lands_on_a_down_host(conductor):
    c = conductor
    for name in ("vm1", "vm2"):
        assert c.run(c.submit_spawn(SpawnRequest(name=name, flavor="m1.small", image="cirros"))).state == "SUCCEEDED"
    c.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    c.add_host("h3", vcpus=16, ram_mb=32768, disk_gb=500)
    moves.set_host_down(c, "h1")
    moves.set_host_down(c, "h3")
    with pytest.raises(InvalidRequest, match="host h3 is down"):
        c.submit_spawn(SpawnRequest(name="vm3", flavor="m1.small", image="cirros", host="h3"))
    ids = moves.evacuate_host(c, "h1")
    assert [c.run(i).state for i in ids] == ["SUCCEEDED", "SUCCEEDED"]
    assert {instance(c, c.status(i).instance_uuid).host for i in ids} == {"h2"}
    assert usage(c, "h1") == (0, 0, 0) and usage(c, "h3") == (0, 0, 0)
    assert moves.evacuate_host(c, "h1") == []


@sqlite_only
@pytest.mark.parametrize(
    "target,down,match",
    [
        (None, False, "its host h1 is not marked down"),
        ("h1", True, "host h1 is down"),
        ("h3", True, "host h3 is down"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(conductor, target, down, match):
    c = conductor
    uuid = prepare(c, Case("evacuate"))
    c.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    c.add_host("h3", vcpus=16, ram_mb=32768, disk_gb=500)
    moves.set_host_down(c, "h3")
    if down:
        moves.set_host_down(c, "h1")
    before = world(c, uuid)
    params = {"target_host": target} if target else {}
    with pytest.raises(InvalidRequest, match=match):
        c.submit("evacuate", "vm1", **params)
    assert world(c, uuid) == before
