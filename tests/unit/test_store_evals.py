"""Recorded evals in the trace store, on a real SQLite file and a real PostgreSQL server: add, list
(newest first), read, and refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conductor_mcp.errors import EvalNotFound, StoreError
from conductor_mcp.store import MIGRATIONS, Store, open_store

from ..conftest import applied_migrations


def report(strategies: dict[str, int], tasks: int) -> dict[str, Any]:
    """A report shaped as evals.report_json makes it: `strategies` maps a name to its number correct."""
    return {
        "suite": "suite.jsonl",
        "strategies": {name: {"accuracy": round(correct / tasks, 4), "correct": correct, "n": tasks,
                              "mean_tokens": 100.0 * (i + 1), "mean_seconds": 0.5, "mean_steps": 1.0,
                              "mean_cost_usd": None, "mean_reward": 0.0, "mean_calls": 1.0}
                       for i, (name, correct) in enumerate(strategies.items())},
        "runs": [{"task_id": f"t{t}", "strategy": name, "run_id": f"r{t}{name}", "status": "completed",
                  "score": 1.0 if t < correct else 0.0, "detail": "", "tokens": 10, "steps": 1, "final_worker": "w"}
                 for t in range(tasks) for name, correct in strategies.items()],
    }


def test_the_evals_migration_follows_the_step_code(tmp_path: Path) -> None:
    names = [name for name, _ in MIGRATIONS]
    assert names[5] == "006_evals" and names.index("006_evals") == names.index("005_step_code") + 1
    assert names == sorted(names) and len(set(names)) == len(names)  # append-only, numbered in order
    store = Store(tmp_path / "t.db")
    try:
        assert "006_evals" in applied_migrations(tmp_path / "t.db")
    finally:
        store.close()


def test_add_list_and_get(backend: str) -> None:
    store = open_store(backend)
    first = report({"conductor": 2, "moa": 1, "single:a": 3}, tasks=3)
    older = store.add_eval("eval", "suite.jsonl", 1000.0, 1012.5, first)
    newer = store.add_eval("calibrate", "other.jsonl", 2000.0, 2001.0, report({"single:b": 0, "conductor": 1}, 2))
    store.close()

    store = open_store(backend)  # what was recorded outlives the process that recorded it
    try:
        listed = store.list_evals()
        assert [e.eval_id for e in listed] == [newer, older]  # newest first
        e = listed[1]
        assert (e.command, e.suite, e.started_at, e.ended_at) == ("eval", "suite.jsonl", 1000.0, 1012.5)
        assert e.tasks == 3 and e.strategies == ("conductor", "moa", "single:a")  # the report's order
        assert listed[0].strategies == ("single:b", "conductor") and listed[0].tasks == 2
        assert [e.eval_id for e in store.list_evals(limit=1)] == [newer]

        record = store.get_eval(older)
        assert record.report == first and record.command == "eval" and record.eval_id == older
        assert len({older, newer}) == 2 and len(older) >= 16
    finally:
        store.close()


def test_an_unknown_eval_is_named(any_store: Store) -> None:
    with pytest.raises(EvalNotFound, match="no eval 'nope'"):
        any_store.get_eval("nope")
    assert any_store.list_evals() == []


def test_a_read_only_store_lists_evals_and_refuses_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = Store(path)
    eval_id = store.add_eval("eval", "s.jsonl", 1.0, 2.0, report({"conductor": 1}, 1))
    store.close()
    path.chmod(0o444)
    try:
        ro = Store(path)
        try:
            assert [e.eval_id for e in ro.list_evals()] == [eval_id]
            assert ro.get_eval(eval_id).report["strategies"]["conductor"]["correct"] == 1
            with pytest.raises(StoreError, match="read-only"):
                ro.add_eval("eval", "s.jsonl", 3.0, 4.0, report({"conductor": 0}, 1))
        finally:
            ro.close()
    finally:
        path.chmod(0o644)
