"""Operation names -> flow factories, versions and the instance states they accept.

The factory's import path is what taskflow stores in the flow detail; the
version is stored on the operation. When a flow changes shape its VERSION is
bumped, and an operation created by an older version is refused on resume.
"""
from __future__ import annotations

from dataclasses import dataclass

from flows import destroy, spawn


@dataclass(frozen=True)
class OperationKind:
    name: str
    factory: str
    version: int
    #: vm_states the instance must be in (None: the operation creates it).
    accepts_vm_states: frozenset[str] | None


CATALOG: dict[str, OperationKind] = {
    "spawn": OperationKind("spawn", "flows.spawn.build", spawn.VERSION, None),
    "destroy": OperationKind(
        "destroy", "flows.destroy.build", destroy.VERSION,
        frozenset({"active", "stopped", "error", "paused", "suspended"}),
    ),
}


def get(kind: str) -> OperationKind:
    try:
        return CATALOG[kind]
    except KeyError:
        raise KeyError(f"unknown operation {kind!r} (known: {', '.join(sorted(CATALOG))})") from None
