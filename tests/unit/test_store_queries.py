"""The store's queries for the command line, on a real SQLite file and a real PostgreSQL server: time spent
running across executions, run ids by prefix, and the migration that brought the running time in."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from conductor_mcp.errors import RunNotFound
from conductor_mcp.models import PlanInfo, RunStatus, Workflow
from conductor_mcp.store import MIGRATIONS, Store, process_owner

from ..conftest import execute

WF = Workflow.model_validate({"steps": [{"worker": "a", "instruction": "x"}]})


def shift(store: Store, run_id: str, **columns: float) -> None:
    """Set time columns as another process, at another time, would have left them."""
    sets = ", ".join(f"{k}=?" for k in columns)
    execute(store, f"UPDATE runs SET {sets} WHERE id=?", *columns.values(), run_id)


def test_running_time_counts_executions_not_the_gaps_between(any_store: Store) -> None:
    store = any_store
    run_id = store.create_run("t", WF, PlanInfo(source="conductor", planner="p", latency_s=2.0))
    assert store.running_seconds(run_id) == 2.0  # planned: the planning alone
    lease, _ = store.claim(run_id)
    claimed = store.get_run(run_id).updated_at
    shift(store, run_id, claimed_at=claimed - 10)  # this execution began 10 s ago
    assert store.running_seconds(run_id) >= 12.0  # live: counts until now
    store.finish_run(lease, RunStatus.FAILED, error="x")
    first = store.running_seconds(run_id)
    assert first >= 12.0 and store.get_run(run_id).status == RunStatus.FAILED

    # a second execution (by `resume`, however much later), whose process dies 3 s after its claim
    store.claim(run_id)
    now = store.get_run(run_id).updated_at
    shift(store, run_id, claimed_at=now, heartbeat_at=now + 3, lease_expires_at=now - 1)  # expired (PostgreSQL)
    host = process_owner().rsplit(":", 3)[0]
    # this host, a pid whose start time is not this process's: gone (SQLite)
    execute(store, "UPDATE runs SET owner=? WHERE id=?", f"{host}:{os.getpid()}:1.00:dead", run_id)
    assert store.get_run(run_id).status == RunStatus.INTERRUPTED
    assert store.running_seconds(run_id) == pytest.approx(first + 3.0)
    lease, _ = store.claim(run_id)  # a third takes over: the dead one's 3 s are kept
    store.finish_run(lease, RunStatus.COMPLETED, answer="a")
    total = store.running_seconds(run_id)
    assert total >= first + 3.0
    [listed] = store.find_runs(5)
    assert listed.run_id == run_id and listed.running_s == pytest.approx(total)


def test_resolve_whole_id_prefix_last_and_ambiguity(any_store: Store) -> None:
    store = any_store
    plan = PlanInfo(source="host", planner="host")
    ids = [store.create_run(f"task {i}", WF, plan) for i in range(17)]
    assert store.resolve_run("last") == ids[-1]
    assert all(store.resolve_run(i) == i for i in ids)
    unique = next(i for i in ids if sum(j.startswith(i[:5]) for j in ids) == 1)
    assert store.resolve_run(unique[:5]) == unique == store.resolve_run(unique[:5].upper())
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) > 1)  # 17 ids, 16 digits
    with pytest.raises(RunNotFound, match=f"'{shared}' is the start of several run ids") as info:
        store.resolve_run(shared)
    assert all(f"  {i}  planned  task " in str(info.value) for i in ids if i.startswith(shared))
    with pytest.raises(RunNotFound, match="empty"):
        store.resolve_run(" ")
    with pytest.raises(RunNotFound, match="none whose id starts so"):
        store.resolve_run("zz")


def test_last_on_an_empty_store(any_store: Store) -> None:
    with pytest.raises(RunNotFound, match="holds no runs yet"):
        any_store.resolve_run("last")


def test_runs_of_an_older_schema_keep_their_old_figure(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        for name, sql in MIGRATIONS[:3]:
            db.executescript(sql)
            db.execute("INSERT INTO _migrations VALUES (?, 1.0)", (name,))
        plan = PlanInfo(source="conductor", planner="p", latency_s=0.5).model_dump_json()
        for run_id, status in (("done", "completed"), ("waiting", "planned")):
            db.execute("INSERT INTO runs (id, task, status, workflow, plan, created_at, updated_at)"
                       " VALUES (?, 't', ?, ?, ?, 100.0, 104.0)", (run_id, status, WF.model_dump_json(), plan))
    store = Store(path)
    assert store.running_seconds("done") == 4.5  # creation to last update, as before, and its planning
    assert store.running_seconds("waiting") == 0.5
    store.close()
