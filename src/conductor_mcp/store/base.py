"""What every part of the store stands on: a connection to read through, a transaction to write in, the
backend's clock and its answer to "does this run's owner live?", and the few SQL fragments in which SQLite and
PostgreSQL differ. The SQLite and PostgreSQL backends (sqlite.py, postgres.py) implement these hooks; the
ownership, write and query modules use nothing else. SQL is written with `?` placeholders for both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..errors import StoreError


class Row(Protocol):
    """A result row: by column name or position (sqlite3.Row, or postgres.PgRow)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class Conn(Protocol):
    """A connection as the store uses it: `execute(sql, params)` with `?` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...


class StoreBase:
    """The hooks a backend implements. `location` names the store in messages (a path, or a URL without its
    password); `read_only` is why this process may not write it (None: it may)."""

    location: str
    read_only: str | None = None
    # SQL fragments that differ between the backends
    MAX2 = "MAX"  # the larger of two values (GREATEST on PostgreSQL)

    def _read(self) -> AbstractContextManager[Conn]:
        """A connection for reads (one consistent use, not necessarily one snapshot)."""
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Conn]:
        """A connection inside a write transaction: committed when the block ends, rolled back on an error."""
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[Conn]:
        self.require_writable()
        return self._write()

    def _statement(self) -> AbstractContextManager[Conn]:
        """A connection for a write of one statement, which commits by itself (both backends' connections are in
        autocommit outside _tx): no BEGIN and COMMIT around it, which cost two round trips on PostgreSQL. One
        statement only: two would not be one transaction."""
        self.require_writable()
        return self._read()

    def _now(self, db: Conn) -> float:
        """Seconds since the epoch by the clock that leases are kept in (the database's on PostgreSQL)."""
        raise NotImplementedError

    def _lock_run(self, db: Conn, run_id: str, columns: str) -> Row | None:
        """Inside a write transaction: the runs row, locked against other writers until the commit."""
        return db.execute(f"SELECT {columns} FROM runs WHERE id=?", (run_id,)).fetchone()  # type: ignore[no-any-return]

    def _alive(self, row: Row, now: float) -> bool:
        """Whether the owner of this runs row (owner, heartbeat_at, lease_expires_at) still lives."""
        raise NotImplementedError

    def json(self, column: str, path: str, number: bool = False) -> str:
        """SQL for the value at `path` (`$.a.b`) in a JSON text column: text, or a number."""
        raise NotImplementedError

    def _reviews_tokens_sql(self, options: str) -> str:
        """SQL summing the tokens of the reviews listed in a run's options (`$.reviews[*].info.usage`)."""
        raise NotImplementedError

    def _steps_json_sql(self, run_id: str) -> str:
        """SQL for a JSON text array of [worker, prompt_tokens, completion_tokens, cost_usd, calls] per step."""
        raise NotImplementedError

    def _eval_summary_sql(self) -> str:
        """SQL columns `tasks` (distinct task ids in the report's runs) and `strategies` (a JSON text array of
        the report's strategy names, in its order), from the `report` column of evals."""
        raise NotImplementedError

    def _text_match_sql(self, db: Conn, text: str) -> tuple[str, list[Any]]:
        """A condition: the run's task or answer holds every whitespace-separated term of `text`, any case."""
        raise NotImplementedError

    def require_writable(self) -> None:
        """Raise the read-only store's StoreError: before a write, or before work that will need one."""
        if self.read_only is not None:
            raise StoreError(f"trace store {self.location} is read-only ({self.read_only}): runs can be read, "
                             "not planned, run or rated; make it writable or set CONDUCTOR_DB / --db to another file")

    def strategy_sql(self) -> str:
        """A run's strategy as listings name it: a workflow the host wrote is `host`, whatever was passed."""
        return (f"CASE WHEN {self.json('plan', '$.source')} = 'host' THEN 'host'"
                f" ELSE COALESCE({self.json('options', '$.strategy')}, 'conductor') END")

    def applied_migrations(self) -> set[str]:
        """The migrations the store records as applied (a replica is ready when it holds all of this version's)."""
        with self._read() as db:
            return {str(r[0]) for r in db.execute("SELECT name FROM _migrations").fetchall()}

    def check(self) -> None:
        """A read of the store's structure: serve and doctor run it at start."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
