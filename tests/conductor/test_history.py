"""`computeflow ops list` as a history: filters an operator combines to find
what happened to an instance or a host, instance names instead of uuids, a
duration per operation, and refusals of malformed filters before any query."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

from persistence import instances, operations
from persistence.models import Operation, utcnow
from tests.conftest import run_cli

T0 = dt.datetime(2026, 1, 2, 3, 4, 5)


def _inst(c, name: str, host: str = "h1", deleted: bool = False) -> str:
    u = str(uuid.uuid4())
    with c.db.session() as s:
        i = instances.create(s, u, name, "m1.small", "cirros", None, vifs=[])
        i.host, i.vm_state = host, "active"
        if deleted:
            i.live_marker, i.vm_state = u, "deleted"
    return u


def _op(
    c,
    kind: str,
    inst_uuid: str | None,
    state: str = operations.SUCCEEDED,
    *,
    created: dt.datetime = T0,
    started: dt.datetime | None = None,
    finished: dt.datetime | None = None,
    error: str | None = None,
    params: dict | None = None,
) -> str:
    op_id = str(uuid.uuid4())
    with c.db.session() as s:
        operations.create(s, op_id, kind, inst_uuid, params or {}, 1, None, 30)
        s.flush()
        op = s.get(Operation, op_id)
        op.state, op.created_at, op.started_at, op.finished_at, op.error = (state, created, started, finished, error)
    return op_id


def _ids(out) -> list[str]:
    assert out.returncode == 0, out.stderr
    return [row["id"] for row in json.loads(out.stdout)]


def test_instance_filter_takes_a_name_with_its_deleted_namesakes_or_a_uuid(conductor, conf_file):
    old, new, other = _inst(conductor, "web1", deleted=True), _inst(conductor, "web1"), _inst(conductor, "db1")
    a = _op(conductor, "destroy", old, created=T0)
    b = _op(conductor, "spawn", new, created=T0 + dt.timedelta(hours=1))
    _op(conductor, "spawn", other, created=T0 + dt.timedelta(hours=2))
    assert _ids(run_cli(conf_file, "ops", "list", "--instance", "web1", "--json")) == [b, a]
    assert _ids(run_cli(conf_file, "ops", "list", "--instance", old, "--json")) == [a]
    out = run_cli(conf_file, "ops", "list", "--instance", "web1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "KIND", "INSTANCE", "STATE"]
    assert [ln.split()[2] for ln in lines[2:]] == ["web1", "web1"]  # names, not uuids
    assert old not in out.stdout and new not in out.stdout


def test_kind_state_and_error_filters(conductor, conf_file):
    u = _inst(conductor, "web1")
    ok = _op(conductor, "resize", u, created=T0)
    bad = _op(
        conductor,
        "resize",
        u,
        operations.FAILED,
        created=T0 + dt.timedelta(minutes=1),
        error="InjectedFault: Disk Full on h1",
    )
    other = _op(conductor, "reboot", u, operations.REVERTED, created=T0 + dt.timedelta(minutes=2), error="timed out")
    assert _ids(run_cli(conf_file, "ops", "list", "--kind", "resize", "--json")) == [bad, ok]
    assert _ids(run_cli(conf_file, "ops", "list", "--state", "FAILED", "--json")) == [bad]
    assert _ids(run_cli(conf_file, "ops", "list", "--error", "disk full", "--json")) == [bad]
    assert _ids(run_cli(conf_file, "ops", "list", "--error", "%", "--json")) == []  # not a wildcard
    assert _ids(run_cli(conf_file, "ops", "list", "--kind", "reboot", "--state", "REVERTED", "--json")) == [other]


def test_host_filter_matches_the_instance_host_and_hosts_in_parameters(conductor, conf_file):
    conductor.add_host("h2", vcpus=16, ram_mb=32768, disk_gb=500)
    on_h1, on_h2 = _inst(conductor, "web1", "h1"), _inst(conductor, "web2", "h2")
    moved = _op(
        conductor, "live_migration", on_h1, created=T0, params={"host": "h1", "target_host": "h2", "destination": "h2"}
    )
    lives = _op(conductor, "reboot", on_h2, created=T0 + dt.timedelta(minutes=1))
    _op(conductor, "reboot", on_h1, created=T0 + dt.timedelta(minutes=2), params={"host": "h1"})
    assert _ids(run_cli(conf_file, "ops", "list", "--host", "h2", "--json")) == [lives, moved]


def test_since_and_until_are_utc_times(conductor, conf_file):
    u = _inst(conductor, "web1")
    ids = [_op(conductor, "reboot", u, created=T0 + dt.timedelta(hours=h)) for h in range(3)]
    window = ("--since", "2026-01-02T03:30:00Z", "--until", "2026-01-02 04:30:00")
    assert _ids(run_cli(conf_file, "ops", "list", *window, "--json")) == [ids[1]]
    # An explicit offset is converted: 05:30+01:00 is 04:30 UTC.
    assert _ids(run_cli(conf_file, "ops", "list", "--since", "2026-01-02T05:30:00+01:00", "--json")) == [ids[2]]
    assert _ids(run_cli(conf_file, "ops", "list", "--until", "2026-01-02", "--json")) == []


def test_duration_and_times_are_shown_in_utc(conductor, conf_file):
    u = _inst(conductor, "web1")
    _op(
        conductor, "reboot", u, created=T0, started=T0 + dt.timedelta(seconds=1), finished=T0 + dt.timedelta(seconds=91)
    )
    now = utcnow()
    _op(conductor, "resize", u, operations.RUNNING, created=now, started=now - dt.timedelta(seconds=125))
    out = run_cli(conf_file, "ops", "list")
    assert out.returncode == 0, out.stderr
    header, _, running, done = out.stdout.splitlines()
    assert "DURATION" in header.split()
    assert "2026-01-02 03:04:05Z" in done and re.search(r"\b1m30s\b", done), done
    # Measured when the CLI runs: 125 s or more, however slow the machine is.
    shown = re.search(r"\b(\d+)m(\d\d)s \(running\)", running)
    assert shown and 125 <= int(shown[1]) * 60 + int(shown[2]) < 185, running
    (row, _) = json.loads(run_cli(conf_file, "ops", "list", "--json").stdout)[::-1]
    assert row["instance_name"] == "web1" and row["duration_s"] == 90.0


def test_malformed_filters_are_one_line_errors(conductor, conf_file):
    _op(conductor, "reboot", _inst(conductor, "web1"))
    for args, expect in (
        (("--limit", "0"), "--limit must be at least 1"),
        (("--limit", "-1"), "--limit must be at least 1"),
        (("--since", "yesterday"), "--since 'yesterday' is not an ISO-8601 time"),
        (("--until", "2026-13-01"), "--until '2026-13-01' is not an ISO-8601 time"),
        (("--kind", "reboo"), "unknown operation 'reboo'"),
        (("--host", "h9"), "unknown host 'h9'"),
        (("--instance", "nobody"), "unknown instance 'nobody'"),
        (("--needs-repair", "--kind", "spawn"), "--needs-repair takes no filter but --limit"),
    ):
        out = run_cli(conf_file, "ops", "list", *args)
        assert out.returncode == 2, (args, out.stdout)
        assert out.stdout == "" and len(out.stderr.splitlines()) == 1, (args, out.stderr)
        assert expect in out.stderr, (args, out.stderr)
