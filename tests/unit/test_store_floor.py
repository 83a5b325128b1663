"""bench.store_floor: its replay runs the very transactions the store's calls make, on a real SQLite file, so that
its "SQLite alone" figure is the floor of those calls and not of some other work."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.store_floor import CALLS, WRITES, Recording, left, measure, one_run, replay, replica_connection
from conductor_mcp.store import new_run_id
from conductor_mcp.store.sqlite import SQLiteStore


def test_each_store_call_is_recorded_as_its_own_transaction_and_replays_to_the_same_trace(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    recording = Recording(store._db)
    store._db = recording  # type: ignore[assignment]
    run_id = one_run(store, recording.making)
    by_call = {c: [sql.strip() for call, sql, _ in recording.log if call == c] for c in CALLS}
    assert {c: len(v) for c, v in by_call.items()} == {"add_claimed_run": 4, "attempt_started": 6,
                                                      "step_completed": 5, "finish_run": 1, "get_run": 2}
    for call in WRITES[:3]:  # each of these writes is one transaction, begun and committed by the call itself
        assert by_call[call][0] == "BEGIN IMMEDIATE" and by_call[call][-1] == "COMMIT", by_call[call]
    assert by_call["finish_run"][0].startswith("UPDATE runs")  # one statement, which commits by itself
    assert all(sql.startswith("SELECT") for sql in by_call["get_run"])

    SQLiteStore(tmp_path / "raw.db").close()
    raw = replica_connection(tmp_path / "raw.db")
    spent: dict[str, list[float]] = {c: [] for c in CALLS}
    replay(raw, recording.log, run_id, new_run_id(), spent)
    replay(raw, recording.log, run_id, new_run_id(), spent)
    assert left(raw) == {"completed runs": 2, "completed steps": 2, "ok attempts": 2}
    assert left(store._db) == {"completed runs": 1, "completed steps": 1, "ok attempts": 1}
    assert all(len(v) == 2 for v in spent.values())


def test_a_replay_that_would_update_nothing_is_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    recording = Recording(store._db)
    store._db = recording  # type: ignore[assignment]
    run_id = one_run(store, recording.making)
    SQLiteStore(tmp_path / "raw.db").close()
    raw = replica_connection(tmp_path / "raw.db")
    # only the writes after the insert: their UPDATEs find no run, so they would time work that was never done
    later = [entry for entry in recording.log if entry[0] != "add_claimed_run"]
    with pytest.raises(RuntimeError, match="updated 0 rows"):
        replay(raw, later, run_id, new_run_id(), {c: [] for c in CALLS})


def test_measure_checks_both_files_hold_the_same_runs() -> None:
    out = measure(rounds=6, warm=3)
    assert out["left"]["store"] == out["left"]["sqlite"] == {"completed runs": 9, "completed steps": 9,
                                                            "ok attempts": 9}
    for side in ("store", "sqlite"):
        assert set(out[f"{side}_us"]) == set(CALLS)
    with pytest.raises(ValueError, match="at least 1"):
        measure(rounds=0)
