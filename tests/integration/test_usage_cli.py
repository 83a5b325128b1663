"""`mcp-conductor usage`: the trace store's tokens and cost by worker, strategy and day, as a user runs it."""

from __future__ import annotations

import functools
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

from conductor_mcp.models import Manifest, Price, WorkerSpec
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.workers.registry import build_registry

from ..conftest import solve
from ..servers.openai_server import ScriptedServer
from .mcp_helpers import server_env


def usage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conductor_mcp", "usage", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_usage_by_worker_strategy_and_day(tmp_path: Path, server: ScriptedServer) -> None:
    manifest = tmp_path / "w.yaml"
    manifest.write_text("workers: []\n")
    env = server_env(tmp_path, manifest)
    store = Store(env["CONDUCTOR_DB"])
    specs = [WorkerSpec(id=w, model=f"openai/scripted-{w}", api_base=server.base_url,
                        price=Price(input_per_mtok=1.0, output_per_mtok=2.0)) for w in ("a", "b")]
    engine = Engine(build_registry(Manifest(workers=specs), "usage"), store)
    wf: dict[str, Any] = {"steps": [{"worker": "a", "instruction": "draft"},
                                    {"worker": "b", "instruction": "check", "access": "all"}]}
    host = anyio.run(functools.partial(engine.plan, "host task\nREPLY: ok", workflow=wf))
    anyio.run(RunManager(engine=engine).drive, host.id)
    single = anyio.run(functools.partial(solve, engine, "single task\nREPLY: ok", strategy="single:b"))
    planned = anyio.run(functools.partial(solve, engine, "planned task\nREPLY: ok", workers=["a"], max_steps=2))
    runs = [store.get_run(r) for r in (host.id, single.id, planned.id)]
    total = sum((store.tree_usage(r.id) for r in runs[1:]), store.tree_usage(runs[0].id))

    out = usage(env, "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["key"]: r for r in json.loads(out.stdout)["rows"]}
    assert sum(r["total_tokens"] for r in rows.values()) == total.total_tokens
    assert sum(r["calls"] for r in rows.values()) == total.calls
    worker_b = sum(s.usage.total_tokens for r in runs for s in r.steps if s.worker == "b")
    assert rows["b"]["total_tokens"] == worker_b and rows["b"]["runs"] == 2
    assert rows["conductor"]["calls"] == planned.plan.usage.calls >= 1  # the bundled conductor's planning
    assert rows["conductor"]["cost_usd"] == 0.0 and rows["a"]["cost_usd"] > 0

    by_strategy = {r["key"]: r for r in json.loads(usage(env, "--by", "strategy", "--json").stdout)["rows"]}
    assert by_strategy["single:b"]["total_tokens"] == store.tree_usage(single.id).total_tokens
    assert by_strategy["conductor"]["runs"] == 1  # the planned one: the host wrote the other's workflow
    assert by_strategy["host"]["total_tokens"] == store.tree_usage(host.id).total_tokens
    days = json.loads(usage(env, "--by", "day", "--since", "1h", "--json").stdout)["rows"]
    assert len(days) == 1 and days[0]["total_tokens"] == total.total_tokens and days[0]["runs"] == 3
    table = usage(env, "--since", "2999-01-01").stdout
    assert "(no runs since 2999-01-01)" in table
    # a run made 10 days ago (its whole tree's clock set back) falls out of --since 7d, and into --since 30d
    with sqlite3.connect(env["CONDUCTOR_DB"]) as db:
        db.execute("UPDATE runs SET created_at = created_at - 10 * 86400 WHERE id = ? OR parent_run_id = ?",
                   (single.id, single.id))
    week = {r["key"]: r for r in json.loads(usage(env, "--by", "strategy", "--since", "7d", "--json").stdout)["rows"]}
    assert "single:b" not in week and set(week) == {"conductor", "host"}
    month = {r["key"]: r for r in json.loads(usage(env, "--by", "strategy", "--since", "30d", "--json").stdout)["rows"]}
    assert month["single:b"]["total_tokens"] == store.tree_usage(single.id).total_tokens
    bad = usage(env, "--since", "last tuesday")
    assert bad.returncode != 0 and "--since: 'last tuesday'" in bad.stderr and "Traceback" not in bad.stderr
    store.close()
