"""Probes for a process manager or a load balancer, on the HTTP server beside /mcp and /v1.

`/healthz`: 200 while the process serves HTTP (liveness: restart it when this fails).
`/readyz`: 200 when it can take work: the trace store answers a query on a fresh connection and has every
migration this version knows, and the server is not shutting down; else 503 with a short reason (readiness: send
it no traffic meanwhile).

Both are answered before the Host, Origin and token checks (a kubelet or a balancer sends neither a token nor a
Host this server knows) and say nothing a stranger could use: a status and a reason, no path, version or run.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import RunStateError
from ..runs.run_manager import RunManager

log = logging.getLogger(__name__)
PROBE_PATHS = ("/healthz", "/readyz")
STORE_CHECK_TIMEOUT_S = 3.0


def _migrations_problem(done: set[str]) -> str | None:
    from ..store import MIGRATIONS

    missing = [name for name, _ in MIGRATIONS if name not in done]
    if missing:
        return f"the trace store lacks {len(missing)} of this version's {len(MIGRATIONS)} migrations"
    return None


def sqlite_readiness(path: Path) -> str | None:
    """Why the SQLite store at `path` cannot take work (None: it can). A fresh read-only connection each time, so
    a store file deleted, replaced or made unreadable under a running server is seen, which the server's own open
    connection would not see."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2)
        try:
            done = {str(r[0]) for r in db.execute("SELECT name FROM _migrations")}
        finally:
            db.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return "the trace store has none of this version's migrations"
        log.warning("readiness: trace store %s: %s", path, exc)
        return "the trace store does not answer"
    except (sqlite3.Error, OSError) as exc:
        log.warning("readiness: trace store %s: %s", path, exc)
        return "the trace store does not answer"
    return _migrations_problem(done)


def shared_readiness(store: Any) -> str | None:
    """The same question of a server's store that is a database server (PostgreSQL), through the store's own
    connections (its pool opens a fresh one when the database went away)."""
    try:
        done = store.applied_migrations()
    except Exception as exc:  # the driver's errors: the database is down, unreachable, or lacks the table
        log.warning("readiness: trace store %s: %r", getattr(store, "location", "?"), exc)
        return "the trace store does not answer"
    return _migrations_problem(done)


def readiness_check(manager: RunManager) -> Callable[[], str | None]:
    """The store half of /readyz for this manager's store (opened now, at start-up: a probe never creates it)."""
    try:
        path = manager.store_path()
    except RunStateError:  # PostgreSQL: no file to open afresh
        store = manager._trace_store
        return lambda: shared_readiness(store)
    return lambda: sqlite_readiness(path)


class Probes:
    """`/healthz` and `/readyz` (GET or HEAD) answered here; everything else to `app`."""

    def __init__(self, app: ASGIApp, manager: RunManager) -> None:
        self.app = app
        self.manager = manager
        self.store_ready = readiness_check(manager)

    async def readiness(self) -> str | None:
        if self.manager.draining:
            return "shutting down"
        with anyio.move_on_after(STORE_CHECK_TIMEOUT_S):
            return await anyio.to_thread.run_sync(self.store_ready, abandon_on_cancel=True)
        return "the trace store does not answer in time"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        status, body = 200, {"status": "ok"}
        if scope["method"] not in ("GET", "HEAD"):
            status, body = 405, {"status": "error", "reason": "use GET or HEAD"}
        elif scope["path"] == "/readyz":
            reason = await self.readiness()
            status, body = (200, {"status": "ready"}) if reason is None else (
                503, {"status": "not ready", "reason": reason})
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   (b"cache-control", b"no-store")]
        if status == 405:
            headers.append((b"allow", b"GET, HEAD"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else data})
