"""Boards: where submitted operations wait until a conductor claims them.

The operation row is the source of truth; a job only names the operation id
and its creation time (no parameters, no secrets). Two boards:

* `EmbeddedBoard` (no `[conductor] jobboard`): the operations table itself;
  claiming is taking ownership of a free operation, as `resume` does.
* `TaskflowBoard`: taskflow's jobboards (redis://, zookeeper://, etcd://),
  with what taskflow 6.5 leaves to the caller answered here:

  - claims carry an expiry and are kept alive by the service's heartbeat
    thread (`heartbeat`), never by an engine listener, so a step longer than
    the expiry does not lose the claim;
  - jobs are offered oldest operation first (`created_at`, then the board's
    sequence); stock Redis listings come newest-first;
  - one dispatch per claim: `claim_next` claims one job, `claim_batch` up
    to N from one listing (a listing reads every job: at 1,000 waiting,
    listing once per claim cost the service loop 20 s of CPU for a burst);
    the service dispatches each claim as one operation;
  - nothing is ever trashed: a job the conductor cannot load is released and
    reported on the operation (see conductor/service.py).

  On Redis a job's key is the operation id, so posting is idempotent: a job
  lost with a Redis restart is simply posted again (`post`), by its running
  owner's heartbeat or by any conductor's reconciliation. On etcd a claim is
  a key under a lease of `claim_expiry` seconds that the heartbeat refreshes;
  on ZooKeeper an ephemeral node that lives as long as the conductor's
  session, whose timeout is `claim_expiry`.
"""
from __future__ import annotations

import abc
import datetime as dt
import importlib.util
import logging
import threading
from dataclasses import dataclass, field
from urllib import parse

import sqlalchemy as sa
from oslo_config import cfg
from redis import exceptions as redis_exc
from taskflow import exceptions as tf_exc
from taskflow.jobs import base as jobs_base
from taskflow.jobs.backends import impl_redis
from taskflow.utils import misc

from computeflow.errors import ComputeflowError
from conductor import ownership
from persistence import notify, operations
from persistence.models import Operation, utcnow
from persistence.session import Database

LOG = logging.getLogger(__name__)


JOB_NAME = "computeflow-operation"
_SCHEMES = {"redis": None, "zookeeper": "kazoo", "etcd": "etcd3gw"}


class JobboardError(ComputeflowError):
    """The jobboard URL is wrong or its backend cannot be used."""


@dataclass
class Claim:
    """A job this conductor holds; `lost` is set when the heartbeat finds it gone."""

    op_id: str
    job: object | None = None
    lost: threading.Event = field(default_factory=threading.Event)


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

    def close(self) -> None:  # noqa: B027 - optional: most boards hold nothing to close
        pass


class EmbeddedBoard(Board):
    """No server: the operations table is the board, ownership is the claim."""

    embedded = True

    def __init__(self, db: Database) -> None:
        self.db = db

    def post(self, op_id: str, created_at: dt.datetime) -> None:
        pass  # the committed operation row is the job

    def claim_next(self, skip: set[str]) -> Claim | None:
        now = utcnow()
        with self.db.session() as s:
            for op in operations.resumable(s):
                free = (op.owner is None or op.lease_expires_at is None
                        or op.lease_expires_at < now or ownership.is_dead(op.owner))
                if free and op.id not in skip:
                    return Claim(op.id)
        return None

    def heartbeat(self, claim: Claim) -> bool:
        return True  # the runner's LeaseKeeper renews the operation's lease

    def consume(self, claim: Claim) -> None:
        pass

    def release(self, claim: Claim) -> None:
        pass

    def waiting(self) -> list[tuple[str, bool]]:
        with self.db.session() as s:
            return [(op.id, op.owner is not None) for op in operations.resumable(s)]


class TaskflowBoard(Board):
    """A taskflow jobboard with expiring claims, oldest-first and no trashing."""

    def __init__(self, board, who: str, claim_expiry: float) -> None:
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
                with _redis_errors():
                    self.board.post(JOB_NAME, details=_details(op_id, created_at))

    def _jobs(self) -> list:
        with _redis_errors():
            return list(self.board.iterjobs(ensure_fresh=True))

    def _unclaimed(self) -> list:
        with _redis_errors():
            return list(self.board.iterjobs(only_unclaimed=True, ensure_fresh=True))

    def claim_next(self, skip: set[str]) -> Claim | None:
        claims = self.claim_batch(skip, 1)
        return claims[0] if claims else None

    def claim_batch(self, skip: set[str], limit: int) -> list[Claim]:
        claims: list[Claim] = []
        jobs = [j for j in self._unclaimed() if j.details.get("operation_id") not in skip]
        for job in sorted(jobs, key=_age):
            if len(claims) >= limit:
                break
            op_id = job.details.get("operation_id")
            if not isinstance(op_id, str):
                LOG.warning("job %s names no operation (details %r): kept, not run", job.uuid, job.details)
                continue
            try:
                with _redis_errors():
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
        with _redis_errors():
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
            with _redis_errors():
                self.board.consume(claim.job, self.who)
        except (tf_exc.NotFound, tf_exc.JobFailure) as e:
            LOG.info("job of operation %s already gone or not ours: %s", claim.op_id, e)

    def release(self, claim: Claim) -> None:
        try:
            with _redis_errors():
                self.board.abandon(claim.job, self.who)
        except (tf_exc.NotFound, tf_exc.JobFailure) as e:
            LOG.info("claim on operation %s already gone or not ours: %s", claim.op_id, e)

    def waiting(self) -> list[tuple[str, bool]]:
        with _redis_errors():
            return [(j.details.get("operation_id"), j.state == "CLAIMED")
                    for j in sorted(self._jobs(), key=_age)]

    def close(self) -> None:
        _close_quietly(self.board)


def _close_quietly(board) -> None:
    """Close a taskflow board; closing one whose server is gone must not fail shutdown."""
    try:
        board.close()
    except Exception:  # noqa: BLE001
        LOG.debug("closing the jobboard failed", exc_info=True)


# Compare-and-extend: a claim's expiry is extended only while we own it.
_EXTEND_IF_OWNER = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("pexpire", KEYS[1], ARGV[2])
end
return 0
"""


class RedisBoard(TaskflowBoard):
    """taskflow's Redis jobboard, keyed by operation id, listed in one round trip."""

    def __init__(self, board: impl_redis.RedisJobBoard, who: str, claim_expiry: float) -> None:
        super().__init__(board, who, claim_expiry)
        self._extend = board._client.register_script(_EXTEND_IF_OWNER)
        # Pub/sub channels of the wake-ups (conductor/wakeups.py), in the board's namespace.
        self.channels = {name: board.join(name) for name in notify.CHANNELS}

    def post_missing(self, ops: list[tuple[str, dt.datetime]]) -> None:
        Board.post_missing(self, ops)  # posting is idempotent here, one round trip each

    def post(self, op_id: str, created_at: dt.datetime) -> None:
        b = self.board
        posting = jobs_base.format_posting(op_id, JOB_NAME, created_on=utcnow(),
                                           details=_details(op_id, created_at))
        with _redis_errors():
            posting["sequence"] = b._client.incr(b.sequence_key)
            b._client.hsetnx(b.listings_key, op_id.encode(), b._dumps(posting))
            b._client.publish(self.channels[notify.JOBS], op_id)

    def consume(self, claim: Claim) -> None:
        super().consume(claim)
        self._announce(notify.ENDED, claim.op_id)

    def release(self, claim: Claim) -> None:
        super().release(claim)
        self._announce(notify.JOBS, claim.op_id)  # free again: another conductor may take it

    def _announce(self, channel: str, op_id: str) -> None:
        try:
            with _redis_errors():
                self.board._client.publish(self.channels[channel], op_id)
        except tf_exc.JobFailure as e:  # receivers poll too: a lost notice only delays them
            LOG.info("operation %s: %s not announced on the jobboard: %s", op_id, channel, e)

    def _unclaimed(self) -> list:
        b = self.board
        with _redis_errors():
            jobs = b._fetch_jobs()
            pipe = b._client.pipeline(transaction=False)
            for j in jobs:
                pipe.exists(j.owner_key)
            owned = pipe.execute()
        return [j for j, o in zip(jobs, owned, strict=True) if not o]

    def extend_all(self, claims: list[Claim]) -> list[bool]:
        """One round trip for every claim (a pipeline of compare-and-extend):
        a thousand claims extended one by one took longer than their expiry
        in a busy process."""
        ms = int(self.expiry * 1000)
        with _redis_errors():
            pipe = self.board._client.pipeline(transaction=False)
            for claim in claims:
                self._extend(keys=[claim.job.owner_key], args=[self.who.encode(), ms], client=pipe)
            return [bool(r) for r in pipe.execute()]

    def heartbeat(self, claim: Claim) -> bool:
        """Extend our claim; after a Redis restart lost it, post and claim it again."""
        job, ms = claim.job, int(self.expiry * 1000)
        with _redis_errors():
            if self._extend(keys=[job.owner_key], args=[self.who.encode(), ms]):
                return True
            if self.board._client.get(job.owner_key) is not None:
                return False  # someone else holds it now
            self.post(claim.op_id, _created(job.details))
            try:
                self.board.claim(job, self.who, expiry=self.expiry)
            except (tf_exc.UnclaimableJob, tf_exc.NotFound):
                return False
        LOG.warning("claim on operation %s had vanished (Redis restarted?); claimed again", claim.op_id)
        return True


def _details(op_id: str, created_at: dt.datetime) -> dict:
    return {"operation_id": op_id, "created_at": created_at.isoformat()}


def _created(details: dict) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(details["created_at"])
    except (KeyError, TypeError, ValueError):
        return utcnow()


def _age(job) -> tuple:
    created = job.details.get("created_at") if isinstance(job.details, dict) else None
    return (created if isinstance(created, str) else "", getattr(job, "sequence", 0))


class _redis_errors:
    """Connection trouble of any backend surfaces as taskflow's JobFailure."""

    def __enter__(self):
        return self

    def __exit__(self, et, e, tb):
        if et is not None and issubclass(et, (OSError, redis_exc.RedisError)):
            raise tf_exc.JobFailure(f"jobboard unreachable: {e}") from e
        return False


def open_board(conf: cfg.ConfigOpts, who: str, db: Database) -> Board:
    """The board `[conductor] jobboard` names; a clear JobboardError otherwise."""
    url = conf.conductor.jobboard
    if not url:
        return EmbeddedBoard(db)
    scheme = parse.urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise JobboardError(f"[conductor] jobboard {url!r}: unknown scheme {scheme!r} "
                            f"(known: {', '.join(s + '://' for s in _SCHEMES)})")
    module = _SCHEMES[scheme]
    if module and importlib.util.find_spec(module) is None:
        raise JobboardError(f"[conductor] jobboard {scheme}:// needs the Python package "
                            f"{module!r}, which is not installed (pip install {module})")
    _, board_conf = misc.extract_driver_and_conf(url, "board")
    if scheme == "redis":
        board_conf.setdefault("socket_timeout", 5)
        board_conf.setdefault("socket_connect_timeout", 3)
        board = impl_redis.RedisJobBoard("computeflow", board_conf)
    else:
        from taskflow.jobs import backends
        board = backends.fetch("computeflow", _server_conf(scheme, url, board_conf,
                                                           conf.conductor.claim_expiry))
    try:
        board.connect()
    except (tf_exc.JobFailure, tf_exc.TaskFlowException, OSError) as e:
        _close_quietly(board)  # a ZooKeeper client would go on retrying in its threads
        raise JobboardError(f"[conductor] jobboard {url}: cannot connect: {e}") from None
    expiry = conf.conductor.claim_expiry
    return RedisBoard(board, who, expiry) if scheme == "redis" else TaskflowBoard(board, who, expiry)


def _server_conf(scheme: str, url: str, board_conf: dict, claim_expiry: float) -> dict:
    """taskflow 6.5's ZooKeeper and etcd boards ignore the host in their URL
    (they read `hosts`, resp. `host` and `port`, and fall back to localhost):
    name the server explicitly. On ZooKeeper a claim is an ephemeral node that
    lives as long as the client's session, so the session timeout is the
    claim expiry there."""
    where = parse.urlsplit(url)
    conf = {k: v for k, v in board_conf.items() if k not in ("hostname", "port")}
    conf["board"] = scheme
    if scheme == "zookeeper":
        conf.setdefault("hosts", where.netloc or "localhost:2181")
        conf.setdefault("timeout", float(claim_expiry))
    else:
        conf.setdefault("host", where.hostname or "localhost")
        conf.setdefault("port", where.port or 2379)
    return conf


def mark_unloadable(db: Database, op_id: str, reason: str | None) -> None:
    """Report, on the operation itself, why this conductor left its job alone."""
    with db.session() as s:
        s.execute(sa.update(Operation)
                  .where(Operation.id == op_id, Operation.state.in_(operations.ACTIVE_STATES))
                  .values(error=reason))


def release_ownership(db: Database, op_id: str, owner: str) -> None:
    """A suspended operation is free at once for the next conductor."""
    with db.session() as s:
        if s.execute(sa.update(Operation)
                     .where(Operation.id == op_id, Operation.owner == owner,
                            Operation.state.in_(operations.ACTIVE_STATES))
                     .values(owner=None, lease_expires_at=None)).rowcount == 1:
            notify.announce(s, notify.JOBS, op_id)


def orphans(db: Database) -> list[tuple[str, dt.datetime]]:
    """Active operations nobody holds: free, or whose owner's lease lapsed."""
    with db.session() as s:
        rows = s.execute(sa.select(Operation.id, Operation.created_at).where(
            Operation.state.in_(operations.ACTIVE_STATES),
            sa.or_(Operation.owner.is_(None), Operation.lease_expires_at < utcnow()))
            .order_by(Operation.created_at))
        return [(r.id, r.created_at) for r in rows]
