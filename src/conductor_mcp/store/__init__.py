"""The trace store: every run and step, written as it happens, to SQLite (a path) or PostgreSQL (a
`postgresql://` URL that several replicas share).

One interface (interface.Store): ownership and leases (leases.py), writes (writes.py), reads (queries.py), over
the hooks each backend implements (base.py; sqlite.py, postgres.py); one append-only list of migrations
(migrations.py) for both. `open_store(target)` (or `Store(target)`) opens the backend a target names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

from ..errors import StoreError
from .base import Row
from .ids import new_run_id
from .interface import Store
from .leases import STALE_AFTER_S, Claimed, Lease, heartbeat_s, owner_alive, process_owner, stale_after_s
from .migrations import MIGRATIONS
from .queries import EvalRecord, EvalSummary, RunListing, strategy_of
from .writes import FINAL

__all__ = ["FINAL", "MIGRATIONS", "STALE_AFTER_S", "Claimed", "EvalRecord", "EvalSummary", "Lease", "Row", "RunListing",
           "Store", "backend_for", "default_db_path", "default_target", "describe_target", "heartbeat_s",
           "new_run_id", "open_store", "owner_alive", "process_owner", "stale_after_s", "strategy_of"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
POSTGRES_SCHEMES = ("postgresql", "postgres")


def default_target() -> str | Path:
    """CONDUCTOR_DB as given (a path or a URL), else the per-user data file."""
    env = os.environ.get("CONDUCTOR_DB")
    if env:
        return env if _SCHEME.match(env) else Path(env).expanduser()
    return Path(platformdirs.user_data_dir("conductor-mcp", appauthor=False)) / "traces.db"


def default_db_path() -> Path:
    """The SQLite file the store uses when CONDUCTOR_DB names no URL."""
    target = default_target()
    if isinstance(target, Path):
        return target
    raise StoreError(f"CONDUCTOR_DB is a {target.partition(':')[0]} URL, not a file path")


def describe_target(target: str | Path | None) -> str:
    """A store's target for messages: a path as it is, a URL without its password."""
    if isinstance(target, str) and _SCHEME.match(target):
        from .postgres import redact_url

        return redact_url(target)
    return str(target if target is not None else default_target())


def resolve_target(target: str | Path | None) -> str | Path:
    """None or empty: CONDUCTOR_DB, else the per-user default file."""
    return default_target() if target is None or target == "" else target


def backend_for(target: str | Path | None) -> type[Store]:
    """The backend a target names: a path is a SQLite file; `postgresql://` or `postgres://` a PostgreSQL
    database. Any other `scheme://` is refused, naming it."""
    target = resolve_target(target)
    if isinstance(target, str):
        scheme = _SCHEME.match(target)
        if scheme:
            if scheme.group(1).lower() in POSTGRES_SCHEMES:
                from .postgres import PostgresStore

                return PostgresStore
            from .postgres import redact_url

            raise StoreError(f"trace store {redact_url(target)}: unknown scheme {scheme.group(1)!r}; CONDUCTOR_DB"
                             " / --db takes a file path (SQLite) or a postgresql:// URL")
    from .sqlite import SQLiteStore

    return SQLiteStore


def open_store(target: str | Path | None = None) -> Store:
    """The store `target` names (see backend_for); None is CONDUCTOR_DB, else the per-user default file."""
    return backend_for(target)(target)
