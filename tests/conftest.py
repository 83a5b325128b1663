"""Shared fixtures: a real SQLite store, registries on the scripted OpenAI-compatible server."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from conductor_mcp.models import Budget, Manifest, Run, WorkerSpec
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.workers.pool import litellm_module
from conductor_mcp.workers.registry import Registry, build_registry

from .servers.openai_server import ScriptedServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "traces.db")
    yield s
    s.close()


@pytest.fixture(scope="session")
def scripted() -> Iterator[ScriptedServer]:
    # Import litellm before any test talks to the server: the import takes seconds, inside a worker call's
    # timeout and on the event loop, so a test that times a window (cancel after 1 s) would pass or fail by
    # whether an earlier test had imported it. (Servers warm it at start-up; test_mcp_transports checks that.)
    litellm_module()
    with ScriptedServer(latency_s=0.0) as srv:
        yield srv


@pytest.fixture
def server(scripted: ScriptedServer) -> ScriptedServer:
    scripted.reset_stats()
    scripted.clear_scripts()
    scripted.set_faults(rate=0.0, fail_models={})
    scripted.set_latency(latency_s=0.0, model_latency={})
    scripted.set_api_key(None)
    return scripted


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
