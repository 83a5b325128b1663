"""The trace store: every run and step, written to SQLite as it happens.

WAL mode with synchronous=NORMAL: a commit survives the death of the process (not a power cut) and
costs tens of microseconds, so the engine writes each state change directly. The schema evolves
through an append-only list of migrations, so a user's trace database survives every upgrade.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs

from .errors import RunNotFound, RunStateError
from .models import (
    Attempt,
    PlanInfo,
    Run,
    RunStatus,
    StepRecord,
    StepStatus,
    Usage,
    Workflow,
)

HEARTBEAT_S = 5.0
STALE_AFTER_S = 30.0  # a heartbeat older than this means the owner is gone, whatever its pid says

# Append-only: never edit or reorder an entry that has shipped; add a new one.
MIGRATIONS: list[tuple[str, str]] = [
    ("001_initial", """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            task TEXT NOT NULL,
            status TEXT NOT NULL,
            workflow TEXT NOT NULL,
            plan TEXT NOT NULL,
            options TEXT NOT NULL DEFAULT '{}',
            answer TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            owner TEXT,
            heartbeat_at REAL,
            parent_run_id TEXT REFERENCES runs(id),
            parent_step INTEGER
        );
        CREATE INDEX runs_created ON runs(created_at DESC);
        CREATE INDEX runs_parent ON runs(parent_run_id);
        CREATE TABLE steps (
            run_id TEXT NOT NULL REFERENCES runs(id),
            idx INTEGER NOT NULL,
            worker TEXT NOT NULL,
            instruction TEXT NOT NULL,
            access TEXT NOT NULL,
            status TEXT NOT NULL,
            output TEXT,
            error TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,
            calls INTEGER NOT NULL DEFAULT 0,
            started_at REAL,
            ended_at REAL,
            edited INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, idx)
        );
        CREATE TABLE attempts (
            run_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            n INTEGER NOT NULL,
            worker TEXT NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            latency_s REAL,
            started_at REAL NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,
            PRIMARY KEY (run_id, idx, n),
            FOREIGN KEY (run_id, idx) REFERENCES steps(run_id, idx)
        );
    """),
    # A run's reward: 0..1 from an eval grader, a host (rate_run) or a user (CLI rate). The planner
    # learns from these (outcomes.py).
    ("002_rewards", """
        ALTER TABLE runs ADD COLUMN reward REAL;
        ALTER TABLE runs ADD COLUMN reward_note TEXT;
        ALTER TABLE runs ADD COLUMN reward_source TEXT;
        ALTER TABLE runs ADD COLUMN rated_at REAL;
        CREATE INDEX runs_rated ON runs(rated_at) WHERE reward IS NOT NULL;
    """),
]

FINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.BUDGET_EXCEEDED}


def default_db_path() -> Path:
    env = os.environ.get("CONDUCTOR_DB")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("conductor-mcp", appauthor=False)) / "traces.db"


def process_owner() -> str:
    """Who owns a run: host, pid and a per-process token (so a reused pid is not mistaken for us)."""
    return _OWNER


_OWNER = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_alive(owner: str | None, heartbeat_at: float | None, now: float | None = None) -> bool:
    if not owner:
        return False
    if owner == _OWNER:
        return True
    now = time.time() if now is None else now
    if heartbeat_at is None or now - heartbeat_at > STALE_AFTER_S:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host == socket.gethostname() and pid_text.isdigit():
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


class Store:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing -------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
            done = {r[0] for r in db.execute("SELECT name FROM _migrations")}
            for name, sql in MIGRATIONS:
                if name not in done:
                    for statement in filter(str.strip, sql.split(";")):
                        db.execute(statement)
                    db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))

    def applied_migrations(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM _migrations ORDER BY name")]

    # -- runs -----------------------------------------------------------------------------------
    def create_run(self, task: str, workflow: Workflow, plan: PlanInfo, options: dict[str, Any] | None = None,
                   parent_run_id: str | None = None, parent_step: int | None = None) -> str:
        run_id = secrets.token_hex(12)  # 96 random bits: unguessable, and never starts with "-" on a CLI
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (id, task, status, workflow, plan, options, created_at, updated_at,"
                " parent_run_id, parent_step) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, task, RunStatus.PLANNED.value, workflow.model_dump_json(), plan.model_dump_json(),
                 json.dumps(options or {}), now, now, parent_run_id, parent_step),
            )
            self._write_steps(db, run_id, workflow, 0)
        return run_id

    def _write_steps(self, db: sqlite3.Connection, run_id: str, workflow: Workflow, start: int) -> None:
        for i, step in enumerate(workflow.steps[start:], start):
            db.execute(
                "INSERT INTO steps (run_id, idx, worker, instruction, access, status) VALUES (?,?,?,?,?,?)",
                (run_id, i, step.worker, step.instruction, json.dumps(step.access), StepStatus.PENDING.value),
            )

    def options(self, run_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute("SELECT options FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"run_id: no run {run_id!r} in {self.path}")
        result: dict[str, Any] = json.loads(row[0])
        return result

    def parent_of(self, run_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT parent_run_id FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"run_id: no run {run_id!r} (list runs with `conductor-mcp runs` or the "
                              "conductor://runs resource)")
        return row[0] if row[0] is None else str(row[0])

    def get_run(self, run_id: str) -> Run:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"run_id: no run {run_id!r} (list runs with `conductor-mcp runs` or the "
                                  "conductor://runs resource)")
            steps = self._db.execute("SELECT * FROM steps WHERE run_id=? ORDER BY idx", (run_id,)).fetchall()
            attempts = self._db.execute(
                "SELECT * FROM attempts WHERE run_id=? ORDER BY idx, n", (run_id,)).fetchall()
        by_step: dict[int, list[Attempt]] = {}
        for a in attempts:
            by_step.setdefault(a["idx"], []).append(Attempt(
                n=a["n"], worker=a["worker"], status=a["status"], error=a["error"], latency_s=a["latency_s"],
                started_at=a["started_at"], usage=Usage(prompt_tokens=a["prompt_tokens"],
                                                        completion_tokens=a["completion_tokens"],
                                                        cost_usd=a["cost_usd"], calls=1)))
        return self._run_from_row(row, steps, by_step)

    def _run_from_row(self, row: sqlite3.Row, steps: list[sqlite3.Row],
                      attempts: dict[int, list[Attempt]]) -> Run:
        status = RunStatus(row["status"])
        if status == RunStatus.RUNNING and not owner_alive(row["owner"], row["heartbeat_at"]):
            status = RunStatus.INTERRUPTED
        return Run(
            id=row["id"], task=row["task"], status=status,
            workflow=Workflow.model_validate_json(row["workflow"]),
            plan=PlanInfo.model_validate_json(row["plan"]),
            steps=[StepRecord(
                index=s["idx"], worker=s["worker"], instruction=s["instruction"], access=json.loads(s["access"]),
                status=StepStatus(s["status"]), output=s["output"], error=s["error"],
                usage=Usage(prompt_tokens=s["prompt_tokens"], completion_tokens=s["completion_tokens"],
                            cost_usd=s["cost_usd"], calls=s["calls"]),
                started_at=s["started_at"], ended_at=s["ended_at"], edited=bool(s["edited"]),
                attempts=attempts.get(s["idx"], []),
            ) for s in steps],
            answer=row["answer"], error=row["error"], created_at=row["created_at"],
            updated_at=row["updated_at"], owner=row["owner"], heartbeat_at=row["heartbeat_at"],
            parent_run_id=row["parent_run_id"], parent_step=row["parent_step"],
            reward=row["reward"], reward_note=row["reward_note"], reward_source=row["reward_source"],
        )

    def list_runs(self, limit: int = 50, include_children: bool = False) -> list[Run]:
        where = "" if include_children else "WHERE parent_run_id IS NULL"
        with self._lock:
            ids = [r[0] for r in self._db.execute(
                f"SELECT id FROM runs {where} ORDER BY created_at DESC LIMIT ?", (limit,))]
        return [self.get_run(i) for i in ids]

    def children(self, run_id: str, step: int | None = None, rounds: bool = False) -> list[str]:
        """Child runs, oldest first: all, those of one `conductor` step, or the correction rounds."""
        query = "SELECT id FROM runs WHERE parent_run_id=?"
        args: tuple[Any, ...] = (run_id,)
        if step is not None:
            query, args = query + " AND parent_step=?", (run_id, step)
        elif rounds:
            query += " AND parent_step IS NULL"
        with self._lock:
            return [r[0] for r in self._db.execute(query + " ORDER BY created_at", args)]

    def update_options(self, run_id: str, changes: dict[str, Any]) -> None:
        with self._tx() as db:
            row = db.execute("SELECT options FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"run_id: no run {run_id!r}")
            db.execute("UPDATE runs SET options=? WHERE id=?", (json.dumps({**json.loads(row[0]), **changes}), run_id))

    def tree_usage(self, run_id: str) -> Usage:
        """Everything a run cost: its plan and steps, its reviews, and every child run, counted once."""
        total = self.get_run(run_id).usage
        for review in self.options(run_id).get("reviews") or []:
            total = total + PlanInfo.model_validate(review["info"]).usage
        for child in self.children(run_id):
            total = total + self.tree_usage(child)
        return total

    def claim(self, run_id: str) -> Run:
        """Make this process the run's owner; refuse if another live process owns it."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT status, owner, heartbeat_at FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"run_id: no run {run_id!r}")
            if (row["status"] == RunStatus.RUNNING and row["owner"] != _OWNER
                    and owner_alive(row["owner"], row["heartbeat_at"], now)):
                raise RunStateError(f"run {run_id} is running in another live process ({row['owner']}); "
                                    "wait for it, or stop that process first")
            db.execute("UPDATE runs SET status=?, owner=?, heartbeat_at=?, updated_at=?, error=NULL WHERE id=?",
                       (RunStatus.RUNNING.value, _OWNER, now, now, run_id))
            # a step or attempt left running belonged to a process that is gone
            db.execute("UPDATE attempts SET status='interrupted' WHERE run_id=? AND status='running'", (run_id,))
            db.execute("UPDATE steps SET status=? WHERE run_id=? AND status IN (?,?,?)",
                       (StepStatus.PENDING.value, run_id, StepStatus.RUNNING.value, StepStatus.FAILED.value,
                        StepStatus.SKIPPED.value))
        return self.get_run(run_id)

    def heartbeat(self, run_ids: list[str]) -> None:
        if not run_ids:
            return
        now = time.time()
        with self._tx() as db:
            db.executemany("UPDATE runs SET heartbeat_at=? WHERE id=? AND owner=?",
                           [(now, r, _OWNER) for r in run_ids])

    def finish_run(self, run_id: str, status: RunStatus, answer: str | None = None,
                   error: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET status=?, answer=COALESCE(?, answer), error=?, updated_at=?,"
                       " owner=NULL WHERE id=?", (status.value, answer, error, time.time(), run_id))

    def rate(self, run_id: str, score: float, note: str | None = None, source: str = "user") -> None:
        """Store a run's reward (a later rating replaces an earlier one). Only a root run is rated: its
        answer is what a user sees; children and rounds are parts of it."""
        if not 0.0 <= score <= 1.0:
            raise RunStateError(f"score: {score!r}; a reward is between 0 (unusable) and 1 (correct)")
        parent = self.parent_of(run_id)
        if parent is not None:
            raise RunStateError(f"run {run_id} is part of run {parent}; rate that one")
        with self._tx() as db:
            db.execute("UPDATE runs SET reward=?, reward_note=?, reward_source=?, rated_at=? WHERE id=?",
                       (score, note, source, time.time(), run_id))

    def rated_runs(self, before: float | None = None, limit: int = 5000) -> list[sqlite3.Row]:
        """Rewarded root runs, newest first, with what the planner learns from: the task, the strategy,
        the final step's worker, the number of steps and the tokens and cost of the run's own steps."""
        with self._lock:
            return self._db.execute(
                "SELECT r.id, r.task, r.options, r.reward, r.workflow,"
                " (SELECT worker FROM steps s WHERE s.run_id = r.id ORDER BY idx DESC LIMIT 1) AS final_worker,"
                " (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id) AS n_steps,"
                " (SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM steps s"
                "  WHERE s.run_id = r.id) AS tokens,"
                " (SELECT SUM(cost_usd) FROM steps s WHERE s.run_id = r.id) AS cost_usd"
                " FROM runs r WHERE r.reward IS NOT NULL AND r.parent_run_id IS NULL AND r.rated_at < ?"
                " ORDER BY r.rated_at DESC LIMIT ?", (before if before is not None else math.inf, limit)).fetchall()

    def edit_step(self, run_id: str, index: int, workflow: Workflow) -> None:
        """Record a host's change of a step's instruction or worker (run_step)."""
        step = workflow.steps[index]
        with self._tx() as db:
            db.execute("UPDATE runs SET workflow=?, updated_at=? WHERE id=?",
                       (workflow.model_dump_json(), time.time(), run_id))
            db.execute("UPDATE steps SET worker=?, instruction=?, edited=1 WHERE run_id=? AND idx=?",
                       (step.worker, step.instruction, run_id, index))

    # -- steps and attempts ---------------------------------------------------------------------
    def step_started(self, run_id: str, index: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE steps SET status=?, started_at=COALESCE(started_at, ?), error=NULL"
                       " WHERE run_id=? AND idx=?", (StepStatus.RUNNING.value, time.time(), run_id, index))

    def attempt_started(self, run_id: str, index: int, worker: str) -> int:
        with self._tx() as db:
            n = db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE run_id=? AND idx=?",
                           (run_id, index)).fetchone()[0]
            db.execute("INSERT INTO attempts (run_id, idx, n, worker, status, started_at) VALUES (?,?,?,?,?,?)",
                       (run_id, index, n, worker, "running", time.time()))
        return int(n)

    def attempt_ended(self, run_id: str, index: int, n: int, status: str, latency_s: float,
                      usage: Usage | None = None, error: str | None = None) -> None:
        u = usage or Usage()
        with self._tx() as db:
            db.execute("UPDATE attempts SET status=?, error=?, latency_s=?, prompt_tokens=?, completion_tokens=?,"
                       " cost_usd=? WHERE run_id=? AND idx=? AND n=?",
                       (status, error, latency_s, u.prompt_tokens, u.completion_tokens, u.cost_usd,
                        run_id, index, n))

    def step_completed(self, run_id: str, index: int, output: str, usage: Usage) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE steps SET status=?, output=?, error=NULL, prompt_tokens=?, completion_tokens=?,"
                       " cost_usd=?, calls=?, ended_at=? WHERE run_id=? AND idx=?",
                       (StepStatus.COMPLETED.value, output, usage.prompt_tokens, usage.completion_tokens,
                        usage.cost_usd, usage.calls, now, run_id, index))
            db.execute("UPDATE runs SET updated_at=? WHERE id=?", (now, run_id))

    def step_ended(self, run_id: str, index: int, status: StepStatus, error: str | None,
                   usage: Usage | None = None) -> None:
        u = usage or Usage()
        with self._tx() as db:
            db.execute("UPDATE steps SET status=?, error=?, prompt_tokens=?, completion_tokens=?, cost_usd=?,"
                       " calls=?, ended_at=? WHERE run_id=? AND idx=?",
                       (status.value, error, u.prompt_tokens, u.completion_tokens, u.cost_usd, u.calls,
                        time.time(), run_id, index))

    def cancel_in_flight(self, run_id: str) -> None:
        """A cancelled run keeps its completed steps; what was in flight goes back to pending."""
        with self._tx() as db:
            db.execute("UPDATE attempts SET status='cancelled' WHERE run_id=? AND status='running'", (run_id,))
            db.execute("UPDATE steps SET status=? WHERE run_id=? AND status=?",
                       (StepStatus.PENDING.value, run_id, StepStatus.RUNNING.value))

    def reset_step(self, run_id: str, index: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE steps SET status=?, error=NULL WHERE run_id=? AND idx=?",
                       (StepStatus.PENDING.value, run_id, index))
