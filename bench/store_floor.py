"""What a one-step run's trace costs in the store, against SQLite alone: how far the store's calls are from the floor.

`python -m bench.store_floor [-n 3000]` prints JSON. A one-step run makes five store calls, as Engine makes them for
a solve'd run: the run inserted claimed, the attempt started, the step completed, the run finished, the run read
back. Each round makes them through a Store on a SQLite file, then replays the statements those calls issue (their
SQL and parameters, recorded through the store's connection during the warm-up; the run's id renamed to a new one
in each replay) straight through sqlite3 on a second file of the same schema: the transactions the trace promises,
with none of the store's Python. Rounds alternate which goes first; medians of wall time per call, in microseconds
(a one-step run's figure is the sum of its calls' medians). Medians leave out what both sides meet now and then: a
WAL checkpoint's sync to disk (about every 1,000 pages), a collection. No engine and no event loop: bench.lean
measures the run's own figure. The replay is checked: each UPDATE it replays must change one row, and at the end both
files must hold as many completed runs, steps and successful attempts.
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
from typing import Any, Protocol, TypeVar

from conductor_mcp.store.sqlite import SQLiteStore

CALLS = ("add_claimed_run", "attempt_started", "step_completed", "finish_run", "get_run")
WRITES = CALLS[:4]
T = TypeVar("T")
Log = list[tuple[str, str, tuple[Any, ...]]]  # (the store call, its SQL, its parameters), in order
# what a run leaves behind in each file: the replay must leave the same
LEFT = {"completed runs": "SELECT COUNT(*) FROM runs WHERE status='completed' AND answer IS NOT NULL",
        "completed steps": "SELECT COUNT(*) FROM steps WHERE status='completed' AND output IS NOT NULL",
        "ok attempts": "SELECT COUNT(*) FROM attempts WHERE status='ok' AND latency_s IS NOT NULL"}


class Timed(Protocol):
    """Makes a store call (`fn`) on behalf of `name`, and answers what it answered."""

    def __call__(self, name: str, fn: Callable[[], T], /) -> T: ...


class Recording:
    """The store's connection, recording each statement it runs and the call that ran it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.call = ""
        self.log: Log = []

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Cursor:
        assert isinstance(params, tuple | list), "the store binds parameters by position"
        self.log.append((self.call, sql, tuple(params)))
        return self.db.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def making(self, name: str, fn: Callable[[], T], /) -> T:
        """Make a store call, its statements recorded under `name` (a Timed with no clock)."""
        self.call = name
        return fn()


def one_run(store: SQLiteStore, timed: Timed) -> str:
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
    return lease.run_id


def replay(db: sqlite3.Connection, log: Log, old_id: str, new_id: str, spent: dict[str, list[float]]) -> None:
    """The recorded statements, call by call, with `old_id` renamed (a whole parameter equal to it: ids are 96
    random bits, so nothing else is): each call's wall time into `spent`."""
    by_call: dict[str, list[tuple[str, tuple[Any, ...]]]] = {c: [] for c in CALLS}
    for call, sql, params in log:
        by_call[call].append((sql, tuple(new_id if p == old_id else p for p in params)))
    for call in CALLS:
        started = time.perf_counter()
        for sql, params in by_call[call]:
            cursor = db.execute(sql, params)
            if sql.lstrip().upper().startswith("UPDATE") and cursor.rowcount != 1:
                raise RuntimeError(f"replay of {call}: {sql[:60]!r} updated {cursor.rowcount} rows, not 1")
            cursor.fetchall()
        spent[call].append(time.perf_counter() - started)


def replica_connection(path: Path) -> sqlite3.Connection:
    """A connection as the store opens its own: WAL, synchronous=NORMAL, foreign keys, rows by name."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.row_factory = sqlite3.Row
    return db


def left(db: sqlite3.Connection) -> dict[str, int]:
    return {what: int(db.execute(sql).fetchone()[0]) for what, sql in LEFT.items()}


def measure(rounds: int, warm: int = 200) -> dict[str, Any]:
    from conductor_mcp.store import new_run_id

    if rounds < 1 or warm < 1:
        raise ValueError(f"rounds and warm-up runs: at least 1 each, not {rounds} and {warm}")
    with tempfile.TemporaryDirectory(prefix="bench-store-floor-") as tmp:
        store = SQLiteStore(Path(tmp) / "store.db")
        SQLiteStore(Path(tmp) / "raw.db").close()  # the same schema, written by nothing but the replay
        raw = replica_connection(Path(tmp) / "raw.db")
        spent: dict[str, dict[str, list[float]]] = {"store": {c: [] for c in CALLS}, "sqlite": {c: [] for c in CALLS}}
        recording = Recording(store._db)

        def timed(name: str, fn: Callable[[], T]) -> T:
            started = time.perf_counter()
            out = recording.making(name, fn)
            spent["store"][name].append(time.perf_counter() - started)
            return out

        store._db = recording  # type: ignore[assignment]
        for _ in range(warm):  # the warm-up records what a run's calls execute (the last run's is replayed)
            recording.log = []
            run_id = one_run(store, timed)
            replay(raw, recording.log, run_id, new_run_id(), spent["sqlite"])
        store._db = recording.db  # the measured runs go straight to the connection
        for times in spent.values():
            for values in times.values():
                values.clear()
        for r in range(rounds):  # which goes first alternates
            if r % 2:
                replay(raw, recording.log, run_id, new_run_id(), spent["sqlite"])
            one_run(store, timed)
            if not r % 2:
                replay(raw, recording.log, run_id, new_run_id(), spent["sqlite"])
        results = {"store": left(store._db), "sqlite": left(raw)}
        raw.close()
        store.close()
    if results["store"] != results["sqlite"] or results["store"]["completed runs"] != warm + rounds:
        raise RuntimeError(f"the replay did not do the store's work: {results}")
    out: dict[str, Any] = {"rounds": rounds, "warm": warm, "left": results,
                           "statements": {c: sum(1 for call, _, _ in recording.log if call == c) for c in CALLS}}
    for side, calls in spent.items():  # a one-step run's figure: the sum of its calls' medians
        out[f"{side}_us"] = {c: statistics.median(v) * 1e6 for c, v in calls.items()}
        out[f"{side}_total_us"] = sum(out[f"{side}_us"].values())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=3000, help="measured rounds")
    parser.add_argument("--warm", type=int, default=200, help="warm-up rounds (the last one's statements are replayed)")
    args = parser.parse_args()
    print(json.dumps(measure(args.n, args.warm), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
