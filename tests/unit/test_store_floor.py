"""bench.store_floor: its replay runs the very transactions the store's calls make, on a real SQLite file, so that
its "SQLite alone" figure is the floor of those calls and not of some other work."""

from __future__ import annotations

from bench.store_floor import CALLS, measure


def test_the_replay_carries_as_many_runs_to_their_end_as_the_store_does() -> None:
    out = measure(rounds=6, warm=3)
    assert out["completed_runs"] == {"store": 9, "sqlite": 9}  # each replay completed a run of its own
    # every call was recorded, each write in its own transaction (BEGIN and COMMIT among its statements)
    assert set(out["statements"]) == set(CALLS)
    assert all(out["statements"][c] >= 3 for c in CALLS if c != "get_run")
    assert out["statements"]["get_run"] >= 1
    for side in ("store", "sqlite"):
        assert set(out[f"{side}_us"]) == set(CALLS) and all(v > 0 for v in out[f"{side}_us"].values())
