"""Shared fixtures: a real SQLite store, a real PostgreSQL server, registries on the scripted OpenAI-compatible
server."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from conductor_mcp.models import Budget, Manifest, Run, WorkerSpec
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store, open_store
from conductor_mcp.store.postgres import PostgresStore
from conductor_mcp.store.sqlite import SQLiteStore
from conductor_mcp.workers.pool import litellm_module
from conductor_mcp.workers.registry import Registry, build_registry

from .servers.openai_server import ScriptedServer
from .servers.postgres_server import PostgresServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "traces.db")
    yield s
    s.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (CONDUCTOR_SKIP_POSTGRES=1 skips its tests on purpose)."""
    if os.environ.get("CONDUCTOR_SKIP_POSTGRES") == "1":
        pytest.skip("CONDUCTOR_SKIP_POSTGRES=1")
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store's target on each backend: a SQLite file, and a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "traces.db")
    pg: PostgresServer = request.getfixturevalue("postgres")
    return pg.new_database()


@pytest.fixture
def any_store(backend: str) -> Iterator[Store]:
    """The store's tests run on both backends with this fixture."""
    s = open_store(backend)
    yield s
    s.close()


def execute(store: Store, sql: str, *args: Any) -> None:
    """Change a store's tables behind its back (as another process, at another time, would have left them), with
    the backend's own driver: sqlite3, or psycopg. `?` placeholders."""
    if isinstance(store, SQLiteStore):
        with closing(sqlite3.connect(store.path)) as db, db:
            db.execute(sql, args)
        return
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute(sql.replace("?", "%s"), args)


def store_migrations(store: Store) -> list[str]:
    """The migrations a store records as applied, read with the backend's own driver."""
    if isinstance(store, SQLiteStore):
        return applied_migrations(store.path)
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store.url) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]


@pytest.fixture(scope="session")
def scripted() -> Iterator[ScriptedServer]:
    # Import litellm before any test talks to the server: the import takes seconds, inside a worker call's
    # timeout and on the event loop, so a test that times a window (cancel after 1 s) would pass or fail by
    # whether an earlier test had imported it. (Servers warm it at start-up; test_mcp_transports checks that.)
    litellm_module()
    with ScriptedServer(latency_s=0.0) as srv:
        yield srv


def reset(scripted: ScriptedServer) -> None:
    scripted.reset_stats()
    scripted.clear_scripts()
    scripted.set_faults(rate=0.0, fail_models={})
    scripted.set_latency(latency_s=0.0, model_latency={})
    scripted.set_api_key(None)


@pytest.fixture
def server(scripted: ScriptedServer) -> Iterator[ScriptedServer]:
    """The session's scripted server, as it starts; left as it starts too, for the tests (and module fixtures) that
    use `scripted` directly: a fault, a latency or a key a test set must not reach them."""
    reset(scripted)
    yield scripted
    reset(scripted)


def http_registry(base_url: str, ids: tuple[str, ...] = ("alpha", "beta", "gamma"), **overrides: object) -> Registry:
    """Workers reached through litellm exactly as a cloud provider would be, on the scripted server."""
    workers = [WorkerSpec.model_validate({"id": i, "model": f"openai/scripted-{i}", "api_base": base_url,
                                          "description": f"scripted worker {i}", "timeout_s": 5, **overrides})
               for i in ids]
    return build_registry(Manifest(workers=workers), "test manifest")


async def solve(engine: Engine, task: str, **plan: Any) -> Run:
    """Plan a task and run it to the end through the one door to runs, as the CLI's solve does."""
    run = await engine.plan(task, **plan)
    return await RunManager(engine=engine).drive(run.id)


async def resume(engine: Engine, run_id: str, budget: Budget | None = None) -> Run:
    """Resume a run to its end through the one door to runs, as the CLI's resume does."""
    return await RunManager(engine=engine).drive(run_id, budget=budget)


def applied_migrations(path: str | Path) -> list[str]:
    """The migrations a store file records as applied, read with sqlite3 itself."""
    with closing(sqlite3.connect(path)) as db:
        return [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY name")]


def root_run_ids(path: str | Path) -> list[str]:
    """The root runs a store file holds, newest first, read with sqlite3 itself."""
    with closing(sqlite3.connect(path)) as db:
        return [r[0] for r in db.execute("SELECT id FROM runs WHERE parent_run_id IS NULL ORDER BY created_at DESC")]
