"""Periodic reconciliation inside `computeflow conductor`.

Every `[conductor] reconcile_interval` seconds the service audits the hosts
against the database (conductor/reconcile.py). A finding is reported once,
when it appears (a WARNING log line, and an instance event `drift:<kind>`
when it names an instance), and once more when it disappears (INFO); it is
not repeated every interval. Only the kinds listed in `[conductor]
reconcile_apply` are fixed, as reconcile operations; by default nothing is.

Several conductors may watch at once: each action runs under the instance's
hold (or on what no live instance owns) and looks again before it acts
(flows/steps/reconcile.py), so two conductors fixing the same finding end
with one fix, and the second's step finds nothing to do.
"""

from __future__ import annotations

import logging
import threading

from conductor import reconcile, reconcile_report
from conductor.config import ConfigError
from persistence import events

LOG = logging.getLogger(__name__)
_EVENT_LEN = 32  # instance_events.event


#: The service resumes orphaned operations itself, through its jobboard claims
#: (heartbeats, suspension at shutdown): the watch never does.
APPLICABLE = tuple(k for k in reconcile_report.FIXABLE if k != "orphaned-operation")


def check_apply_kinds(apply_kinds: list[str]) -> None:
    """A typo in [conductor] reconcile_apply is a configuration error, named."""
    unknown = sorted(set(apply_kinds) - set(APPLICABLE))
    if unknown:
        raise ConfigError(
            f"configuration: [conductor] reconcile_apply: unknown finding kind(s) "
            f"{', '.join(unknown)} (fixable: {', '.join(APPLICABLE)})"
        )


class DriftWatch:
    def __init__(self, conductor, interval: float, apply_kinds: list[str]) -> None:
        check_apply_kinds(apply_kinds)
        self.c, self.interval, self.apply_kinds = conductor, interval, frozenset(apply_kinds)
        self._reported: dict[tuple, reconcile_report.Finding] = {}

    def run(self, stop: threading.Event) -> None:
        """Audit every interval (the first one interval after start: a conductor
        starting after a crash resumes its operations first), until `stop`."""
        if not self.interval:
            return
        while not stop.wait(self.interval):
            try:
                self.pass_once(stop)
            except Exception:  # an unreachable database or host must not end the watch
                LOG.exception("periodic reconciliation failed; trying again in %ss", self.interval)

    def pass_once(self, stop: threading.Event | None = None) -> list[reconcile_report.Finding]:
        """One audit: report what is new, say what is gone, fix what may be fixed
        (waiting for the fixes only until `stop` is set). Returns the new findings."""
        result = reconcile.audit(self.c)
        now = {_key(f): f for f in result.findings}
        new = [f for k, f in now.items() if k not in self._reported]
        for k in set(self._reported) - set(now):
            LOG.info("reconcile: resolved: %s", self._reported[k].line())
        for f in new:
            LOG.warning("reconcile: %s", f.line())
        self._record_events(new)
        self._reported = now
        chosen = [f for f in result.actionable if f.what in self.apply_kinds]
        if chosen:
            done = reconcile.apply(self.c, reconcile_report.Audit(findings=chosen, hosts=result.hosts), stop)
            for a in done:
                LOG.info(
                    "reconcile: %s %s %s%s",
                    a.operation_id,
                    a.state,
                    ", ".join(a.actions),
                    f": {a.error}" if a.error else "",
                )
        return new

    def _record_events(self, findings: list[reconcile_report.Finding]) -> None:
        named = [f for f in findings if f.instance_uuid]
        if not named:
            return
        with self.c.db.session() as s:
            for f in named:
                events.record(s, f.instance_uuid, f.host or "-", f"drift:{f.what}"[:_EVENT_LEN], "nostate")


def _key(f: reconcile_report.Finding) -> tuple:
    return (f.what, f.host, f.subject, f.instance_uuid)
