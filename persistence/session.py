"""One SQLAlchemy engine per database URL, tuned for each dialect.

SQLite (the embedded default) runs in WAL mode with synchronous=FULL so that a
committed step survives power loss, and with a busy timeout so that the
parallel engine's threads wait for each other instead of failing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc as sa_exc
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.orm import Session, sessionmaker

from persistence import notify
from persistence.errors import DatabaseMissing, DatabaseUnreachable

LOG = logging.getLogger(__name__)


def changed(s: Session, statement: sa.Executable, params: dict[str, Any] | None = None) -> int:
    """Rows an UPDATE or DELETE changed: how a guarded write tells whether its
    guard held (a compare-and-set that matched no row lost the race)."""
    result = s.execute(statement, params)
    assert isinstance(result, CursorResult)
    return result.rowcount


def safe_url(url: str | sa.URL) -> str:
    """The URL as it may be shown to a user or logged: password masked."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<unparsable database URL>"


# Errors that mean "the server is not there right now", not "the statement is
# wrong": PostgreSQL's connection-exception (08) and operator-intervention (57P)
# classes; MySQL/MariaDB client errors for a refused, gone or lost connection,
# and the server's "too many connections".
_LOST_SQLSTATE_PREFIXES = ("08", "57P")
_LOST_MYSQL_ERRORS = frozenset({1040, 2003, 2006, 2013, 2055})  # 1040: too many connections
_LOST_PG_MESSAGES = (
    "server closed the connection",
    "connection refused",
    "could not connect",
    "terminating connection",
    "the database system is",
    "connection already closed",
    # The server is up but has no connection slot free (max_connections, or a
    # role's or database's CONNECTION LIMIT): nothing was sent, try again later.
    "too many clients",
    "too many connections",
)


def connection_lost(e: BaseException) -> bool:
    """Whether `e` is the database being unreachable (restart, failover, a
    dropped connection, no pooled connection free within the pool's timeout)
    rather than a fault of the statement: a write that failed so may be done
    again once the server is back."""
    if isinstance(e, sa_exc.TimeoutError):
        return True  # no pooled connection came free in time: nothing was sent
    if not isinstance(e, sa_exc.DBAPIError):
        return False
    if e.connection_invalidated:
        return True
    orig = e.orig
    code = getattr(orig, "pgcode", None)
    if code:
        return bool(code.startswith(_LOST_SQLSTATE_PREFIXES))
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in _LOST_MYSQL_ERRORS
    if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError)) and type(orig).__module__.startswith("psycopg"):
        message = str(orig).lower()
        return any(m in message for m in _LOST_PG_MESSAGES)
    return False


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN (IMMEDIATE) instead of pysqlite.
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def sqlite_file(url: str) -> str | None:
    """The absolute path of a SQLite URL's file; None for anything else
    (another database, an in-memory one, an unparsable URL)."""
    try:
        parsed = sa.make_url(url)
    except sa_exc.ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return os.path.abspath(parsed.database)


def _missing_part(path: str) -> str | None:
    """What is missing of a SQLite file's path (its directory or itself), or None."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        return f"directory {directory}"
    return None if os.path.exists(path) else f"file {path}"


def create_engine(url: str, *, pool_size: int = 10, connect_timeout: int = 5, create: bool = True) -> Engine:
    """Build an engine; raises DatabaseUnreachable for a malformed URL.

    create: a missing SQLite file (and its directory) is created on first
    connect; with create=False it is DatabaseMissing instead, before anything
    is written.
    """
    try:
        parsed = sa.make_url(url)
    except sa_exc.ArgumentError as e:
        raise DatabaseUnreachable("<unparsable database URL>", str(e)) from None
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_use_lifo": True}
    if backend == "sqlite":
        path = sqlite_file(url)
        if path is not None:
            if create:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            elif (missing := _missing_part(path)) is not None:
                raise DatabaseMissing(safe_url(url), missing)
        kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    elif backend == "postgresql":
        kwargs.update(
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"connect_timeout": connect_timeout},
        )
    elif backend in ("mysql", "mariadb"):
        kwargs.update(
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_recycle=3600,
            connect_args={"connect_timeout": connect_timeout},
            isolation_level="READ COMMITTED",
        )
    else:
        raise DatabaseUnreachable(safe_url(url), f"unsupported database type {backend!r}")
    try:
        engine = count_open_connections(sa.create_engine(parsed, **kwargs))
    except (sa_exc.ArgumentError, ImportError) as e:
        raise DatabaseUnreachable(safe_url(url), str(e)) from None
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take the write lock
        # at BEGIN so read-then-write transactions cannot deadlock each other.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


class Database:
    """An engine and a session factory for one database."""

    def __init__(self, url: str, *, pool_size: int = 10, connect_timeout: int = 5, create: bool = True) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size=pool_size, connect_timeout=connect_timeout, create=create)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        notify.attach(self._sessions)  # wake-up notices leave with the commit

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def check_reachable(self) -> None:
        """Connect once; raise DatabaseUnreachable with the reason if we cannot."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa_exc.DBAPIError as e:
            reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
            raise DatabaseUnreachable(safe_url(self.url), reason) from None

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        """Close the pool's idle connections; the ones in use close when they
        come back. The database stays usable: the next session connects
        afresh (milliseconds)."""
        self.engine.dispose()

    def release_idle_connections(self) -> None:
        """After a burst: close the idle connections but the one used last (release_idle)."""
        release_idle(self.engine)


class _OpenConnections:
    """How many DBAPI connections a pool holds open, counted from its events
    (a pool knows how many it lends, not how many of the ones it keeps are
    open)."""

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self.count = 0
        # Listeners on the pool carry over to the pool that dispose() makes.
        event.listen(engine.pool, "connect", lambda *_: self._add(1))
        event.listen(engine.pool, "close", lambda *_: self._add(-1))
        event.listen(engine.pool, "close_detached", lambda *_: self._add(-1))

    def _add(self, n: int) -> None:
        with self._lock:
            self.count += n


_OPEN: weakref.WeakKeyDictionary[Engine, _OpenConnections] = weakref.WeakKeyDictionary()


def count_open_connections(engine: Engine) -> Engine:
    """Let release_idle keep this engine's most recently used connection."""
    _OPEN[engine] = _OpenConnections(engine)
    return engine


def release_idle(engine: Engine) -> None:
    """Close the pool's idle connections but the one used last.

    A quiet process then holds one connection per pool instead of a burst's
    worth, and the operation that ends its quiet neither waits for a
    connection to be made (~4 ms on PostgreSQL, more for a pool that prepares
    statements on connect) nor meets a server process with cold caches
    (~1.5 ms more). The pool lends last in, first out, so the connection kept
    is the warm one and the next checkout gets it; the ones closed leave
    empty places below, filled on demand.
    """
    pool, opened = engine.pool, _OPEN.get(engine)
    if opened is None or not isinstance(pool, sa.pool.QueuePool):
        engine.dispose()
        return
    taken = []
    try:
        for _ in range(opened.count - pool.checkedout()):  # each checkout takes the newest first
            taken.append(pool.connect())
    except Exception as e:  # noqa: BLE001 - best effort: the server is away; what was taken still goes back
        LOG.info("releasing idle database connections stopped early: %s", e)
    finally:
        for conn in taken[1:]:
            conn.detach()  # closed for real by close(); its place stays, empty
            conn.close()
        if taken:
            taken[0].close()  # the warm one goes back last, on top


def connection_bound(pool_size: int, dialect: str) -> int:
    """Most connections one process opens to a server database: its session
    pool (pool_size + as many overflow) and the flow writes' two autocommit
    pools (persistence.taskflow_backend)."""
    return 2 * pool_size + (32 if dialect == "postgresql" else 0)
