"""The SQLite backend: one file on this machine.

WAL mode with synchronous=NORMAL: a commit survives the death of the process (not a power cut) and
costs tens of microseconds, so the engine writes each state change directly. An owner lives while its
process does (pid and start time), or, across hosts sharing the file, while its heartbeat is fresh.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .base import Conn, Row
from .interface import Store
from .leases import owner_alive
from .migrations import MIGRATIONS, MIGRATIONS_TABLE, statements
from .queries import matches


def _writable(path: Path) -> bool:
    # the mode bits too: root may write anywhere, but a store its user made 0444 is meant to be read-only
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _read_only_reason(path: Path) -> str | None:
    """Why this process should not write the store at `path` (None: it may). WAL needs the folder writable
    too, unless the -wal and -shm files are already there and writable."""
    if path.exists() and not _writable(path):
        return f"the file is not writable (mode {path.stat().st_mode & 0o777:o})"
    folder = path.parent
    if folder.is_dir() and not _writable(folder):
        sidecars = [Path(f"{path}-wal"), Path(f"{path}-shm")]
        if not path.exists():
            return None  # cannot be created: connect() says so
        if not all(p.exists() and _writable(p) for p in sidecars):
            return f"its folder {folder} is not writable"
    return None


def store_problem(path: Path, exc: BaseException) -> StoreError:
    """One line that names the store and what is wrong with it, and what to do."""
    text = " ".join(str(exc).split()) or type(exc).__name__  # one line
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename or path}"
    hint = ("move it aside (a new store is created in its place) or set CONDUCTOR_DB / --db to another file"
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)
            else "check the path and its permissions, or set CONDUCTOR_DB / --db to another file")
    return StoreError(f"trace store {path}: {text}; {hint}")


class SQLiteStore(Store):
    def __init__(self, path: str | Path | None = None) -> None:
        from . import resolve_target

        self.path = Path(resolve_target(path)).expanduser()
        self.location = str(self.path)
        self._lock = threading.RLock()
        if self.path.is_dir():
            raise StoreError(f"trace store {self.path}: a folder, not a file; set CONDUCTOR_DB / --db to a file "
                             f"path such as {self.path / 'traces.db'}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.read_only = _read_only_reason(self.path)  # reads work; every write is refused, with this
            self._db = self._connect()
            self._db.row_factory = sqlite3.Row
            if self.read_only is None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.create_function("conductor_matches", 3, matches, deterministic=True)
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise store_problem(self.path, exc) from exc

    def _connect(self) -> sqlite3.Connection:
        if self.read_only is None:
            return sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:  # WAL with no -shm and a read-only folder: read it as immutable
            db.close()
            return sqlite3.connect(f"{uri}&immutable=1", uri=True, check_same_thread=False,
                                   isolation_level=None, timeout=10)

    def check(self) -> None:
        """A full read of the store's structure (`PRAGMA quick_check`): serve and doctor run it at start,
        so a damaged file is named there, not met by every later call."""
        try:
            with self._lock:
                problems = [r[0] for r in self._db.execute("PRAGMA quick_check(5)")]
        except sqlite3.Error as exc:
            raise store_problem(self.path, exc) from exc
        if problems != ["ok"]:
            raise store_problem(self.path, sqlite3.DatabaseError(
                f"damaged (the database disk image is malformed): {'; '.join(problems)}"))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- the hooks of base.py -------------------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Conn]:
        with self._lock:
            yield self._db

    @contextmanager
    def _write(self) -> Iterator[Conn]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _now(self, db: Conn) -> float:
        return time.time()

    def _alive(self, row: Row, now: float) -> bool:
        return owner_alive(row["owner"], row["heartbeat_at"], now)

    def json(self, column: str, path: str, number: bool = False) -> str:
        return f"json_extract({column}, '{path}')"

    def _reviews_tokens_sql(self, options: str) -> str:
        return ("COALESCE((SELECT SUM(COALESCE(json_extract(v.value, '$.info.usage.prompt_tokens'), 0)"
                " + COALESCE(json_extract(v.value, '$.info.usage.completion_tokens'), 0))"
                f" FROM json_each({options}, '$.reviews') v), 0)")

    def _steps_json_sql(self, run_id: str) -> str:
        return ("(SELECT json_group_array(json_array(s.worker, s.prompt_tokens, s.completion_tokens, s.cost_usd,"
                f" s.calls)) FROM steps s WHERE s.run_id = {run_id})")

    def _eval_summary_sql(self) -> str:
        return ("(SELECT COUNT(DISTINCT json_extract(v.value, '$.task_id')) FROM json_each(report, '$.runs') v)"
                " AS tasks, (SELECT json_group_array(key) FROM json_each(report, '$.strategies')) AS strategies")

    def _text_match_sql(self, db: Conn, text: str) -> tuple[str, list[Any]]:
        return "conductor_matches(task, answer, ?)", [text]

    # -- migrations -----------------------------------------------------------------------------------
    def _migrate(self) -> None:
        if self.read_only is not None:
            with self._lock:
                tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                done = {r[0] for r in self._db.execute("SELECT name FROM _migrations")} if (
                    "_migrations" in tables) else set()
            missing = [name for name, _ in MIGRATIONS if name not in done]
            if missing:  # an older schema cannot be read by this version, nor upgraded without writing
                raise StoreError(f"trace store {self.path} is read-only ({self.read_only}) and needs upgrading "
                                 f"({', '.join(missing)}): make it writable once")
            return
        with self._tx() as db:
            db.execute(MIGRATIONS_TABLE)
            done = {r[0] for r in db.execute("SELECT name FROM _migrations").fetchall()}
            for name, sql in MIGRATIONS:
                if name not in done:
                    for statement in statements(sql):
                        db.execute(statement)
                    db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
