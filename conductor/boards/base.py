"""What every board offers the conductor service, and the job's two details."""

from __future__ import annotations

import abc
import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from computeflow.errors import ComputeflowError
from persistence.models import utcnow
from persistence.notify import Receiver

JOB_NAME = "computeflow-operation"


class JobboardError(ComputeflowError):
    """The jobboard URL is wrong or its backend cannot be used."""


@dataclass
class Claim:
    """A job this conductor holds; `lost` is set when the heartbeat finds it gone."""

    op_id: str
    job: Any = None
    lost: threading.Event = field(default_factory=threading.Event)


class WakeupSource(Protocol):
    """What conductor/wakeups.py needs of a source of notices."""

    @property
    def carries(self) -> tuple[str, ...]:
        """The channels (persistence.notify) it carries across processes."""

    @property
    def healthy(self) -> bool: ...

    def close(self) -> None: ...


class Board(abc.ABC):
    embedded = False

    @abc.abstractmethod
    def post(self, op_id: str, created_at: dt.datetime) -> None:
        """Offer an operation to conductors (idempotent where the backend allows)."""

    def post_missing(self, ops: list[tuple[str, dt.datetime]]) -> None:
        """Post each (operation id, created_at) that has no job yet."""
        for op_id, created_at in ops:
            self.post(op_id, created_at)

    @abc.abstractmethod
    def claim_next(self, skip: set[str]) -> Claim | None:
        """Claim the oldest waiting operation not in `skip`, or None."""

    def claim_batch(self, skip: set[str], limit: int) -> list[Claim]:
        """Claim up to `limit` of the oldest waiting operations not in `skip`, oldest first."""
        claim = self.claim_next(skip)
        return [claim] if claim is not None else []

    @abc.abstractmethod
    def heartbeat(self, claim: Claim) -> bool:
        """Keep a claim alive; False when it is no longer ours."""

    def extend_all(self, claims: list[Claim]) -> list[bool]:
        """Keep many claims alive at once: per claim, True if it was extended
        as ours; False means "not known to be", for `heartbeat` to decide
        one by one. A board that cannot batch says False for all."""
        return [False] * len(claims)

    @abc.abstractmethod
    def consume(self, claim: Claim) -> None:
        """The operation ended: remove its job."""

    @abc.abstractmethod
    def release(self, claim: Claim) -> None:
        """Give the job back unfinished (shutdown, unloadable, lost)."""

    @abc.abstractmethod
    def waiting(self) -> list[tuple[str, bool]]:
        """(operation id, claimed) of every job on the board."""

    def wakeup_source(self, receiver: Receiver) -> WakeupSource | None:
        """This board's server's own notices of new and ended jobs, if it has
        any (conductor/wakeups.py); the embedded board's come from the database."""
        return None

    def close(self) -> None:  # noqa: B027 - optional: most boards hold nothing to close
        pass


def job_details(op_id: str, created_at: dt.datetime) -> dict[str, str]:
    """A job's details: the operation it stands for and when that was created."""
    return {"operation_id": op_id, "created_at": created_at.isoformat()}


def job_created(details: dict[str, Any]) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(details["created_at"])
    except (KeyError, TypeError, ValueError):
        return utcnow()


def job_age(job: Any) -> tuple[str, int]:
    """Sort key: oldest operation first, then the board's own sequence."""
    created = job.details.get("created_at") if isinstance(job.details, dict) else None
    return (created if isinstance(created, str) else "", getattr(job, "sequence", 0))
