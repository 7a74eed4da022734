"""Errors raised while validating or running an operation."""

from computeflow.errors import ComputeflowError


class OperationError(ComputeflowError):
    """Base class: a clear, one-line reason an operation cannot go on."""


class InvalidRequest(OperationError):
    """The request is wrong (unknown flavor, duplicate name, ...); nothing was done."""


class NotFound(InvalidRequest):
    def __init__(self, what: str, name: str) -> None:
        super().__init__(f"unknown {what} {name!r}")
        self.what = what
        self.name = name


class InstanceLocked(OperationError):
    def __init__(self, instance: str, holder: str, holder_state: str | None = None) -> None:
        why = ""
        if holder_state == "FAILED":
            why = (
                f" (it FAILED and needs repair: `computeflow ops show {holder}`, then "
                f"`ops retry-revert` or `ops mark-reverted`)"
            )
        elif holder_state is not None:
            why = f" (it is {holder_state})"
        super().__init__(f"instance {instance} is busy: operation {holder} holds it{why}")
        self.instance = instance
        self.holder = holder
        self.holder_state = holder_state


class InvalidState(OperationError):
    def __init__(self, instance: str, vm_state: str, operation: str, accepts: frozenset[str]) -> None:
        super().__init__(
            f"cannot {operation.replace('_', ' ')} instance {instance}: it is {vm_state} "
            f"({operation} needs {', '.join(sorted(accepts))})"
        )
        self.instance = instance
        self.vm_state = vm_state


class InsufficientCapacity(OperationError):
    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"host {host} lacks capacity: {detail}")
        self.host = host


class VifPlugTimeout(OperationError):
    def __init__(self, instance_uuid: str, timeout: int) -> None:
        super().__init__(f"vif-plugged events for {instance_uuid} did not arrive within {timeout}s")


class BootTimeout(OperationError):
    def __init__(self, instance_uuid: str, timeout: int) -> None:
        super().__init__(f"guest {instance_uuid} did not reach running within {timeout}s")


class FlowVersionGone(OperationError):
    def __init__(self, op_id: str, kind: str, stored: int, current: int) -> None:
        super().__init__(
            f"operation {op_id} was created by {kind} flow version {stored}; this computeflow "
            f"only has version {current}: it will not be run with different steps. Finish it "
            f"with the computeflow release that created it, or mark it failed."
        )


class LiveMigrationAborted(OperationError):
    def __init__(self, instance_uuid: str) -> None:
        super().__init__(f"live migration of {instance_uuid} aborted on request")
        self.instance_uuid = instance_uuid
