"""`computeflow conductor`: the long-running service that claims and runs jobs.

One loop claims jobs, up to CLAIM_BATCH per listing of the board (exactly
one dispatch per claim), while fewer than `max_operations` run; each claimed
operation runs on its own thread through the same Runner as the embedded mode.
A heartbeat thread keeps every claim alive independently of how long a step takes; a claim found lost
suspends that operation's engine (the database's fencing stops any write the
engine still tries). Holding the claim is what entitles a conductor to take
the operation over from a previous owner.

SIGTERM (or SIGINT): stop claiming, suspend every engine (taskflow finishes
the running steps and persists them), release ownership and claims, exit 0;
another conductor resumes the operations where they stopped.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from taskflow import exceptions as tf_exc, states

from conductor import boards, memory, ownership, wakeups
from conductor.admission import Admission
from conductor.api import Conductor
from conductor.drift_watch import DriftWatch, check_apply_kinds
from conductor.boards import Board, Claim
from conductor.runner import LostOwnership, NotOwner, Runner, WaitingForHostSlot
from flows import catalog
from flows.elastic_pool import ElasticThreadPool
from persistence import notify, operations
from persistence.errors import PersistenceError

LOG = logging.getLogger(__name__)
UNLOADABLE = "not loadable here:"  # the reason follows, so `ops list` shows it
_DB_ERRORS = (tf_exc.StorageFailure, PersistenceError, sa_exc.SQLAlchemyError, OSError)
#: Jobs claimed from one listing of the board, and operations of this
#: process starting at once (claimed, flow not running yet): no new claims
#: beyond that. A listing reads every job, so claiming one per listing made
#: a 1,000-job burst quadratic; claiming the whole burst at once put 1,000
#: flows on the CPU together, where the flow writes' pool (16 connections)
#: left some waiting past its 30 s timeout. Starting is the costly part of
#: a run; a started flow that waits costs nothing.
CLAIM_BATCH = 32
#: Seconds before looking again when the process's CPU is behind (conductor/admission.py).
ADMISSION_RETRY = 0.02


class _ServiceRunner(Runner):
    """The Runner, plus what a service needs: each engine is registered so that
    it can be suspended, and a suspended flow leaves its operation free."""

    def __init__(self, *args, service: ConductorService, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.service = service

    def _flow_listener(self, op_id: str, *rest):
        inner = super()._flow_listener(op_id, *rest)

        def on_flow_state(state: str, details: dict) -> None:
            if state == states.RUNNING:
                engine = details["engine"]
                self.service._engines[op_id] = engine
                self.service._started(op_id)
                claim = self.service._claims.get(op_id)
                if self.service.stopping or (claim is not None and claim.lost.is_set()):
                    engine.suspend()
            inner(state, details)

        return on_flow_state

    def _record_outcome(self, op_id: str, *rest) -> None:
        flow_state = rest[-2]  # (..., flow_state, error)
        if flow_state == states.SUSPENDED:
            LOG.info("operation %s suspended at a step boundary; left for the next conductor", op_id)
            with self.rt.db.session() as s:
                operations.release_ownership(s, op_id, self.owner)
            return
        super()._record_outcome(op_id, *rest)


#: `serve`'s exit status when the service stopped to restart itself in place
#: (`recycle_rss_growth`); a process that cannot exec exits with it, and a
#: supervisor restarts it.
EXIT_RECYCLE = 75


class ConductorService:
    def __init__(self, conductor: Conductor, board: Board, *, may_recycle: bool = False) -> None:
        """`may_recycle`: this service is its process (the `conductor`
        command), so it may ask to be restarted in place (EXIT_RECYCLE)."""
        opts = conductor.conf.conductor
        self.c, self.board, self.who = conductor, board, conductor.owner
        self.max_operations, self.expiry = opts.max_operations, opts.claim_expiry
        self.poll = opts.poll_interval  # first retry of a job waiting for a host slot
        self.admission = Admission(opts.admission_lag_ms / 1000)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.wakeups: wakeups.Wakeups | None = None  # opened by serve()
        self._claims: dict[str, Claim] = {}
        #: Claimed operations whose flow is not running yet (see _claim_some).
        self._starting: set[str] = set()
        self._engines: dict[str, object] = {}
        self._skip_until: dict[str, float] = {}
        #: Operations refused for a host slot (WaitingForHostSlot), with their tries.
        self._slot_waiting: dict[str, int] = {}
        self._slot_retry_cap = min(2.0, conductor.lease_seconds / 4)
        self._ran_since_release = False
        self._recycle_growth = opts.recycle_rss_growth if may_recycle else 0.0
        #: Resident MB at the first idle moment after work (the recycling reference).
        self._idle_rss: float | None = None
        self.recycle_requested = False
        self._pool = ElasticThreadPool(self.max_operations, name="operation", idle_seconds=opts.idle_thread_seconds)
        self.drift = DriftWatch(conductor, opts.reconcile_interval, opts.reconcile_apply)
        self.runner = _ServiceRunner(
            conductor.rt,
            self.who,
            lease_seconds=conductor.lease_seconds,
            executor=conductor._executor,
            leases=conductor._leases,
            slots=conductor.runner.slots,
            backend=conductor.runner.backend,
            service=self,
        )

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, *_signal) -> None:
        """Signal-safe: ask the loop to wind down."""
        self._stop.set()
        self._wake.set()

    def _stop_signal(self, *_signal) -> None:
        """SIGTERM/SIGINT: stop for good, even if a restart was on its way."""
        self.recycle_requested = False
        self.stop()

    # -- the loop ------------------------------------------------------------
    def serve(self) -> int:
        if threading.current_thread() is threading.main_thread():  # tests serve from a thread
            signal.signal(signal.SIGTERM, self._stop_signal)
            signal.signal(signal.SIGINT, self._stop_signal)
            memory.unblock_stop_signals()
        self.wakeups = wakeups.open_wakeups(self.c.conf, self.c.db, self.board)
        self.wakeups.on_jobs(self._wake)  # a notice ends the wait below at once
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        watch = threading.Thread(target=self.drift.run, args=(self._stop,), name="drift-watch", daemon=True)
        watch.start()
        housekeeping = [beat, watch]
        if not self.board.embedded:
            repost = threading.Thread(target=self._reconcile_loop, name="board-reconcile", daemon=True)
            repost.start()
            housekeeping.append(repost)
        LOG.info(
            "conductor %s serving (%s, up to %d operations)",
            self.who,
            "embedded" if self.board.embedded else self.c.conf.conductor.jobboard,
            self.max_operations,
        )
        while not self.stopping:
            self._wake.clear()
            try:
                if len(self._claims) < self.max_operations and len(self._starting) < CLAIM_BATCH:
                    if not self.admission.has_room(busy=bool(self._claims)):
                        self._stop.wait(ADMISSION_RETRY)  # the CPU is behind: the jobs wait on the board
                        continue
                    if self._claim_some():
                        continue
            except Exception:  # the loop must outlive any outage: a dead loop strands its claims
                LOG.exception("conductor loop error; retrying")
                self._stop.wait(min(self.expiry / 3, 2.0))
            self._wake.wait(self._next_look())
        self._shutdown()
        for thread in housekeeping:
            thread.join()
        if self.recycle_requested and threading.current_thread() is threading.main_thread():
            memory.block_stop_signals()  # from here a stop signal waits for the restarted process
        return EXIT_RECYCLE if self.recycle_requested else 0

    def _next_look(self) -> float:
        """Until a notice, the safety-net poll, or the retry of a job waiting
        for a host slot (a slot freed by another conductor is announced as an
        operation's end, not as a job), whichever comes first."""
        assert self.wakeups is not None  # opened by serve()
        interval = self.wakeups.interval(notify.JOBS)
        # worker threads change both dicts: read a snapshot
        retries = [t for op in list(self._slot_waiting) if (t := self._skip_until.get(op)) is not None]
        if retries:
            interval = max(0.0, min(interval, min(retries) - time.monotonic()))
        return interval

    def _claim_some(self) -> bool:
        """Claim up to CLAIM_BATCH jobs (within max_operations) and dispatch each."""
        now = time.monotonic()
        skip = set(self._claims) | {k for k, t in self._skip_until.items() if t > now}
        room = min(CLAIM_BATCH - len(self._starting), self.max_operations - len(self._claims))
        try:
            claims = self.board.claim_batch(skip, room)
        except (tf_exc.JobFailure, *_DB_ERRORS) as e:
            LOG.warning("cannot reach the jobboard or database: %s; retrying", e)
            self._stop.wait(min(self.expiry / 3, 2.0))
            return False
        for claim in claims:
            self._ran_since_release = True  # set here, not sampled: a burst may fit between two heartbeats
            self._claims[claim.op_id] = claim
            self._starting.add(claim.op_id)
            fut = self._pool.submit(self._work, claim)
            fut.add_done_callback(lambda _f: self._wake.set())
        return bool(claims)

    def _started(self, op_id: str) -> None:
        """The operation's flow runs (or its run ended): room for another claim."""
        if op_id in self._starting:
            self._starting.discard(op_id)
            self._wake.set()

    def _reconcile_loop(self) -> None:
        """Reconcile the jobboard at start and every claim_expiry / 2. On a
        thread of its own: in the claim loop it ran at the first wake-up
        after a quiet spell, so the operation that woke the loop waited for
        its query before being claimed."""
        while True:
            try:
                self._reconcile()
            except Exception:  # the thread must outlive any surprise, as the loop does
                LOG.exception("reconciling the jobboard failed; retrying")
            if self._stop.wait(self.expiry / 2):
                return

    def _reconcile(self) -> None:
        """Post every active operation nobody holds (its job was lost with a
        Redis restart, or its submitter died before posting)."""
        try:
            with self.c.db.session() as s:
                unowned = operations.unowned(s)
            missing = [(op_id, created) for op_id, created in unowned if op_id not in self._claims]
            self.board.post_missing(missing)
        except (tf_exc.JobFailure, *_DB_ERRORS) as e:
            LOG.warning("reconciling the jobboard failed: %s", e)
            return
        if missing:
            self._wake.set()  # not every board announces a post

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.expiry / 3):
            self._beat()
            try:
                self._release_memory_after_burst()
            except Exception:  # a dead heartbeat would let every claim expire
                LOG.exception("releasing what the last burst held failed; the heartbeat goes on")
        self._beat()

    def _release_memory_after_burst(self) -> None:
        """Once nothing runs and the idle threads have ended, hand what the
        last burst freed back to the system (conductor/memory.py), and the
        database connections its pools kept for it back to the server."""
        if self._claims or self._pool.threads or self.c._executor.threads:
            return
        if self._ran_since_release:
            self._ran_since_release = False
            self.c.release_idle_connections()
            memory.release_free_memory()
            self._recycle_if_grown()

    def _recycle_if_grown(self) -> None:
        """Stop to be restarted in place when the memory the release could
        not return exceeds `recycle_rss_growth` (conductor/memory.py says why)."""
        rss = memory.resident_mb() if self._recycle_growth > 0 else None
        if rss is None:
            return
        if self._idle_rss is None:
            self._idle_rss = rss
            LOG.info(
                "first idle moment with %.0f MB resident (recycle_rss_growth = %g%% over it)", rss, self._recycle_growth
            )
        elif rss > self._idle_rss * (1 + self._recycle_growth / 100) and not self.stopping:
            LOG.info(
                "idle after a burst with %.0f MB resident, %.0f%% over %.0f MB at its first idle moment "
                "(recycle_rss_growth = %g): restarting in place",
                rss,
                100 * (rss / self._idle_rss - 1),
                self._idle_rss,
                self._recycle_growth,
            )
            self.recycle_requested = True
            self.stop()

    def _beat(self) -> None:
        claims = list(self._claims.values())
        try:
            extended = self.board.extend_all(claims)
        except Exception as e:  # noqa: BLE001 - then one by one, as below
            LOG.warning("extending %d claims at once failed: %s", len(claims), e)
            extended = [False] * len(claims)
        for claim, done in zip(claims, extended, strict=True):
            if done or self._claims.get(claim.op_id) is not claim:
                continue  # extended; or ended meanwhile: its job is consumed, never claim it again
            try:
                mine = self.board.heartbeat(claim)
            except Exception as e:  # unknown is not lost: keep running, fencing protects
                LOG.warning("heartbeat for operation %s failed: %s", claim.op_id, e)
                continue
            if not mine and not claim.lost.is_set():
                claim.lost.set()
                LOG.error("lost the claim on operation %s; suspending it", claim.op_id)
                self._suspend(claim.op_id)

    def _suspend(self, op_id: str) -> None:
        engine = self._engines.get(op_id)
        if engine is not None:
            try:
                engine.suspend()
            except Exception as e:  # e.g. fenced: the write of SUSPENDING is refused
                LOG.info("suspending operation %s: %s", op_id, e)

    def _shutdown(self) -> None:
        LOG.info("conductor %s stopping: suspending %d operations", self.who, len(self._engines))
        for op_id in list(self._engines):
            self._suspend(op_id)
        self._pool.shutdown(wait=True)
        self.wakeups.close()
        self.board.close()

    # -- one claimed job --------------------------------------------------------
    def _work(self, claim: Claim) -> None:
        slot_tries = self._slot_waiting.pop(claim.op_id, 0)  # put back if refused again
        try:
            self._dispatch(claim, slot_tries)
        except Exception:
            LOG.exception("operation %s: unexpected error; job released", claim.op_id)
            self._release(claim)
        finally:
            self._started(claim.op_id)
            self._engines.pop(claim.op_id, None)
            self._claims.pop(claim.op_id, None)
            if claim.op_id not in self._slot_waiting:  # it ran (or could not): a slot may be free
                for waiter in list(self._slot_waiting):
                    self._skip_until.pop(waiter, None)

    def _dispatch(self, claim: Claim, slot_tries: int = 0) -> None:
        if self.stopping:
            self._release(claim)
            return
        op_id = claim.op_id
        try:
            final = self.runner.run(op_id, admit=self._admit)
        except _Missing:
            LOG.warning("job names operation %s, which does not exist: kept, not run", op_id)
            self._skip_until[op_id] = float("inf")
            self._release(claim)
            return
        except _Ended as e:
            LOG.info("operation %s already ended %s: job consumed, nothing run", op_id, e.state)
            self._consume(claim)
            return
        except _Unloadable as e:
            text = f"{UNLOADABLE} {e.reason} (job kept on the jobboard; conductor {self.who})"
            LOG.error("operation %s %s", op_id, text)
            with self.c.db.session() as s:
                operations.mark_unloadable(s, op_id, text)
            self._skip_until[op_id] = time.monotonic() + 10 * self.expiry
            self._release(claim)
            return
        except WaitingForHostSlot as e:
            self._wait_for_slot(claim, e, slot_tries + 1)
            return
        except NotOwner:
            LOG.info("operation %s is owned elsewhere; job released", op_id)
            self._skip_until[op_id] = time.monotonic() + self.expiry
            self._release(claim)
            return
        except LostOwnership as e:
            LOG.warning("operation %s: %s; another conductor has it", op_id, e)
            self._release(claim)
            return
        except _DB_ERRORS as e:
            LOG.warning("operation %s paused: database unreachable (%s); job released", op_id, e)
            self._release(claim)
            return
        if final.state in operations.FINAL_STATES:
            LOG.info("operation %s %s", op_id, final.state)
            self._consume(claim)
        else:
            self._release(claim)

    def _admit(self, s: Session, op: operations.Operation | None) -> tuple[str, ...]:
        """The service's checks of a claimed job, on the row its run reads
        first (no transaction of their own): raises _Missing, _Ended or
        _Unloadable; else the previous owner, if the run may take it over."""
        if op is None:
            raise _Missing()
        if op.state in operations.FINAL_STATES:
            raise _Ended(op.state)
        reason = unloadable(op)
        if reason:
            raise _Unloadable(reason)
        if op.error and op.error.startswith(UNLOADABLE):
            operations.mark_unloadable(s, op.id, None)  # loadable here: the report is stale
        # Holding the claim entitles us to take over from the previous owner;
        # without a jobboard only a provably dead owner is taken over.
        prev = op.owner if op.owner and op.owner != self.who else None
        return (prev,) if prev and (not self.board.embedded or ownership.is_dead(prev)) else ()

    def _wait_for_slot(self, claim: Claim, e: WaitingForHostSlot, tries: int) -> None:
        """Give the job back; try it again soon, at once when a run of this
        process ends (it may free the slot). Its place in line is in the database."""
        if tries == 1:
            LOG.info("%s", e)
        self._slot_waiting[claim.op_id] = tries
        self._skip_until[claim.op_id] = time.monotonic() + min(self.poll * tries, self._slot_retry_cap)
        self._release(claim)

    def _consume(self, claim: Claim) -> None:
        """The operation ended: forget the claim first, so that a heartbeat
        meanwhile does not take the consumed job for a lost one and post it again."""
        self._claims.pop(claim.op_id, None)
        self.board.consume(claim)

    def _release(self, claim: Claim) -> None:
        try:
            self.board.release(claim)
        except tf_exc.JobFailure as e:
            LOG.warning("releasing operation %s failed (its claim expires anyway): %s", claim.op_id, e)


class _Missing(Exception):
    """The claimed job names no operation."""


class _Ended(Exception):
    """The claimed job's operation has ended: nothing to run."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


class _Unloadable(Exception):
    """This conductor cannot run the operation's flow (see `unloadable`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def unloadable(op: operations.Operation) -> str | None:
    """Why this conductor cannot run the operation's flow (e.g. mid rolling
    upgrade), or None. Such jobs are kept for a conductor that can."""
    try:
        kind = catalog.get(op.kind)
    except KeyError:
        return f"unknown operation kind {op.kind!r}"
    if op.flow_version > kind.version:
        return f"flow version {op.flow_version} is newer than this conductor's {kind.version}"
    module, _, name = kind.factory.rpartition(".")
    try:
        getattr(importlib.import_module(module), name)
    except Exception as e:  # ImportError, AttributeError, or the module's own failure
        return f"flow factory {kind.factory} cannot be imported: {type(e).__name__}: {e}"
    return None


def serve(conductor: Conductor, *, may_recycle: bool = False) -> int:
    check_apply_kinds(conductor.conf.conductor.reconcile_apply)  # before anything is opened
    memory.limit_arenas()  # before the burst's threads exist
    board = boards.open_board(conductor.conf, conductor.owner, conductor.db)
    return ConductorService(conductor, board, may_recycle=may_recycle).serve()
