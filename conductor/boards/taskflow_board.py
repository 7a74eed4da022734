"""taskflow's jobboards with what taskflow 6.5 leaves to the caller answered:

- claims carry an expiry and are kept alive by the service's heartbeat
  thread (`heartbeat`), never by an engine listener, so a step longer than
  the expiry does not lose the claim;
- jobs are offered oldest operation first (`created_at`, then the board's
  sequence); stock Redis listings come newest-first;
- one dispatch per claim: `claim_next` claims one job, `claim_batch` up to N
  from one listing (a listing reads every job: at 1,000 waiting, listing once
  per claim cost the service loop 20 s of CPU for a burst); the service
  dispatches each claim as one operation;
- nothing is ever trashed: a job the conductor cannot load is released and
  reported on the operation (see conductor/service.py).

On etcd a claim is a key under a lease of `claim_expiry` seconds that the
heartbeat refreshes; on ZooKeeper an ephemeral node that lives as long as the
conductor's session, whose timeout is `claim_expiry`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

from redis import exceptions as redis_exc
from taskflow import exceptions as tf_exc

from conductor.boards import sources
from conductor.boards.base import JOB_NAME, Board, Claim, WakeupSource, job_age, job_details
from persistence.notify import Receiver

LOG = logging.getLogger(__name__)


class TaskflowBoard(Board):
    """A taskflow jobboard with expiring claims, oldest-first and no trashing."""

    def __init__(self, board: Any, who: str, claim_expiry: float) -> None:
        self.board, self.who, self.expiry = board, who, claim_expiry
        self._claim_takes_expiry = not board.__class__.__name__.startswith("ZookeeperJobBoard")

    def post(self, op_id: str, created_at: dt.datetime) -> None:
        self.post_missing([(op_id, created_at)])

    def post_missing(self, ops: list[tuple[str, dt.datetime]]) -> None:
        """One listing for all: on ZooKeeper and etcd listing reads every job."""
        if not ops:
            return
        posted = {j.details.get("operation_id") for j in self._jobs()}
        for op_id, created_at in ops:
            if op_id not in posted:
                with board_errors():
                    self.board.post(JOB_NAME, details=job_details(op_id, created_at))

    def _jobs(self) -> list[Any]:
        with board_errors():
            return list(self.board.iterjobs(ensure_fresh=True))

    def _unclaimed(self) -> list[Any]:
        with board_errors():
            return list(self.board.iterjobs(only_unclaimed=True, ensure_fresh=True))

    def claim_next(self, skip: set[str]) -> Claim | None:
        claims = self.claim_batch(skip, 1)
        return claims[0] if claims else None

    def claim_batch(self, skip: set[str], limit: int) -> list[Claim]:
        claims: list[Claim] = []
        jobs = [j for j in self._unclaimed() if j.details.get("operation_id") not in skip]
        for job in sorted(jobs, key=job_age):
            if len(claims) >= limit:
                break
            op_id = job.details.get("operation_id")
            if not isinstance(op_id, str):
                LOG.warning("job %s names no operation (details %r): kept, not run", job.uuid, job.details)
                continue
            try:
                with board_errors():
                    if self._claim_takes_expiry:
                        self.board.claim(job, self.who, expiry=self.expiry)
                    else:
                        self.board.claim(job, self.who)
            except (tf_exc.UnclaimableJob, tf_exc.NotFound):
                continue  # another conductor was faster
            except tf_exc.JobFailure:
                if not claims:
                    raise
                break  # the board went away: dispatch what is claimed already
            claims.append(Claim(op_id, job))
        return claims

    def heartbeat(self, claim: Claim) -> bool:
        with board_errors():
            try:
                owner = self.board.find_owner(claim.job)
            except (TypeError, tf_exc.NotFound):
                owner = None
            if owner != self.who:
                return False
            if self._claim_takes_expiry:
                claim.job.extend_expiry(self.expiry)
        return True

    def consume(self, claim: Claim) -> None:
        try:
            with board_errors():
                self.board.consume(claim.job, self.who)
        except (tf_exc.NotFound, tf_exc.JobFailure) as e:
            LOG.info("job of operation %s already gone or not ours: %s", claim.op_id, e)

    def release(self, claim: Claim) -> None:
        try:
            with board_errors():
                self.board.abandon(claim.job, self.who)
        except (tf_exc.NotFound, tf_exc.JobFailure) as e:
            LOG.info("claim on operation %s already gone or not ours: %s", claim.op_id, e)

    def waiting(self) -> list[tuple[str, bool]]:
        with board_errors():
            return [(j.details.get("operation_id"), j.state == "CLAIMED") for j in sorted(self._jobs(), key=job_age)]

    def wakeup_source(self, receiver: Receiver) -> WakeupSource | None:
        kind = self.board.__class__.__name__
        if kind.startswith("Zookeeper"):
            return sources.ZookeeperSource(self, receiver)
        if kind.startswith("Etcd"):
            return sources.EtcdSource(self, receiver)
        return None

    def close(self) -> None:
        close_quietly(self.board)


def close_quietly(board: Any) -> None:
    """Close a taskflow board; closing one whose server is gone must not fail shutdown."""
    try:
        board.close()
    except Exception:  # noqa: BLE001
        LOG.debug("closing the jobboard failed", exc_info=True)


@contextlib.contextmanager
def board_errors() -> Iterator[None]:
    """Connection trouble of any backend surfaces as taskflow's JobFailure."""
    try:
        yield
    except (OSError, redis_exc.RedisError) as e:
        raise tf_exc.JobFailure(f"jobboard unreachable: {e}") from e
