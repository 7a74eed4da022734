"""`instances show`, `instances list` and `instances events` as an operator
reads them: no Python reprs, UTC times, the last operation and its fault, a
host marked down, and the hypervisor's unasked-for events."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

from persistence import events, instances, operations
from persistence.models import Instance, Operation, utcnow
from tests.conftest import run_cli
from tests.flows.test_spawn import spawn

TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"


def _field(out: str, key: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln.split(" ", 1)[0] == key]
    return line[len(key) :].strip()


def test_show_is_readable_and_json_stays_json(conductor, conf_file):
    op_id, state = spawn(conductor)
    assert state == operations.SUCCEEDED
    with conductor.db.session() as s:
        inst = s.query(Instance).filter_by(name="vm1").one()
        inst.volumes = [{"volume_id": "vol-1", "mountpoint": "/dev/vdb"}]
        inst.user_metadata = {"role": "web", "tier": "1"}
        (vif,) = inst.vifs
    out = run_cli(conf_file, "instances", "show", "vm1")
    assert out.returncode == 0, out.stderr
    assert "{'" not in out.stdout and "[{" not in out.stdout, out.stdout
    assert _field(out.stdout, "vifs") == f"{vif['id']}  {vif['mac']}  {vif['network']}"
    assert _field(out.stdout, "volumes") == "vol-1  /dev/vdb"
    lines = out.stdout.splitlines()
    at = lines.index(f"{'user_metadata':<16}role=web")  # one key=value per line, aligned
    assert lines[at + 1] == f"{'':<16}tier=1", out.stdout
    assert re.fullmatch(TIME, _field(out.stdout, "created_at")), out.stdout
    assert _field(out.stdout, "last_op") == f"{op_id} spawn SUCCEEDED"
    assert not [ln for ln in out.stdout.splitlines() if ln.startswith("fault ")]
    shown = json.loads(run_cli(conf_file, "instances", "show", "vm1", "--json").stdout)
    assert shown["vifs"] == [vif] and shown["user_metadata"] == {"role": "web", "tier": "1"}
    assert shown["last_operation"] == {"id": op_id, "kind": "spawn", "state": "SUCCEEDED"}
    assert shown["fault"] is None


def test_show_gives_the_fault_of_a_failed_last_operation(conductor, conf_file):
    spawn(conductor)
    op_id = str(uuid.uuid4())
    with conductor.db.session() as s:
        inst = s.query(Instance).filter_by(name="vm1").one()
        operations.create(s, op_id, "reboot", inst.uuid, {}, 1, None, 30)
        s.flush()
        op = s.get(Operation, op_id)
        op.state, op.error = operations.FAILED, "InjectedFault: reboot went wrong"
        op.created_at = utcnow() + dt.timedelta(seconds=1)
    out = run_cli(conf_file, "instances", "show", "vm1")
    assert out.returncode == 0, out.stderr
    assert _field(out.stdout, "last_op") == f"{op_id} reboot FAILED"
    assert _field(out.stdout, "fault") == "InjectedFault: reboot went wrong"
    shown = json.loads(run_cli(conf_file, "instances", "show", "vm1", "--json").stdout)
    assert shown["fault"] == "InjectedFault: reboot went wrong"


def test_an_instance_on_a_host_marked_down_says_so(conductor, conf_file):
    spawn(conductor)
    listed = run_cli(conf_file, "instances", "list")
    assert listed.returncode == 0 and "(down)" not in listed.stdout, listed.stdout
    assert run_cli(conf_file, "hosts", "set-down", "h1").returncode == 0
    listed = run_cli(conf_file, "instances", "list")
    header, _, row = listed.stdout.splitlines()
    host_at = header.index("HOST")
    assert row[host_at:].startswith("h1 (down)"), listed.stdout
    out = run_cli(conf_file, "instances", "show", "vm1")
    assert _field(out.stdout, "host") == "h1 (down)"
    assert _field(out.stdout, "power_state") == "running (last known: host h1 is down)"
    shown = json.loads(run_cli(conf_file, "instances", "show", "vm1", "--json").stdout)
    assert shown["host_down"] is True and shown["power_state"] == "running"


def test_events_lists_what_the_hypervisor_reported(conductor, conf_file):
    spawn(conductor)
    spawn(conductor, "vm2")
    with conductor.db.session() as s:
        uuid1 = instances.find_live(s, "vm1").uuid
    conductor.rt.driver_for("h1").simulate_guest_stopped(uuid1)
    with conductor.db.session() as s:
        (ev,) = [(e.event, e.at) for e in events.for_instance(s, uuid1)]
    out = run_cli(conf_file, "instances", "events", "vm1")
    assert out.returncode == 0, out.stderr
    header, _, row = out.stdout.splitlines()
    assert header.split() == ["AT", "HOST", "EVENT", "POWER_STATE"]
    assert re.fullmatch(TIME + rf"\s+h1\s+{ev[0]}\s+shutdown", row), row
    listed = json.loads(run_cli(conf_file, "instances", "events", uuid1, "--json").stdout)
    assert listed == [{"at": ev[1].isoformat() + "Z", "host": "h1", "event": ev[0], "power_state": "shutdown"}]
    none = run_cli(conf_file, "instances", "events", "vm2")
    assert none.returncode == 0 and none.stdout.strip() == "no events recorded for vm2"
    bad = run_cli(conf_file, "instances", "events", "nobody")
    assert bad.returncode == 2 and bad.stderr.strip() == "computeflow: error: unknown instance 'nobody'"


def test_events_of_a_deleted_instance_by_its_name(conductor, conf_file):
    spawn(conductor)
    with conductor.db.session() as s:
        uuid1 = instances.find_live(s, "vm1").uuid
    conductor.rt.driver_for("h1").simulate_guest_stopped(uuid1)
    assert conductor.run(conductor.submit("destroy", "vm1")).state == operations.SUCCEEDED
    gone = run_cli(conf_file, "instances", "events", "vm1")  # no live vm1: the deleted one
    assert gone.returncode == 0 and "shutdown" in gone.stdout, gone.stdout + gone.stderr
    spawn(conductor)  # a new vm1, with no events of its own
    assert run_cli(conf_file, "instances", "events", "vm1").stdout.strip() == "no events recorded for vm1"
    listed = json.loads(run_cli(conf_file, "instances", "events", "vm1", "--deleted", "--json").stdout)
    assert [(e["host"], e["power_state"]) for e in listed] == [("h1", "shutdown")]
