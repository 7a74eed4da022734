"""Guest-agent (password, file, metadata) and device (volume, interface)
operations: each succeeds on every database; a failure injected at each step,
before or after its side effect, restores the record and the fake host exactly
(SQLite). A password or an injected file cannot be un-set: those digests are
the only thing a failure after the side effect leaves changed."""

from __future__ import annotations

import threading

import pytest

from flows.errors import InstanceLocked, InvalidRequest
from persistence import operations
from tests.flows.catalogue import Case, instance, prepare, steps_of, world
from tests.flows.test_spawn import spawn

FIRST_PORT = "<first-port>"  # resolved to the spawned interface's id
CASES = [
    Case("set_admin_password", {"password": "n3w-Pa55word"}, irreversible=("admin_password_sha256",)),
    Case("inject_file", {"path": "/etc/motd", "contents": "hello from the secret file\n"}, irreversible=("files",)),
    Case("change_metadata", {"set": ["role=web", "tier=1"]}),
    Case(
        "change_metadata",
        {"unset": ["role"], "set": ["tier=2"]},
        setup=(("change_metadata", {"set": ["role=web", "tier=1"]}),),
    ),
    Case("attach_volume", {"volume_id": "vol-1"}),
    Case("detach_volume", {"volume_id": "vol-1"}, setup=(("attach_volume", {"volume_id": "vol-1"}),)),
    Case(
        "swap_volume",
        {"volume_id": "vol-1", "new_volume_id": "vol-2"},
        setup=(("attach_volume", {"volume_id": "vol-1"}),),
    ),
    Case("attach_interface", {"network": "blue"}),
    Case("detach_interface", {"port_id": FIRST_PORT}),
]
FAILURES = [(case, step, when) for case in CASES for step in steps_of(case) for when in ("before", "after")]
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def resolved(c, uuid: str, case: Case) -> dict:
    return {k: (instance(c, uuid).vifs[0]["id"] if v == FIRST_PORT else v) for k, v in case.params.items()}


def _id(v):
    if isinstance(v, Case):
        return v.op + ("-after-" + v.setup[0][0] if v.setup else "")
    return None


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_operation_succeeds(conductor, case):
    uuid = prepare(conductor, case)
    status = conductor.run(conductor.submit(case.op, "vm1", **resolved(conductor, uuid, case)))
    assert status.state == operations.SUCCEEDED, status.error
    inst = instance(conductor, uuid)
    assert (inst.vm_state, inst.power_state, inst.held_by) == ("active", "running", None)


@sqlite_only
@pytest.mark.parametrize("case,step,when", FAILURES, ids=lambda v: _id(v) or v)
def test_failure_at_each_step_restores_everything(conductor, case, step, when):
    uuid = prepare(conductor, case)
    before = world(conductor, uuid, ignore=case.irreversible)
    conductor.rt.faults.arm(f"{step}:execute:fail:{when}")
    status = conductor.run(conductor.submit(case.op, "vm1", **resolved(conductor, uuid, case)))
    assert status.state == operations.REVERTED, status.error
    assert world(conductor, uuid, ignore=case.irreversible) == before


@sqlite_only
def test_devices_reach_the_guest_and_the_record(conductor):
    uuid = prepare(conductor, Case("attach_volume"))
    drv = conductor.rt.driver_for("h1")
    run = lambda op, **kw: conductor.run(conductor.submit(op, "vm1", **kw)).state  # noqa: E731
    assert run("attach_volume", volume_id="vol-1") == "SUCCEEDED"
    assert run("attach_volume", volume_id="vol-2", mountpoint="/dev/vdq") == "SUCCEEDED"
    assert instance(conductor, uuid).volumes == [
        {"volume_id": "vol-1", "mountpoint": "/dev/vdb"},
        {"volume_id": "vol-2", "mountpoint": "/dev/vdq"},
    ]
    assert run("swap_volume", volume_id="vol-1", new_volume_id="vol-3") == "SUCCEEDED"
    assert drv.state.read()["volumes"] == {
        "vol-2": {"instance": uuid, "mountpoint": "/dev/vdq"},
        "vol-3": {"instance": uuid, "mountpoint": "/dev/vdb"},
    }
    assert run("attach_interface", network="blue") == "SUCCEEDED"
    vifs = instance(conductor, uuid).vifs
    assert [v["network"] for v in vifs] == ["default", "blue"]
    assert drv.state.read()["guests"][uuid]["vifs"] == [v["id"] for v in vifs]
    assert run("detach_interface", port_id=vifs[0]["id"]) == "SUCCEEDED"
    assert set(drv.inventory().ports) == {vifs[1]["id"]}
    # destroy takes everything with it, the added interface and the volumes included
    assert conductor.run(conductor.submit_destroy("vm1")).state == "SUCCEEDED"
    assert drv.inventory().empty


@sqlite_only
def test_metadata_reaches_the_guest_and_the_record(conductor):
    uuid = prepare(conductor, Case("change_metadata"))
    assert conductor.run(conductor.submit("change_metadata", "vm1", set=["a=1", "b=2"])).state == "SUCCEEDED"
    assert conductor.run(conductor.submit("change_metadata", "vm1", unset=["a"])).state == "SUCCEEDED"
    assert instance(conductor, uuid).user_metadata == {"b": "2"}
    assert conductor.rt.driver_for("h1").state.read()["guests"][uuid]["metadata"] == {"b": "2"}


@sqlite_only
@pytest.mark.parametrize(
    "op,params,match",
    [
        ("detach_volume", {"volume_id": "vol-9"}, "volume vol-9 is not attached to instance vm1"),
        ("attach_volume", {"volume_id": "vol-1"}, "vol-1 is already attached to instance vm1"),
        ("attach_volume", {"volume_id": "vol-2", "mountpoint": "/dev/vdb"}, "/dev/vdb of instance vm1 is in use"),
        ("swap_volume", {"volume_id": "vol-1", "new_volume_id": "vol-1"}, "already attached"),
        ("detach_interface", {"port_id": "nope"}, "has no interface nope"),
        ("change_metadata", {"set": ["novalue"]}, "expected KEY=VALUE"),
        ("change_metadata", {}, "needs at least one"),
        ("inject_file", {"path": "etc/motd", "contents": "x"}, "path must be absolute"),
        ("set_admin_password", {}, "set_admin_password needs password"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(conductor, op, params, match):
    uuid = prepare(conductor, Case("x", setup=(("attach_volume", {"volume_id": "vol-1"}),)))
    before = world(conductor, uuid)
    with pytest.raises(InvalidRequest, match=match):
        conductor.submit(op, "vm1", **params)
    assert world(conductor, uuid) == before


def test_concurrent_operations_on_one_instance_have_one_holder(conductor):
    spawn(conductor)
    kinds = [
        ("attach_volume", {"volume_id": "v"}),
        ("rescue", {}),
        ("snapshot", {"image_name": "s"}),
        ("change_metadata", {"set": ["a=b"]}),
        ("attach_interface", {}),
        ("reboot", {}),
        ("power_off", {}),
        ("rebuild", {"image": "cirros"}),
    ]
    results: list[object] = []
    barrier = threading.Barrier(len(kinds))

    def submit(op, params):
        barrier.wait()
        try:
            results.append(conductor.submit(op, "vm1", **params))
        except InstanceLocked as e:
            results.append(e)

    threads = [threading.Thread(target=submit, args=k) for k in kinds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1, results
    assert all(r.holder == winners[0] for r in results if isinstance(r, InstanceLocked))
    assert conductor.run(winners[0]).state == "SUCCEEDED"


@sqlite_only
def test_one_volume_raced_onto_many_instances_ends_on_one(conductor):
    for i in range(4):
        spawn(conductor, name=f"vm{i}")
    ops = [conductor.submit("attach_volume", f"vm{i}", volume_id="shared") for i in range(4)]
    states = []
    threads = [threading.Thread(target=lambda o=o: states.append(conductor.run(o).state)) for o in ops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(states) == ["REVERTED"] * 3 + ["SUCCEEDED"]
    with conductor.db.session() as s:
        from persistence import instances

        holders = [i.name for i in instances.list_live(s) if i.volumes]
    assert len(holders) == 1
    assert conductor.rt.driver_for("h1").inventory().volumes == ("shared",)
