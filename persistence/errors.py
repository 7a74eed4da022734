"""Errors of the persistence layer, each carrying what a user needs to act."""


class PersistenceError(Exception):
    """Base class."""


class DatabaseUnreachable(PersistenceError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the database at {url}: {reason}")
        self.url = url
        self.reason = reason


class SchemaOutOfDate(PersistenceError):
    def __init__(self, current: str | None, head: str) -> None:
        super().__init__(
            f"database schema is at {current or 'nothing'}, this computeflow needs "
            f"{head}: run `computeflow db upgrade`"
        )
