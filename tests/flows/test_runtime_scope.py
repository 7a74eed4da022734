"""Two Conductors open in one process each run their operations with their own
runtime (database, drivers, faults), whichever was opened first; closing one
leaves the other's as the default. Before, the second silently replaced the first's
for every step of both (issue 16)."""

from __future__ import annotations

from conductor import config
from conductor.api import Conductor, SpawnRequest
from flows import runtime
from persistence import operations, schema
from persistence.session import Database
from tests.conftest import write_conf


def _open(tmp_path, name: str) -> Conductor:
    """A conductor with its own SQLite database and fake hosts."""
    url = f"sqlite:///{tmp_path}/{name}.sqlite"
    db = Database(url)
    schema.upgrade(db)
    db.dispose()
    c = Conductor(config.load([str(write_conf(tmp_path / f"{name}.conf", tmp_path / name, url))]))
    c.add_host("h1", vcpus=8, ram_mb=16384, disk_gb=200)
    return c


def test_each_conductor_runs_its_steps_with_its_own_runtime(tmp_path):
    a, b = _open(tmp_path, "a"), _open(tmp_path, "b")
    try:
        assert runtime.current() is a.rt  # outside a run: the first opened
        b.rt.faults.arm("power_on:execute:fail")  # b's steps fail, a's must not see it
        op_b = b.submit_spawn(SpawnRequest(name="vm", flavor="m1.small", image="cirros"))
        op_a = a.submit_spawn(SpawnRequest(name="vm", flavor="m1.small", image="cirros"))
        assert b.run(op_b).state == operations.REVERTED
        assert a.run(op_a).state == operations.SUCCEEDED
        assert len(a.rt.driver_for("h1").list_instance_uuids()) == 1
        assert b.rt.driver_for("h1").list_instance_uuids() == []
    finally:
        a.close()
    assert runtime.current() is b.rt  # the oldest still open
    b.close()
