"""The PostgreSQL backend: one store that several replicas, on several machines, share.

psycopg 3 with its connection pool (the `postgres` extra). The URL's credentials, or the standard PG
environment variables (PGPASSWORD, PGUSER, PGHOST...), reach libpq; messages name the URL without its password.
Migrations are applied under an advisory lock, so replicas starting together migrate once.

Ownership across machines: a process id means nothing on another machine, so an owner is alive while its
lease has not expired, in the database's own clock (clock_timestamp()), and heartbeats renew it. Every write
of an owner locks the run's row (SELECT ... FOR UPDATE) and checks the lease epoch, its fencing token: once
another replica has claimed the run, the old owner's writes fail with LeaseLost.

Each statement is a round trip, made on the event loop, so the hot path makes as few as it can: reads run in
autocommit (under READ COMMITTED a transaction gave each of their statements its own snapshot anyway, and cost a
BEGIN and a COMMIT), and the database's clock is read once every CLOCK_RESYNC_S, not once a transaction.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import StoreError
from .base import Conn, Cursor, Row
from .interface import Store
from .migrations import MIGRATIONS, MIGRATIONS_TABLE, for_postgres, statements

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

SCHEMES = ("postgresql", "postgres")
# pg_advisory_xact_lock's key for migrations: any fixed 64-bit number ("conductor" in ASCII)
MIGRATION_LOCK = 0x636F6E647563746F
# How long the database's clock, once read, is carried on by this host's monotonic clock before it is read again.
# A monotonic clock drifts from a disciplined one by at most NTP's 500 ppm: 2.5 ms over this, against leases of
# seconds; and a step of the database host's clock counts from the next read.
CLOCK_RESYNC_S = 5.0


def redact_url(url: str) -> str:
    """The URL without its password (in the authority or a `password=` query parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{host}"
    query = re.sub(r"(?i)(^|&)(password)=[^&]*", r"\1\2=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@lru_cache(maxsize=512)
def _sql(statement: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal `%` doubled)."""
    return statement.replace("%", "%%").replace("?", "%s")


class PgRow(tuple[Any, ...]):
    """A row by position or by column name, like sqlite3.Row."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._names[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._names)


@lru_cache(maxsize=256)
def _names(fields: tuple[bytes | None, ...]) -> dict[str, int]:
    return {(f or b"").decode(): i for i, f in enumerate(fields)}


def _row_factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], PgRow]:
    # made for every statement's result: the names straight from the result, once per set of columns (the cursor's
    # `description` builds a Column object apiece, about 25 for a runs row, on every read)
    res = cursor.pgresult
    names = _names(tuple(res.fname(i) for i in range(res.nfields))) if res is not None else {}

    def make(values: Sequence[Any]) -> PgRow:
        row = PgRow(values)
        row._names = names
        return row
    return make


class _PgConn:
    """A pooled connection as the store uses it: `?` placeholders."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor:
        return self._conn.execute(_sql(sql), tuple(params))


class PostgresStore(Store):
    # the engine's store calls run on the event loop one at a time, so a replica holds one connection at a time and a
    # second for the web view's and probes' threads: 4 leaves room, and 25 replicas stay under PostgreSQL's 100
    def __init__(self, url: str | Path | None = None, min_size: int = 1, max_size: int = 4) -> None:
        from . import resolve_target

        url = str(resolve_target(url))
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise StoreError(f"trace store {redact_url(url)}: PostgreSQL needs psycopg 3 and psycopg_pool; "
                             "install them with `pip install 'mcp-conductor[postgres]'`") from exc
        self.url = url
        self.location = redact_url(url)
        self._clock: tuple[float, float, float] | None = None  # the database's clock, time.monotonic(), time.time()
        self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        try:
            psycopg.connect(url, connect_timeout=10).close()  # fails fast, with libpq's reason (the pool retries)
            self._pool: ConnectionPool[Any] = ConnectionPool(
                url, min_size=min_size, max_size=max_size, open=False, name="conductor-store",
                kwargs={"row_factory": _row_factory, "autocommit": True})  # writes: conn.transaction()
            self._pool.open(wait=True, timeout=15)
            self._migrate()
        except Exception as exc:  # PoolTimeout, psycopg.Error, a malformed URL (ProgrammingError)
            self.close()
            raise self._problem(exc) from None

    def _problem(self, exc: BaseException) -> StoreError:
        text = " ".join(str(exc).replace(self.url, self.location).split()) or type(exc).__name__
        return StoreError(f"trace store {self.location}: {text}; check that the server runs and the URL, user and "
                          "password (in the URL or PGPASSWORD) are right, or set CONDUCTOR_DB / --db to another store")

    def check(self) -> None:
        try:
            with self._read() as db:
                db.execute("SELECT COUNT(*) FROM runs").fetchone()
        except self._errors as exc:
            raise self._problem(exc) from None

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()

    # -- the hooks of base.py -------------------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Conn]:
        with self._pool.connection() as conn:
            yield _PgConn(conn)

    @contextmanager
    def _write(self) -> Iterator[Conn]:
        with self._pool.connection() as conn, conn.transaction():
            yield _PgConn(conn)

    MAX2 = "GREATEST"

    def _now(self, db: Conn) -> float:
        """The database's clock, as last read (at most CLOCK_RESYNC_S ago) plus the monotonic time since. The reading
        is dated at the end of its round trip, so this is not ahead of the database's clock (behind it by at most that
        round trip; ahead by no more than this host's drift, 2.5 ms over 5 s): a lease written with it does not last
        longer there than it says. It is read again sooner where this host's wall clock and monotonic clock part (a
        suspended host or paused VM, whose monotonic clock stood still meanwhile; or a step of the wall clock). At a
        reading it may step back by as much as a round trip took: nothing depends on its only going forward."""
        clock = self._clock
        mono, wall = time.monotonic(), time.time()
        if clock is None or mono - clock[1] > CLOCK_RESYNC_S or abs((wall - clock[2]) - (mono - clock[1])) > 0.5:
            read = float(db.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8").fetchone()[0])
            mono, wall = time.monotonic(), time.time()
            self._clock = clock = (read, mono, wall)
        return clock[0] + (mono - clock[1])

    def _lock_run(self, db: Conn, run_id: str, columns: str) -> Row | None:
        row: Row | None = db.execute(f"SELECT {columns} FROM runs WHERE id=? FOR UPDATE", (run_id,)).fetchone()
        return row

    def _alive(self, row: Row, now: float) -> bool:
        expires = row["lease_expires_at"]
        return bool(row["owner"]) and expires is not None and expires > now

    def json(self, column: str, path: str, number: bool = False) -> str:
        keys = ",".join(path.removeprefix("$.").split("."))
        value = f"({column}::jsonb #>> '{{{keys}}}')"
        return f"{value}::float8" if number else value

    def _reviews_tokens_sql(self, options: str) -> str:
        return ("COALESCE((SELECT SUM(COALESCE((v #>> '{info,usage,prompt_tokens}')::float8, 0)"
                " + COALESCE((v #>> '{info,usage,completion_tokens}')::float8, 0))"
                f" FROM jsonb_array_elements(CASE WHEN jsonb_typeof({options}::jsonb -> 'reviews') = 'array'"
                f" THEN {options}::jsonb -> 'reviews' ELSE '[]'::jsonb END) v), 0)")

    def _steps_json_sql(self, run_id: str) -> str:
        return ("(SELECT COALESCE(json_agg(json_build_array(s.worker, s.prompt_tokens, s.completion_tokens,"
                f" s.cost_usd, s.calls)), '[]'::json)::text FROM steps s WHERE s.run_id = {run_id})")

    def _eval_summary_sql(self) -> str:
        # json, not jsonb: json_object_keys keeps the report's order
        return ("(SELECT COUNT(DISTINCT v ->> 'task_id') FROM json_array_elements(CASE WHEN"
                " json_typeof(report::json -> 'runs') = 'array' THEN report::json -> 'runs' ELSE '[]'::json END) v)"
                " AS tasks, (SELECT COALESCE(json_agg(k), '[]'::json)::text FROM json_object_keys(CASE WHEN"
                " json_typeof(report::json -> 'strategies') = 'object' THEN report::json -> 'strategies'"
                " ELSE '{}'::json END) k) AS strategies")

    def _text_match_sql(self, db: Conn, text: str) -> tuple[str, list[Any]]:
        terms = text.casefold().split()
        haystack = "lower(COALESCE(task, '') || chr(10) || COALESCE(answer, ''))"
        return " AND ".join(f"strpos({haystack}, lower(?)) > 0" for _ in terms), list(terms)

    # -- migrations -----------------------------------------------------------------------------------
    def _migrate(self) -> None:
        """The same append-only migrations as SQLite's, in one transaction under an advisory lock: replicas
        that start together wait for the first, then find nothing left to do."""
        with self._write() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,)).fetchone()
            db.execute(for_postgres(MIGRATIONS_TABLE))
            done = {r[0] for r in db.execute("SELECT name FROM _migrations").fetchall()}
            for name, sql in MIGRATIONS:
                if name not in done:
                    for statement in statements(for_postgres(sql)):
                        db.execute(statement)
                    db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))

