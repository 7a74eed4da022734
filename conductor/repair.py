"""Operator repair of operations whose revert failed.

Such an operation ends FAILED: some step's revert raised (taskflow
REVERT_FAILURE) and the steps before it were not reverted, so the instance is
still held and the hypervisor may still hold disks, ports or a guest. Here:

- `needing_repair`: those operations, each with what it left behind (the
  steps whose revert failed or never ran, and the resources they name);
- `retry_revert`: after the cause is fixed, re-run the failed reverts and
  every earlier one. taskflow would mark a plain re-run REVERTED without
  reverting the earlier steps, so the failed atoms are first put back to
  FAILURE (persistence.operator_actions.reopen_for_revert) and the flow is then run
  through the ordinary runner, which reverts it;
- `mark_reverted`: record a manual cleanup (hold and claims released, the
  operation REVERTED, who and when in the flow log).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oslo_utils import importutils
from taskflow import flow as tf_flow

from persistence import flowlog, operations, operator_actions
from persistence.models import Operation

#: Store keys that name a resource a step acts on.
RESOURCE_KEYS = (
    "instance_uuid",
    "host",
    "volume_id",
    "new_volume_id",
    "port_id",
    "image_name",
    "image_path",
    "destination",
    "source_host",
)
#: States of a step that did (or may have done) something not undone.
_NOT_UNDONE = ("SUCCESS", "FAILURE", "REVERT_FAILURE", "RUNNING", "REVERTING", "RETRYING")


@dataclass(frozen=True)
class LeftBehind:
    step: str
    state: str
    error: str | None
    resources: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        # The operation's own instance goes without saying (JSON keeps it).
        named = " ".join(f"{k}={v}" for k, v in self.resources.items() if k != "instance_uuid")
        why = "revert failed" if self.state == "REVERT_FAILURE" else f"{self.state.lower()}, not reverted"
        return (
            f"{self.step}: {why}"
            + (f" [{named}]" if named else "")
            + (f": {self.error}" if self.error and self.state == "REVERT_FAILURE" else "")
        )


@dataclass(frozen=True)
class RepairItem:
    op: Operation
    left_behind: list[LeftBehind]


def needing_repair(conductor, limit: int = 50) -> list[RepairItem]:
    with conductor.db.session() as s:
        ops = operator_actions.needing_repair(s, limit)
        return [RepairItem(op, left_behind(s, op)) for op in ops]


def left_behind(s, op: Operation) -> list[LeftBehind]:
    """Steps that executed (or failed midway) and were not reverted, newest first,
    i.e. in the order a revert would undo them."""
    steps = flowlog.summarize(flowlog.entries(s, op.flow_detail_uuid or op.id))
    resources = _resources_by_step(op)
    left = [
        LeftBehind(st.step, st.state, st.error, resources.get(st.step, {})) for st in steps if st.state in _NOT_UNDONE
    ]
    return left[::-1]


def retry_revert(conductor, op_id: str, by: str, on_event=None):
    """Re-run the failed reverts of a FAILED operation (see module docstring);
    returns the operation's status after the run. Raises operator_actions.Refused."""
    with conductor.db.session() as s:
        op = operator_actions.reopen_for_revert(s, op_id, conductor.owner, conductor.lease_seconds, by)
    return conductor.run(op.id, on_event=on_event)


def mark_reverted(conductor, op_id: str, by: str, note: str | None = None) -> RepairItem:
    """Record a manual cleanup; returns what the flow log said was left behind."""
    with conductor.db.session() as s:
        op = operations.get(s, op_id)
        left = left_behind(s, op) if op is not None else []
        op = operator_actions.mark_reverted(s, op_id, by, note)
        return RepairItem(op, left)


def _resources_by_step(op: Operation) -> dict[str, dict[str, str]]:
    """{step name: the resources its arguments and own settings name}, from
    the operation's flow rebuilt by its factory (as a resume would build it)."""
    from flows import catalog

    try:
        factory = importutils.import_class(catalog.get(op.kind).factory)
        flow = factory(**(op.parameters or {}))
    except Exception:  # noqa: BLE001 - an unbuildable flow (gone version): names only
        return {}
    store = {"operation_id": op.id, **(op.parameters or {})}
    found: dict[str, dict[str, str]] = {}
    for atom in _atoms(flow):
        names = dict(getattr(atom, "rebind", None) or {})
        names |= dict(getattr(atom, "revert_rebind", None) or {})
        res = {
            arg: str(store[key]) for arg, key in names.items() if arg in RESOURCE_KEYS and store.get(key) is not None
        }
        kind = getattr(atom, "kind", None)
        if kind is not None:
            res["disk"] = getattr(kind, "value", str(kind))
        vif = getattr(atom, "vif", None)
        if isinstance(vif, dict) and "id" in vif:
            res["vif"] = vif["id"]
        found[atom.name] = res
    return found


def _atoms(flow: tf_flow.Flow):
    for node in flow:
        if isinstance(node, tf_flow.Flow):
            yield from _atoms(node)
        else:
            yield node
