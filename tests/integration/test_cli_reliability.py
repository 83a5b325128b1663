"""The console script and the stdio server with a bad or read-only store, an unexpected error and a long task:
real processes, real SQLite files, the real bundled conductor."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from conductor_mcp.models import PlanInfo, Workflow
from conductor_mcp.store import Store

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import WORKFLOW, server_env, write_manifest


def cli(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conductor_mcp", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def one_run(path: Path) -> str:
    store = Store(path)
    run_id = store.create_run("an old task", Workflow.model_validate(WORKFLOW), PlanInfo(source="host",
                                                                                         planner="host"))
    store.close()
    return run_id


def junk(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def truncated(path: Path) -> None:
    store = Store(path)
    for i in range(300):
        store.create_run(f"task {i} " + "x" * 1000, Workflow.model_validate(WORKFLOW),
                         PlanInfo(source="host", planner="host"))
    store.close()
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def under_a_file(path: Path) -> Path:
    path.write_text("a plain file")
    return path / "t.db"


@pytest.mark.parametrize("make", [junk, truncated, Path.mkdir, under_a_file], ids=["corrupt", "truncated",
                                                                                 "folder", "unopenable"])
def test_serve_refuses_a_bad_store_in_one_line(tmp_path: Path, env: dict[str, str],
                                               make: Callable[[Path], Path | None]) -> None:
    """The server used to start, then answer `Error executing tool ...` to every call."""
    path = make(tmp_path / "bad.db") or tmp_path / "bad.db"
    proc = cli("serve", env={**env, "CONDUCTOR_DB": str(path)}, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mcp-conductor serve: trace store {path}"), proc.stderr


def test_doctor_reports_a_damaged_store(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "bad.db"
    junk(path)
    bad = {**env, "CONDUCTOR_DB": str(path)}
    proc = cli("doctor", env=bad)
    assert proc.returncode == 1 and f"trace store: {path} (PROBLEM: trace store {path}: file is not a database" \
        in proc.stdout and "strong" in proc.stdout
    report = json.loads(cli("doctor", "--json", env=bad).stdout)
    assert report["store_ok"] is False and "file is not a database" in report["store_problem"]
    good = cli("doctor", "--json", env=env)
    assert good.returncode == 0 and json.loads(good.stdout)["store_ok"] is True


@pytest.fixture
def read_only_db(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    path = tmp_path / "ro.db"
    run_id = one_run(path)
    path.chmod(0o444)
    yield path, run_id
    path.chmod(0o644)


def test_a_read_only_store_in_the_cli(env: dict[str, str], read_only_db: tuple[Path, str]) -> None:
    path, run_id = read_only_db
    ro = {**env, "CONDUCTOR_DB": str(path)}
    proc = cli("runs", env=ro)
    assert proc.returncode == 0 and run_id in proc.stdout
    proc = cli("rate", run_id, "1", env=ro)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert f"trace store {path} is read-only" in proc.stderr
    # doctor says so, without calling it a problem: reads are served
    proc = cli("doctor", env=ro)
    assert proc.returncode == 0 and f"trace store: {path} (read-only: " in proc.stdout, proc.stdout
    report = json.loads(cli("doctor", "--json", env=ro).stdout)
    assert report["store_ok"] is True and report["store_read_only"], report


@pytest.mark.anyio
async def test_serve_over_stdio_with_a_read_only_store(env: dict[str, str],
                                                       read_only_db: tuple[Path, str]) -> None:
    path, run_id = read_only_db
    params = StdioServerParameters(command=sys.executable, args=["-m", "conductor_mcp", "serve"],
                                   env={**env, "CONDUCTOR_DB": str(path)})
    async with Client(params) as c:
        r = await c.call_tool("get_run", {"run_id": run_id})
        assert not r.is_error and r.structured_content is not None
        r = await c.call_tool("plan_workflow", {"task": "x", "workflow": WORKFLOW})
        assert r.is_error and f"trace store {path} is read-only" in r.content[0].text  # type: ignore[union-attr]


def test_an_unexpected_error_is_one_line_and_exit_1(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "traces.db"
    run_id = one_run(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET plan='not json' WHERE id=?", (run_id,))
    proc = cli("show", run_id, env=env)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "mcp-conductor show: internal error: ValidationError: 1 validation error for PlanInfo "
        "(-v shows the traceback)"]
    verbose = cli("show", run_id, "-v", env=env)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_plan_of_a_task_longer_than_the_conductors_context(tmp_path: Path, server: ScriptedServer) -> None:
    """Was a traceback: `ValueError: Requested tokens (...) exceed context window of 1024`."""
    manifest = tmp_path / "small-context.yaml"
    manifest.write_text(write_manifest(tmp_path, server.base_url).read_text().replace(
        "max_steps: 3}", "max_steps: 1, n_ctx: 1024}"))  # one step: the shortest plan to decode
    env = server_env(tmp_path, manifest)
    task = "Which city is named at the end of this text?\n" + "Rivers, roads and bridges. " * 400 + "Lisbon."
    proc = cli("plan", task, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    trace = json.loads(cli("show", run_id, "--json", env=env).stdout)
    assert trace["task"] == task and "the workers get the whole task" in trace["plan"]["notes"][0]
