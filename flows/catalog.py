"""Every operation: its flow factory, version, parameters and the instance
states it accepts (the state machine users meet when they are refused).

The factory's import path is what taskflow stores in the flow detail; the
version is stored on the operation. When a flow changes shape its VERSION is
bumped, and an operation created by an older version is refused on resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flows import destroy, power, spawn


@dataclass(frozen=True)
class Param:
    """A user parameter of an operation; secret ones are stored encrypted."""

    name: str
    type: type
    default: object = None
    secret: bool = False
    help: str = ""


@dataclass(frozen=True)
class OperationKind:
    name: str
    factory: str
    version: int
    help: str
    #: vm_states the instance must be in (None: the operation creates it).
    accepts_vm_states: frozenset[str] | None
    params: tuple[Param, ...] = field(default=())
    #: CLI verb, when the name would clash (`resume` already means "finish orphans").
    cli_name: str | None = None

    @property
    def verb(self) -> str:
        return self.cli_name or self.name.replace("_", "-")


def _power(name: str, accepts: set[str], help: str, *params: Param) -> OperationKind:
    return OperationKind(name, "flows.power.build", power.VERSION, help, frozenset(accepts), params)


_RUNNING_ISH = {"active", "paused", "suspended", "error"}

CATALOG: dict[str, OperationKind] = {k.name: k for k in (
    OperationKind("spawn", "flows.spawn.build", spawn.VERSION, "create and boot an instance", None),
    OperationKind("destroy", "flows.destroy.build", destroy.VERSION,
                  "delete an instance (forward-only)",
                  frozenset({"active", "stopped", "error", "paused", "suspended", "soft_deleted"})),
    _power("power_off", _RUNNING_ISH, "stop the guest"),
    _power("power_on", {"stopped"}, "start a stopped guest"),
    _power("reboot", {"active", "stopped", "error"},
           "restart the guest (soft, falling back to hard)",
           Param("hard", bool, False, help="skip the soft attempt")),
    _power("pause", {"active"}, "freeze the guest in memory"),
    _power("unpause", {"paused"}, "continue a paused guest"),
    _power("suspend", {"active"}, "save the guest's memory to disk and stop it"),
    OperationKind("resume", "flows.power.build", power.VERSION, "restore a suspended guest",
                  frozenset({"suspended"}), cli_name="unsuspend"),
    _power("soft_delete", {"active", "stopped", "error"}, "stop the guest, keeping it restorable"),
    _power("restore", {"soft_deleted"}, "bring back a soft-deleted instance"),
)}


def get(kind: str) -> OperationKind:
    try:
        return CATALOG[kind]
    except KeyError:
        raise KeyError(f"unknown operation {kind!r} (known: {', '.join(sorted(CATALOG))})") from None


def instance_operations() -> list[OperationKind]:
    """Operations on an existing instance, in catalogue order."""
    return [k for k in CATALOG.values() if k.accepts_vm_states is not None]
