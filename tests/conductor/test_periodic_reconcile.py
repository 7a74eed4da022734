"""Periodic reconciliation in `computeflow conductor`: findings are reported
once (log and instance event), nothing changes unless the configuration lets
a kind be fixed, a failed audit does not end the watch, a typo in that list is
a configuration error."""

from __future__ import annotations

import logging
import threading

import pytest
import sqlalchemy as sa

from conductor import config, drift_watch, reconcile, reconcile_report
from conductor.api import SpawnRequest
from conductor.drift_watch import DriftWatch
from persistence import events, instances, operations
from persistence.models import Operation
from tests.conftest import run_cli, write_conf


def _drifted(c) -> str:
    op = c.submit_spawn(SpawnRequest(name="vm1", flavor="m1.small", image="cirros"))
    assert c.run(op).state == operations.SUCCEEDED
    with c.db.session() as s:
        uuid = instances.find_live(s, "vm1").uuid
    with c.rt.driver_for("h1").state.change() as st:
        st["guests"][uuid]["power_state"] = "shutdown"
    return uuid


def _events(c, uuid: str) -> list[str]:
    with c.db.session() as s:
        return [e.event for e in events.for_instance(s, uuid)]


def test_report_only_by_default_and_each_finding_once(conductor, caplog):
    uuid = _drifted(conductor)
    watch = DriftWatch(conductor, 600, [])
    with caplog.at_level(logging.INFO, logger="conductor.drift_watch"):
        assert [f.what for f in watch.pass_once()] == ["power-drift"]
        assert watch.pass_once() == []  # already reported
    assert _events(conductor, uuid) == ["drift:power-drift"]
    with conductor.db.session() as s:
        (ev,) = events.for_instance(s, uuid)
        assert (ev.host, ev.power_state) == ("h1", "nostate")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "power-drift" in warned[0]
    with conductor.db.session() as s:
        assert instances.get(s, uuid).power_state == "running"  # report only: unchanged
        assert s.scalar(sa.select(sa.func.count()).select_from(Operation).where(Operation.kind == "reconcile")) == 0


def test_allowed_kinds_are_fixed_as_operations(conductor, caplog):
    uuid = _drifted(conductor)
    watch = DriftWatch(conductor, 600, ["power-drift"])
    with caplog.at_level(logging.INFO, logger="conductor.drift_watch"):
        watch.pass_once()
        watch.pass_once()
    with conductor.db.session() as s:
        assert (instances.get(s, uuid).vm_state, instances.get(s, uuid).power_state) == ("stopped", "shutdown")
        (op,) = s.scalars(sa.select(Operation).where(Operation.kind == "reconcile")).all()
        assert op.state == operations.SUCCEEDED
    assert any("resolved" in r.getMessage() for r in caplog.records)


class _Ticks:
    """A stop Event whose wait() returns at once: False `n` times, then True."""

    def __init__(self, n: int) -> None:
        self.n, self.timeouts = n, []

    def wait(self, timeout: float) -> bool:
        self.timeouts.append(timeout)
        return len(self.timeouts) > self.n


def test_a_failed_audit_is_logged_and_the_watch_goes_on(monkeypatch, caplog):
    audits = []

    def audit(c):
        audits.append(c)
        if len(audits) == 1:
            raise RuntimeError("database unreachable")
        return reconcile_report.Audit()

    monkeypatch.setattr(drift_watch.reconcile, "audit", audit)
    ticks = _Ticks(2)
    with caplog.at_level(logging.INFO, logger="conductor.drift_watch"):
        DriftWatch(None, 600, []).run(ticks)
    assert len(audits) == 2 and ticks.timeouts == [600, 600, 600]
    (failed,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "periodic reconciliation failed" in failed.getMessage()
    assert "database unreachable" in str(failed.exc_info[1])


def test_the_watch_stops_at_once_when_asked_and_never_runs_at_interval_0():
    stop = threading.Event()
    stop.set()
    t = threading.Thread(target=DriftWatch(None, 600, []).run, args=(stop,))
    t.start()
    t.join(timeout=5)
    assert not t.is_alive()
    ticks = _Ticks(10)
    DriftWatch(None, 0, ["power-drift"]).run(ticks)  # disabled: returns without waiting
    assert ticks.timeouts == []


def test_a_typo_in_reconcile_apply_is_a_configuration_error(tmp_path, sqlite_url):
    conf = write_conf(
        tmp_path / "c.conf", tmp_path / "state", sqlite_url, "reconcile_apply = power-drift,orphan-gost\n"
    )
    out = run_cli(conf, "conductor", timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "orphan-gost" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(config.ConfigError):
        DriftWatch(None, 600, ["nope"])


class _SlowHandle:
    """An operation another conductor runs: still going after each wait slice."""

    def __init__(self, slices_before_end: int) -> None:
        self.left = slices_before_end

    def wait(self, timeout=None):
        from conductor.handle import OperationTimeout

        if self.left:
            self.left -= 1
            raise OperationTimeout("op", "RUNNING", timeout)
        return "ended"


def test_a_stopping_service_does_not_wait_for_a_fix_another_conductor_runs():
    stop = threading.Event()
    assert reconcile._wait(_SlowHandle(2), stop) == "ended"  # waited over 3 slices
    stop.set()
    assert reconcile._wait(_SlowHandle(100), stop) is None  # left at once


def test_the_service_never_resumes_orphans_from_the_watch():
    with pytest.raises(config.ConfigError, match="orphaned-operation"):
        DriftWatch(None, 600, ["orphaned-operation"])
