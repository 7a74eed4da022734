"""PostgreSQL: a whole write batch in one round trip and one commit.

PostgreSQL runs a query string holding several statements, sent outside an
explicit transaction, as one implicit transaction: all of it commits or none
of it does. psycopg2 interpolates parameters on the client and sends such a
string as one simple-protocol query. So a step's RUNNING row, its flow-log
row and the previous step's deferred SUCCESS (with its own log row) travel
together: one round trip and one WAL flush where there were two of each.

Costs measured on the reference flow, and what answers each:

* SQLAlchemy's execution context and events cost ~0.05 ms a round trip: the
  batch goes to the pooled psycopg2 connection's cursor directly.
* Parsing and planning cost the server ~0.1 ms per batch of four statements:
  the per-step statements are prepared once per connection (`PREPARE`) and
  the batch says `EXECUTE cf_update_atom(...)`.
* A statement costs a parse each: consecutive rows for the same INSERT (a new
  flow's atoms) become one multi-row INSERT.

The statements are SQLAlchemy Core statements compiled once for the dialect;
each parameter goes through its column type's bind processor (JSON
serialisation, enum checks) exactly as SQLAlchemy would apply it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psycopg2
import sqlalchemy as sa
from psycopg2.extensions import encodings
from sqlalchemy import exc as sa_exc
from sqlalchemy.sql.compiler import SQLCompiler

#: SQLSTATE raised by `computeflow_assert_epoch` (migration 0006).
FENCED_SQLSTATE = "CF001"
#: SQLSTATE of an EXECUTE whose prepared statement this session lacks.
_NOT_PREPARED_SQLSTATE = "26000"
_ASSERT_EPOCH = "SELECT computeflow_assert_epoch(%(op)s, %(epoch)s)"
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")

#: One statement of a write: the name of a compiled statement and its parameters.
Op = tuple[str, Mapping[str, Any]]


class _Template:
    def __init__(
        self,
        name: str,
        statement: sa.sql.ClauseElement,
        dialect: sa.Dialect,
        column_keys: list[str] | None,
        prepare: bool,
    ) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        assert isinstance(compiled, SQLCompiler)  # a DML statement compiles to SQL
        self.sql = str(compiled)
        head, values, row = self.sql.partition(" VALUES ")
        #: `INSERT ... VALUES` and its row template, for multi-row inserts.
        self.multirow = (head + values, row) if values and head.startswith("INSERT") else None
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for bind_name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self.processors[bind_name] = process
        #: `PREPARE cf_name AS ...` (placeholders become $1, $2, ...) and the
        #: `EXECUTE cf_name(...)` template that calls it; None: sent as is.
        self.prepare = self.execute = None
        if prepare:
            order: list[str] = []
            for p in _PLACEHOLDER.findall(self.sql):
                if p not in order:
                    order.append(p)
            body = _PLACEHOLDER.sub(lambda m: f"${order.index(m.group(1)) + 1}", self.sql)
            self.prepare = f"PREPARE cf_{name} AS {body}"
            self.execute = f"EXECUTE cf_{name}({', '.join(f'%({p})s' for p in order)})"

    def bind(self, params: Mapping[str, Any]) -> dict[str, Any]:
        processors = self.processors
        return {k: (processors[k](v) if k in processors and v is not None else v) for k, v in params.items()}


class BatchRenderer:
    """Renders named statements with their parameters into one query string
    and sends it."""

    def __init__(
        self,
        dialect: sa.Dialect,
        statements: Mapping[str, tuple[sa.sql.ClauseElement, list[str] | None]],
        prepared: Iterable[str] = (),
    ) -> None:
        prepared = set(prepared)
        self._templates = {
            name: _Template(name, stmt, dialect, keys, name in prepared) for name, (stmt, keys) in statements.items()
        }
        #: Batches sent (each one round trip and one commit); benchmarks read it.
        self.round_trips = 0

    def prepare(self, dbapi_connection: Any) -> None:
        """PREPARE the per-step statements in this session (a pool's `connect`
        event calls it for every new connection)."""
        cursor = dbapi_connection.cursor()
        for template in self._templates.values():
            if template.prepare:
                cursor.execute(template.prepare)
        cursor.close()
        if not dbapi_connection.autocommit:
            dbapi_connection.commit()

    def render(self, cursor: Any, ops: Iterable[Op], fence: tuple[str, int] | None = None) -> str:
        """`cursor` is a psycopg2 cursor (its `mogrify` quotes the values)."""
        parts = []
        if fence is not None:
            parts.append(cursor.mogrify(_ASSERT_EPOCH, {"op": fence[0], "epoch": fence[1]}))
        for name, group in itertools.groupby(ops, key=lambda op: op[0]):
            template = self._templates[name]
            rows = [template.bind(params) for _, params in group]
            if template.execute:
                parts.extend(cursor.mogrify(template.execute, r) for r in rows)
            elif template.multirow and len(rows) > 1:
                head, row = template.multirow
                parts.append(head.encode() + b", ".join(cursor.mogrify(row, r) for r in rows))
            else:
                parts.extend(cursor.mogrify(template.sql, r) for r in rows)
        return b";\n".join(parts).decode(encodings[cursor.connection.encoding])

    def send(self, pool: sa.Engine, ops: list[Op], fence: tuple[str, int] | None = None) -> int:
        """Send `ops` as one query on a connection of `pool` (autocommit);
        the row count of the last statement.

        Errors are raised as SQLAlchemy's (`DBAPIError.instance`), a connection
        the server dropped being invalidated in the pool and flagged
        `connection_invalidated`, as SQLAlchemy's own execution would do. A
        session that lost its prepared statements (a connection pooler that
        swapped it) prepares them again and the batch is sent once more.
        """
        raw = _checkout(pool, ops)
        try:
            driver_connection = raw.driver_connection
            assert driver_connection is not None  # a pooled connection is always open here
            cursor = driver_connection.cursor()
            sql = self.render(cursor, ops, fence)
            for attempt in (1, 2):
                self.round_trips += 1
                try:
                    cursor.execute(sql)
                    return int(cursor.rowcount)
                except psycopg2.Error as e:
                    if e.pgcode == _NOT_PREPARED_SQLSTATE and attempt == 1:
                        self.prepare(raw.driver_connection)
                        continue
                    lost = pool.dialect.is_disconnect(e, raw.driver_connection, cursor)
                    if lost:
                        raw.invalidate(e)
                    raise _as_sqlalchemy_error(e, ops, lost) from e
            raise AssertionError("unreachable")
        finally:
            raw.close()


def _checkout(pool: sa.Engine, ops: list[Op]) -> Any:
    """A pooled connection, or SQLAlchemy's error for why there is none.

    `Engine.raw_connection` lets the driver's own error through (SQLAlchemy
    wraps it only on `Engine.connect`); unwrapped, it would slip past the
    backend's retry and StorageFailure translation, and the runner would
    record a database outage as the step failing. A new connection that
    cannot be opened counts as a lost one: retried, then paused."""
    try:
        return pool.raw_connection()
    except psycopg2.Error as e:
        raise _as_sqlalchemy_error(e, ops, lost=isinstance(e, psycopg2.OperationalError)) from e


def _as_sqlalchemy_error(e: psycopg2.Error, ops: list[Op], lost: bool) -> sa_exc.DBAPIError:
    # Named, not quoted: the rendered SQL holds every value (step results
    # included), and error texts reach logs.
    what = "computeflow write batch: " + ", ".join(name for name, _ in ops)
    error = sa_exc.DBAPIError.instance(what, None, e, psycopg2.Error, connection_invalidated=lost)
    assert isinstance(error, sa_exc.DBAPIError)  # a DBAPI error is always wrapped as one
    return error
