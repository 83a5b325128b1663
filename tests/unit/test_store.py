"""The trace store on a real SQLite file: migrations, WAL, statuses, ownership, interrupted runs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conductor_mcp.errors import RunNotFound, RunStateError
from conductor_mcp.models import PlanInfo, RunStatus, StepStatus, Usage, Workflow
from conductor_mcp.store import MIGRATIONS, Store, process_owner

WF = Workflow.model_validate({"steps": [{"worker": "a", "instruction": "x"},
                                        {"worker": "a", "instruction": "y", "access": "all"}]})
PLAN = PlanInfo(source="host", planner="host")


def test_migrations_wal_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    s = Store(path)
    assert s.applied_migrations() == [name for name, _ in MIGRATIONS]
    run_id = s.create_run("task", WF, PLAN)
    s.close()
    s2 = Store(path)  # re-applying nothing; data intact
    assert s2.get_run(run_id).task == "task"
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_run_ids_unguessable(store: Store) -> None:
    ids = {store.create_run("t", WF, PLAN) for _ in range(50)}
    assert len(ids) == 50 and all(len(i) >= 16 for i in ids)


def test_lifecycle_and_usage(store: Store) -> None:
    run_id = store.create_run("t", WF, PLAN, {"workers": ["a"]})
    run = store.get_run(run_id)
    assert run.status == RunStatus.PLANNED and [s.status for s in run.steps] == [StepStatus.PENDING] * 2
    store.claim(run_id)
    store.step_started(run_id, 0)
    n = store.attempt_started(run_id, 0, "a")
    store.attempt_ended(run_id, 0, n, "error", 0.1, error="boom")
    n2 = store.attempt_started(run_id, 0, "a")
    u = Usage(prompt_tokens=10, completion_tokens=5, cost_usd=None, calls=1)
    store.attempt_ended(run_id, 0, n2, "ok", 0.2, u)
    store.step_completed(run_id, 0, "out", u)
    run = store.get_run(run_id)
    assert run.status == RunStatus.RUNNING
    assert [a.status for a in run.steps[0].attempts] == ["error", "ok"] and run.steps[0].attempts[0].error == "boom"
    assert run.usage.total_tokens == 15 and run.usage.cost_usd is None
    store.finish_run(run_id, RunStatus.COMPLETED, answer="ans")
    assert store.get_run(run_id).answer == "ans"
    assert store.options(run_id) == {"workers": ["a"]}
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        store.get_run("nope")


def test_dead_owner_is_interrupted_and_claimable(store: Store) -> None:
    run_id = store.create_run("t", WF, PLAN)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    host = process_owner().split(":")[0]
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET status='running', owner=?, heartbeat_at=? WHERE id=?",
                   (f"{host}:{dead_pid}:abcd", time.time(), run_id))
        db.execute("UPDATE steps SET status='running' WHERE run_id=? AND idx=0", (run_id,))
        db.execute("INSERT INTO attempts (run_id, idx, n, worker, status, started_at) VALUES (?,0,1,'a','running',?)",
                   (run_id, time.time()))
    assert store.get_run(run_id).status == RunStatus.INTERRUPTED
    run = store.claim(run_id)
    assert run.status == RunStatus.RUNNING and run.steps[0].status == StepStatus.PENDING
    assert run.steps[0].attempts[0].status == "interrupted"


def test_live_owner_refused(store: Store) -> None:
    run_id = store.create_run("t", WF, PLAN)
    host = process_owner().split(":")[0]
    with sqlite3.connect(store.path) as db:  # our parent: alive, with a fresh heartbeat
        db.execute("UPDATE runs SET status='running', owner=?, heartbeat_at=? WHERE id=?",
                   (f"{host}:{os.getppid()}:beef", time.time(), run_id))
    assert store.get_run(run_id).status == RunStatus.RUNNING
    with pytest.raises(RunStateError, match="another live process"):
        store.claim(run_id)
    with sqlite3.connect(store.path) as db:  # a stale heartbeat means the owner is gone
        db.execute("UPDATE runs SET heartbeat_at=? WHERE id=?", (time.time() - 3600, run_id))
    assert store.get_run(run_id).status == RunStatus.INTERRUPTED


def test_default_path_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conductor_mcp.store import default_db_path

    monkeypatch.setenv("CONDUCTOR_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"
    monkeypatch.delenv("CONDUCTOR_DB")
    assert default_db_path().name == "traces.db" and "conductor-mcp" in str(default_db_path())
