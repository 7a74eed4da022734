"""The report of a reconciliation: what `conductor/reconcile.py` returns.

`Finding` (one disagreement and its fix), `Audit` (all of one audit's
findings, what `computeflow reconcile`, the web page and the drift watch
render) and `Applied` (what `apply` did). Data only, so the comparisons
(`reconcile_findings`), the repairs (`reconcile_repairs`) and their callers
share it without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: Finding kinds that come with an action ([conductor] reconcile_apply may name them).
FIXABLE = (
    "orphan-guest",
    "orphan-disk",
    "orphan-port",
    "orphan-volume",
    "orphan-kept-copy",
    "orphan-incoming-copy",
    "stray-copy",
    "guest-missing",
    "power-drift",
    "port-missing",
    "stale-copy",
    "stale-claim",
    "stale-hold",
    "usage-drift",
    "orphaned-operation",
)


@dataclass(frozen=True)
class Finding:
    """One disagreement between the database and a host, and its fix."""

    what: str
    host: str | None
    subject: str
    why: str
    instance_uuid: str | None = None
    instance_name: str | None = None
    #: The action that fixes it (flows/steps/reconcile.ACTIONS, or "resume");
    #: None: reported only (not computeflow's, or an operator's decision).
    action: dict | None = None
    fix: str = "left alone"

    def line(self) -> str:
        who = f" ({self.instance_name})" if self.instance_name else ""
        return f"{self.host or '-':<10} {self.what:<18} {self.subject}{who}: {self.why} -> {self.fix}"


@dataclass
class Audit:
    findings: list[Finding] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    instances: int = 0
    skipped_hosts: dict[str, str] = field(default_factory=dict)

    @property
    def actionable(self) -> list[Finding]:
        return [f for f in self.findings if f.action is not None]

    def to_dict(self) -> dict:
        return {
            "hosts": self.hosts,
            "instances": self.instances,
            "skipped_hosts": self.skipped_hosts,
            "findings": [asdict(f) for f in self.findings],
        }


@dataclass(frozen=True)
class Applied:
    operation_id: str
    instance_uuid: str | None
    state: str
    error: str | None
    actions: list[str]
