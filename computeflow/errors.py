"""The one root of the errors computeflow raises on purpose.

Each layer keeps its own base so that code can catch one layer's failures
(DriverError, PersistenceError, OperationError, ...); all of them derive from
ComputeflowError, so that a caller facing a person (the CLI, the web API) can
tell "computeflow refused, and says why in one line" from a bug with a
traceback, with one except clause that does not go stale as errors are added.
"""


class ComputeflowError(Exception):
    """An error raised on purpose; its message is one line meant for a person."""
