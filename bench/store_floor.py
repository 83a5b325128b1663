"""What a one-step run's trace costs in the store, against SQLite alone: how far the store's calls are from the floor.

`python -m bench.store_floor [-n 2000]` prints JSON. A one-step run makes five store calls, as Engine makes them for
a solve'd run: the run inserted claimed, the attempt started, the step completed, the run finished, the run read
back. Each round makes them through a Store on a SQLite file, then replays the statements those calls issue (their
SQL and parameters, recorded through the store's connection during the warm-up; the run's id renamed to a new one
in each replay) straight through sqlite3 on a second file of the same schema: the transactions the trace promises,
with none of the store's Python. Rounds alternate which goes first; medians of wall time per call, in microseconds
(these calls wait on no I/O: WAL writes go to the page cache). No engine and no event loop: bench.lean measures the
run's own figure.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CALLS = ("add_claimed_run", "attempt_started", "step_completed", "finish_run", "get_run")


class Recording:
    """The store's connection, recording each statement it runs and the call that ran it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.call = ""
        self.log: list[tuple[str, str, tuple[Any, ...]]] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self.log.append((self.call, sql, tuple(params)))
        return self.db.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def one_run(store: Any, timed: Callable[[str, Callable[[], Any]], Any]) -> str:
    """The five calls of a one-step run, each through `timed(name, fn)`; the run's id."""
    from conductor_mcp.models import PlanInfo, RunStatus, Usage, Workflow

    workflow = Workflow.model_validate({"steps": [{"worker": "strong", "instruction": "Summarise the trade-offs "
                                                   "between optimistic and pessimistic locking.", "access": "none"}]})
    task, plan = "a task " * 12, PlanInfo(source="host", planner="host")
    claimed = timed("add_claimed_run", lambda: store.add_claimed_run(task, workflow, plan))
    lease = claimed.lease
    n = timed("attempt_started", lambda: store.attempt_started(lease, 0, "strong", step_start=True))
    usage = Usage(prompt_tokens=40, completion_tokens=60, calls=1)
    answer = "An answer of a few hundred characters. " * 8
    timed("step_completed", lambda: store.step_completed(lease, 0, answer, usage, (n, 0.001, usage)))
    timed("finish_run", lambda: store.finish_run(lease, RunStatus.COMPLETED, answer=answer))
    timed("get_run", lambda: store.get_run(lease.run_id))
    return str(lease.run_id)


def replay(db: sqlite3.Connection, log: list[tuple[str, str, tuple[Any, ...]]], old_id: str, new_id: str,
           spent: dict[str, list[float]]) -> None:
    """The recorded statements, call by call, with `old_id` renamed: each call's wall time into `spent`."""
    by_call: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
    for call, sql, params in log:
        by_call.setdefault(call, []).append((sql, tuple(new_id if p == old_id else p for p in params)))
    for call in CALLS:
        started = time.perf_counter()
        for sql, params in by_call[call]:
            db.execute(sql, params).fetchall()
        spent[call].append(time.perf_counter() - started)


def measure(rounds: int, warm: int = 200) -> dict[str, Any]:
    from conductor_mcp.store import new_run_id
    from conductor_mcp.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="bench-store-floor-") as tmp:
        store = SQLiteStore(Path(tmp) / "store.db")
        SQLiteStore(Path(tmp) / "raw.db").close()  # the same schema, written by nothing but the replay
        raw = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=NORMAL")
        raw.execute("PRAGMA foreign_keys=ON")
        spent: dict[str, dict[str, list[float]]] = {"store": {c: [] for c in CALLS}, "sqlite": {c: [] for c in CALLS}}
        recording = Recording(store._db)

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            recording.call = name
            started = time.perf_counter()
            out = fn()
            spent["store"][name].append(time.perf_counter() - started)
            return out

        store._db = recording  # type: ignore[assignment]
        for _ in range(warm):  # the warm-up records what a run's calls execute (the last run's is replayed)
            recording.log = []
            run_id = one_run(store, timed)
            replay(raw, recording.log, run_id, new_run_id(), spent["sqlite"])
        store._db = recording.db  # the measured runs go straight to the connection
        log, spent = recording.log, {k: {c: [] for c in CALLS} for k in spent}
        for r in range(rounds):
            if r % 2:
                replay(raw, log, run_id, new_run_id(), spent["sqlite"])
            one_run(store, timed)
            if not r % 2:
                replay(raw, log, run_id, new_run_id(), spent["sqlite"])
        # a check on the replay: it ran as many runs to their end as the store did
        completed = {name: db.execute("SELECT COUNT(*) FROM runs WHERE status='completed' AND answer IS NOT NULL")
                     .fetchone()[0] for name, db in (("store", store._db), ("sqlite", raw))}
        raw.close()
        store.close()
    out: dict[str, Any] = {"rounds": rounds, "statements": {c: sum(1 for call, _, _ in log if call == c)
                                                            for c in CALLS}, "completed_runs": completed}
    for side, calls in spent.items():
        out[f"{side}_us"] = {c: statistics.median(v) * 1e6 for c, v in calls.items()}
        out[f"{side}_total_us"] = sum(out[f"{side}_us"].values())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="rounds (after 200 to warm up)")
    print(json.dumps(measure(parser.parse_args().n), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
