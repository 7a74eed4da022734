"""Errors of the persistence layer, each carrying what a user needs to act."""

from computeflow.errors import ComputeflowError


class PersistenceError(ComputeflowError):
    """Base class."""


class DatabaseUnreachable(PersistenceError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the database at {url}: {reason}")
        self.url = url
        self.reason = reason


class DatabaseMissing(PersistenceError):
    """A SQLite file the configuration names is not there: a typo must not
    become a new, empty database, so only `computeflow db upgrade` creates it."""

    def __init__(self, url: str, missing: str) -> None:
        super().__init__(
            f"no database at {url} ({missing} does not exist): check [database] "
            "connection, or create it with `computeflow db upgrade`"
        )
        self.url = url


class SchemaOutOfDate(PersistenceError):
    def __init__(self, current: str | None, head: str) -> None:
        super().__init__(
            f"database schema is at {current or 'nothing'}, this computeflow needs {head}: run `computeflow db upgrade`"
        )
