"""taskflow's Redis jobboard, keyed by operation id, listed in one round trip.

A job's key is the operation id, so posting is idempotent: a job lost with a
Redis restart is simply posted again (`post`), by its running owner's
heartbeat or by any conductor's reconciliation. Posting, consuming and
releasing publish on the board's wake-up channels (conductor/wakeups.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from taskflow import exceptions as tf_exc
from taskflow.jobs import base as jobs_base
from taskflow.jobs.backends import impl_redis

from conductor.boards import taskflow_internals as internals
from conductor.boards import sources
from conductor.boards.base import JOB_NAME, Board, Claim, WakeupSource, job_created, job_details
from conductor.boards.taskflow_board import TaskflowBoard, board_errors
from persistence import notify
from persistence.models import utcnow

LOG = logging.getLogger(__name__)

#: Job sequence numbers reserved per round trip (RedisBoard._next_sequence).
SEQUENCE_BLOCK = 1000

# Compare-and-extend: a claim's expiry is extended only while we own it.
_EXTEND_IF_OWNER = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("pexpire", KEYS[1], ARGV[2])
end
return 0
"""


class RedisBoard(TaskflowBoard):
    def __init__(self, board: impl_redis.RedisJobBoard, who: str, claim_expiry: float) -> None:
        super().__init__(board, who, claim_expiry)
        self._extend = self.client.register_script(_EXTEND_IF_OWNER)
        self._sequence_lock = threading.Lock()
        self._sequence_next = self._sequence_end = 0  # the block reserved: [next, end)
        # Pub/sub channels of the wake-ups (conductor/wakeups.py), in the board's namespace.
        self.channels = {name: board.join(name) for name in notify.CHANNELS}

    @property
    def client(self) -> Any:
        """The board's Redis client (taskflow makes a new one on each connect)."""
        return internals.redis_client(self.board)

    def wakeup_source(self, receiver: notify.Receiver) -> WakeupSource | None:
        return sources.RedisSource(self, receiver)

    def post_missing(self, ops: list[tuple[str, dt.datetime]]) -> None:
        Board.post_missing(self, ops)  # posting is idempotent here, one round trip each

    def post(self, op_id: str, created_at: dt.datetime) -> None:
        """One round trip: the listing and its announcement pipelined, the
        job's sequence number from a block this process reserved."""
        b = self.board
        posting = jobs_base.format_posting(op_id, JOB_NAME, created_on=utcnow(), details=job_details(op_id, created_at))
        with board_errors():
            posting["sequence"] = self._next_sequence()
            pipe = self.client.pipeline(transaction=False)
            pipe.hsetnx(b.listings_key, op_id.encode(), internals.redis_encode(b, posting))
            pipe.publish(self.channels[notify.JOBS], op_id)
            pipe.execute()

    def _next_sequence(self) -> int:
        """A job sequence number unique on the board: taskflow takes one per
        post from a counter (a round trip each); this takes SEQUENCE_BLOCK at
        a time. Numbers then follow posting order within a process only,
        which nothing relies on: jobs are claimed oldest operation first
        (base.job_age), the sequence only breaks ties."""
        with self._sequence_lock:
            if self._sequence_next >= self._sequence_end:
                self._sequence_end = int(self.client.incrby(self.board.sequence_key, SEQUENCE_BLOCK)) + 1
                self._sequence_next = self._sequence_end - SEQUENCE_BLOCK
            self._sequence_next += 1
            return self._sequence_next - 1

    def consume(self, claim: Claim) -> None:
        super().consume(claim)
        self._announce(notify.ENDED, claim.op_id)

    def release(self, claim: Claim) -> None:
        super().release(claim)
        self._announce(notify.JOBS, claim.op_id)  # free again: another conductor may take it

    def _announce(self, channel: str, op_id: str) -> None:
        try:
            with board_errors():
                self.client.publish(self.channels[channel], op_id)
        except tf_exc.JobFailure as e:  # receivers poll too: a lost notice only delays them
            LOG.info("operation %s: %s not announced on the jobboard: %s", op_id, channel, e)

    def _unclaimed(self) -> list[Any]:
        with board_errors():
            jobs = internals.redis_jobs(self.board)
            pipe = self.client.pipeline(transaction=False)
            for j in jobs:
                pipe.exists(j.owner_key)
            owned = pipe.execute()
        return [j for j, o in zip(jobs, owned, strict=True) if not o]

    def extend_all(self, claims: list[Claim]) -> list[bool]:
        """One round trip for every claim (a pipeline of compare-and-extend):
        a thousand claims extended one by one took longer than their expiry
        in a busy process."""
        ms = int(self.expiry * 1000)
        with board_errors():
            pipe = self.client.pipeline(transaction=False)
            for claim in claims:
                self._extend(keys=[claim.job.owner_key], args=[self.who.encode(), ms], client=pipe)
            return [bool(r) for r in pipe.execute()]

    def heartbeat(self, claim: Claim) -> bool:
        """Extend our claim; if it is gone and nobody else holds it (it expired
        before a late heartbeat, or a Redis restart lost it), post and claim it again."""
        job, ms = claim.job, int(self.expiry * 1000)
        with board_errors():
            if self._extend(keys=[job.owner_key], args=[self.who.encode(), ms]):
                return True
            if self.client.get(job.owner_key) is not None:
                return False  # someone else holds it now
            self.post(claim.op_id, job_created(job.details))
            try:
                self.board.claim(job, self.who, expiry=self.expiry)
            except (tf_exc.UnclaimableJob, tf_exc.NotFound):
                return False
        LOG.warning(
            "claim on operation %s had expired or vanished (a late heartbeat, or Redis restarted); claimed again",
            claim.op_id,
        )
        return True
