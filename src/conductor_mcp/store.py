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
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
import psutil

from .errors import EvalNotFound, LeaseLost, RunNotFound, RunStateError, StoreError
from .models import (
    Attempt,
    PlanInfo,
    Run,
    RunOptions,
    RunStatus,
    StepRecord,
    StepStatus,
    Usage,
    Workflow,
)
from .redact import redact, redact_optional

# Across hosts only a heartbeat tells whether the owner lives: older than this, it is taken for gone.
STALE_AFTER_S = 30.0

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
    # A lease epoch, raised by every claim: each write that records a step or ends a run names the
    # epoch it holds, so a process that lost the run (paused, then taken over) can write nothing.
    ("003_lease", """
        ALTER TABLE runs ADD COLUMN lease INTEGER NOT NULL DEFAULT 0;
    """),
    # Time spent running, across executions: a claim starts one (claimed_at), finishing the run adds it
    # to run_s; a process that died ends at its last heartbeat. Runs from before keep the old figure,
    # creation to last update.
    ("004_run_time", """
        ALTER TABLE runs ADD COLUMN run_s REAL NOT NULL DEFAULT 0;
        ALTER TABLE runs ADD COLUMN claimed_at REAL;
        UPDATE runs SET run_s = MAX(updated_at - created_at, 0) WHERE status <> 'planned';
    """),
    # The program a python worker's step ran (its output is what the program printed).
    ("005_step_code", """
        ALTER TABLE steps ADD COLUMN code TEXT;
    """),
    # Each `eval` and `calibrate`: its report (evals.report_json: per-strategy summaries and per-run rows), so
    # that the web view can compare strategies after the terminal's table has scrolled away.
    ("006_evals", """
        CREATE TABLE evals (
            id TEXT PRIMARY KEY,
            command TEXT NOT NULL,
            suite TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL NOT NULL,
            report TEXT NOT NULL
        );
        CREATE INDEX evals_started ON evals(started_at DESC);
    """),
]

FINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.BUDGET_EXCEEDED}

# A run's strategy as listings name it: a workflow the host wrote is `host`, whatever strategy was passed
STRATEGY_SQL = ("CASE WHEN json_extract(plan, '$.source') = 'host' THEN 'host'"
                " ELSE COALESCE(json_extract(options, '$.strategy'), 'conductor') END")


def strategy_of(plan_source: str | None, options: RunOptions) -> str:
    """STRATEGY_SQL in Python."""
    return "host" if plan_source == "host" else options.strategy


@dataclass(frozen=True)
class RunListing:
    """A root run as `conductor-mcp runs` finds it: its id, strategy and time spent running."""

    run_id: str
    strategy: str
    running_s: float


def _running_s(row: sqlite3.Row, now: float) -> float:
    """Planning, then every execution: finished ones are in run_s; the one in progress counts until now,
    or, if its process is gone, until its last heartbeat."""
    total = float(row["run_s"] or 0) + float(row["plan_s"] or 0)
    claimed = row["claimed_at"]
    if claimed is not None:
        alive = row["status"] == RunStatus.RUNNING and owner_alive(row["owner"], row["heartbeat_at"], now)
        total += max((now if alive else row["heartbeat_at"] or claimed) - claimed, 0.0)
    return total


def _matches(task: str | None, answer: str | None, terms: str) -> bool:
    """Every whitespace-separated term occurs in the task or the answer, ignoring case (any script)."""
    text = f"{task or ''}\n{answer or ''}".casefold()
    return all(term in text for term in terms.casefold().split())


def new_run_id() -> str:
    return secrets.token_hex(12)  # 96 random bits: unguessable, and never starts with "-" on a CLI


def default_db_path() -> Path:
    env = os.environ.get("CONDUCTOR_DB")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("conductor-mcp", appauthor=False)) / "traces.db"


def _host_id() -> str:
    # containers sharing one database volume have distinct hostnames but may share pids
    return os.environ.get("CONDUCTOR_HOST_ID") or socket.gethostname()


def _start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def _make_owner() -> str:
    """Host, pid, the process's start time (so a reused pid is not mistaken for us) and a token."""
    return f"{_host_id()}:{os.getpid()}:{_start_time(os.getpid()) or 0:.2f}:{secrets.token_hex(4)}"


_OWNER = _make_owner()


def process_owner() -> str:
    """Who owns a run this process executes."""
    return _OWNER


def stale_after_s() -> float:
    """CONDUCTOR_STALE_AFTER_S shortens it (tests); owners beat six times within it."""
    return float(os.environ.get("CONDUCTOR_STALE_AFTER_S") or STALE_AFTER_S)


def heartbeat_s() -> float:
    return stale_after_s() / 6


def _refuse_if_owned(row: sqlite3.Row, run_id: str, now: float) -> None:
    """Inside a write transaction on a runs row: refuse when another live process runs it."""
    if (row["status"] == RunStatus.RUNNING and row["owner"] != _OWNER
            and owner_alive(row["owner"], row["heartbeat_at"], now)):
        raise RunStateError(f"run {run_id} is running in another live process ({row['owner']}); "
                            "wait for it, or stop that process first")


def owner_alive(owner: str | None, heartbeat_at: float | None, now: float | None = None) -> bool:
    """Whether the process named by `owner` still runs. On this host the pid and its start time decide
    (a paused process is alive whatever its heartbeat says); elsewhere only a fresh heartbeat can."""
    if not owner:
        return False
    if owner == _OWNER:
        return True
    now = time.time() if now is None else now
    fresh = heartbeat_at is not None and now - heartbeat_at <= stale_after_s()
    parts = owner.rsplit(":", 3)
    if len(parts) == 4 and parts[0] == _host_id() and parts[1].isdigit():
        try:
            started = _start_time(int(parts[1]))
        except psutil.AccessDenied:  # another user's process (macOS hides their start times): the heartbeat decides
            return fresh
        try:
            return started is not None and abs(started - float(parts[2])) < 1.0
        except ValueError:
            return False
    if not fresh:
        return False
    host, _, rest = owner.partition(":")  # an owner written before start times were recorded
    pid_text = rest.partition(":")[0]
    if host == _host_id() and pid_text.isdigit():
        return bool(psutil.pid_exists(int(pid_text)))
    return True


@dataclass(frozen=True)
class Lease:
    """This process's hold on a run, from one claim: the run's writes name it."""

    run_id: str
    epoch: int


def _writable(path: Path) -> bool:
    # the mode bits too: root may write anywhere, but a store its user made 0444 is meant to be read-only
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _read_only_reason(path: Path) -> str | None:
    """Why this process should not write the store at `path` (None: it may). WAL needs the folder writable
    too, unless the -wal and -shm files are already there and writable."""
    if path.exists() and not _writable(path):
        return f"the file is not writable (mode {path.stat().st_mode & 0o777:o})"
    folder = path.parent
    if folder.is_dir() and not _writable(folder):
        sidecars = [Path(f"{path}-wal"), Path(f"{path}-shm")]
        if not path.exists():
            return None  # cannot be created: connect() says so
        if not all(p.exists() and _writable(p) for p in sidecars):
            return f"its folder {folder} is not writable"
    return None


def store_problem(path: Path, exc: BaseException) -> StoreError:
    """One line that names the store and what is wrong with it, and what to do."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename or path}"
    hint = ("move it aside (a new store is created in its place) or set CONDUCTOR_DB / --db to another file"
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)
            else "check the path and its permissions, or set CONDUCTOR_DB / --db to another file")
    return StoreError(f"trace store {path}: {text}; {hint}")


class Store:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_db_path()
        self._lock = threading.RLock()
        if self.path.is_dir():
            raise StoreError(f"trace store {self.path}: a folder, not a file; set CONDUCTOR_DB / --db to a file "
                             f"path such as {self.path / 'traces.db'}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.read_only = _read_only_reason(self.path)  # reads work; every write is refused, with this
            self._db = self._connect()
            self._db.row_factory = sqlite3.Row
            if self.read_only is None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise store_problem(self.path, exc) from exc

    def _connect(self) -> sqlite3.Connection:
        if self.read_only is None:
            return sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:  # WAL with no -shm and a read-only folder: read it as immutable
            db.close()
            return sqlite3.connect(f"{uri}&immutable=1", uri=True, check_same_thread=False,
                                   isolation_level=None, timeout=10)

    def check(self) -> None:
        """A full read of the store's structure (`PRAGMA quick_check`): serve and doctor run it at start,
        so a damaged file is named there, not met by every later call."""
        try:
            with self._lock:
                problems = [r[0] for r in self._db.execute("PRAGMA quick_check(5)")]
        except sqlite3.Error as exc:
            raise store_problem(self.path, exc) from exc
        if problems != ["ok"]:
            raise store_problem(self.path, sqlite3.DatabaseError(f"damaged: {'; '.join(problems)}"))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing -------------------------------------------------------------------------------
    def require_writable(self) -> None:
        """Raise the read-only store's StoreError: before a write, or before work that will need one."""
        if self.read_only is not None:
            raise StoreError(f"trace store {self.path} is read-only ({self.read_only}): runs can be read, "
                             "not planned, run or rated; make it writable or set CONDUCTOR_DB / --db to another file")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.require_writable()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        if self.read_only is not None:
            with self._lock:
                tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                done = {r[0] for r in self._db.execute("SELECT name FROM _migrations")} if (
                    "_migrations" in tables) else set()
            missing = [name for name, _ in MIGRATIONS if name not in done]
            if missing:  # an older schema cannot be read by this version, nor upgraded without writing
                raise StoreError(f"trace store {self.path} is read-only ({self.read_only}) and needs upgrading "
                                 f"({', '.join(missing)}): make it writable once")
            return
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
            done = {r[0] for r in db.execute("SELECT name FROM _migrations")}
            for name, sql in MIGRATIONS:
                if name not in done:
                    for statement in filter(str.strip, sql.split(";")):
                        db.execute(statement)
                    db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))

    # -- runs -----------------------------------------------------------------------------------
    def create_run(self, task: str, workflow: Workflow, plan: PlanInfo, options: dict[str, Any] | None = None,
                   parent: Lease | None = None, parent_step: int | None = None, run_id: str | None = None) -> str:
        """Store a planned run; a child run (recursion or a round) only under its parent's lease. `run_id`: an id
        from new_run_id() handed out before the plan was written (a run being planned in the background)."""
        run_id = run_id or new_run_id()
        parent_run_id = parent.run_id if parent else None
        now = time.time()
        with self._tx() as db:
            if parent is not None:
                self._hold(db, parent)
            db.execute(
                "INSERT INTO runs (id, task, status, workflow, plan, options, created_at, updated_at,"
                " parent_run_id, parent_step) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, task, RunStatus.PLANNED.value, workflow.model_dump_json(), redact(plan.model_dump_json()),
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
                attempts=attempts.get(s["idx"], []), code=s["code"],
            ) for s in steps],
            answer=row["answer"], error=row["error"], created_at=row["created_at"],
            updated_at=row["updated_at"], owner=row["owner"], heartbeat_at=row["heartbeat_at"],
            parent_run_id=row["parent_run_id"], parent_step=row["parent_step"],
            reward=row["reward"], reward_note=row["reward_note"], reward_source=row["reward_source"],
        )

    def run_page(self, limit: int, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Root runs, newest first, as summaries read in SQL (no step output, the task cut to 200 characters):
        at most `limit` after the run `cursor` names, and the next page's cursor (None: no more)."""
        where, args = "parent_run_id IS NULL", []
        with self._lock:
            if cursor is not None:
                row = self._db.execute("SELECT created_at FROM runs WHERE id=? AND parent_run_id IS NULL",
                                       (cursor,)).fetchone()
                if row is None:
                    raise RunNotFound(f"cursor: {cursor!r} is not a run id from a page of runs")
                where += " AND (created_at < ? OR (created_at = ? AND id < ?))"
                args = [row[0], row[0], cursor]
            rows = self._db.execute(
                "SELECT id, status, owner, heartbeat_at, substr(task, 1, 200) AS task, length(task) AS task_chars,"
                f" {STRATEGY_SQL} AS strategy, created_at, reward"
                f" FROM runs WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit + 1)).fetchall()
            page = rows[:limit]
            # what tree_usage counts, summed in SQL over each run's tree: plans, steps and reviews
            tokens = dict(self._db.execute(
                "WITH RECURSIVE tree(id, root) AS ("
                f" SELECT id, id FROM runs WHERE id IN ({','.join('?' * len(page))})"
                " UNION ALL SELECT r.id, t.root FROM runs r JOIN tree t ON r.parent_run_id = t.id)"
                " SELECT t.root, SUM("
                "  COALESCE((SELECT SUM(s.prompt_tokens + s.completion_tokens) FROM steps s WHERE s.run_id = t.id), 0)"
                "  + COALESCE(json_extract(r.plan, '$.usage.prompt_tokens'), 0)"
                "  + COALESCE(json_extract(r.plan, '$.usage.completion_tokens'), 0)"
                "  + COALESCE((SELECT SUM(COALESCE(json_extract(v.value, '$.info.usage.prompt_tokens'), 0)"
                "    + COALESCE(json_extract(v.value, '$.info.usage.completion_tokens'), 0))"
                "    FROM json_each(r.options, '$.reviews') v), 0))"
                " FROM tree t JOIN runs r ON r.id = t.id GROUP BY t.root", [r["id"] for r in page]).fetchall())
        out = []
        for r in page:
            status = RunStatus(r["status"])
            if status == RunStatus.RUNNING and not owner_alive(r["owner"], r["heartbeat_at"]):
                status = RunStatus.INTERRUPTED
            out.append({"run_id": r["id"], "status": status.value, "strategy": r["strategy"] or "conductor",
                        "task": r["task"] + ("..." if r["task_chars"] > 200 else ""), "task_chars": r["task_chars"],
                        "tokens": int(tokens.get(r["id"]) or 0), "created_at": r["created_at"],
                        "reward": r["reward"]})
        return out, (page[-1]["id"] if len(rows) > limit else None)

    # -- queries for the command line -------------------------------------------------------------
    def resolve_run(self, ref: str) -> str:
        """The run id `ref` names: `last` (the newest root run), a whole id, or the start of exactly one id."""
        ref = ref.strip()
        with self._lock:
            if ref == "last":
                row = self._db.execute("SELECT id FROM runs WHERE parent_run_id IS NULL"
                                       " ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
                if row is None:
                    raise RunNotFound(f"run_id: `last`, but {self.path} holds no runs yet")
                return str(row[0])
            if not ref:
                raise RunNotFound("run_id: empty; give a run id, the start of one, or `last`")
            if self._db.execute("SELECT 1 FROM runs WHERE id=?", (ref,)).fetchone() is not None:
                return ref
            rows = self._db.execute(
                "SELECT id, status, owner, heartbeat_at, created_at, parent_run_id, substr(task, 1, 50) AS task"
                " FROM runs WHERE lower(substr(id, 1, ?)) = lower(?) ORDER BY created_at DESC, id DESC LIMIT 11",
                (len(ref), ref)).fetchall()
        if not rows:
            raise RunNotFound(f"run_id: no run {ref!r} and none whose id starts so in {self.path} "
                              "(list runs with `conductor-mcp runs`)")
        if len(rows) == 1:
            return str(rows[0]["id"])
        lines = []
        for r in rows[:10]:
            status = RunStatus(r["status"])
            if status == RunStatus.RUNNING and not owner_alive(r["owner"], r["heartbeat_at"]):
                status = RunStatus.INTERRUPTED
            part = f", part of run {r['parent_run_id']}" if r["parent_run_id"] else ""
            task = " ".join(r["task"].split())
            lines.append(f"  {r['id']}  {status.value}{part}  {task}")
        more = "\n  and more" if len(rows) > 10 else ""
        raise RunNotFound(f"run_id: {ref!r} is the start of several run ids; give more of it:\n"
                          + "\n".join(lines) + more)

    def find_runs(self, limit: int, statuses: Collection[str] = (), strategy: str | None = None,
                  text: str | None = None) -> list[RunListing]:
        """Root runs, newest first, at most `limit`: of these statuses (any if none), this strategy (`host`
        for a workflow the host wrote), and whose task or answer holds every word of `text`."""
        wanted = {RunStatus(s) for s in statuses}
        # `interrupted` is a `running` run whose owner is gone: both are stored as running
        raw = {RunStatus.RUNNING if s == RunStatus.INTERRUPTED else s for s in wanted}
        where, args = ["parent_run_id IS NULL"], []
        if raw:
            where.append(f"status IN ({','.join('?' * len(raw))})")
            args += [s.value for s in raw]
        if strategy:
            where.append(f"({STRATEGY_SQL}) = ?")
            args.append(strategy)
        if text and text.split():
            where.append("conductor_matches(task, answer, ?)")
            args.append(text)
        out: list[RunListing] = []
        now = time.time()
        with self._lock:
            self._db.create_function("conductor_matches", 3, _matches, deterministic=True)
            rows = self._db.execute(
                f"SELECT id, status, owner, heartbeat_at, run_s, claimed_at, {STRATEGY_SQL} AS strategy,"
                " json_extract(plan, '$.latency_s') AS plan_s"
                f" FROM runs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC", args)
            try:
                for r in rows:
                    if len(out) >= limit:
                        break
                    status = RunStatus(r["status"])
                    if status == RunStatus.RUNNING and not owner_alive(r["owner"], r["heartbeat_at"], now):
                        status = RunStatus.INTERRUPTED
                    if wanted and status not in wanted:
                        continue
                    out.append(RunListing(r["id"], r["strategy"], _running_s(r, now)))
            finally:
                rows.close()  # a cursor left open would hold its read transaction
        return out

    def running_seconds(self, run_id: str) -> float:
        """Time the run has spent planning and running, over all its executions (not since it was created)."""
        with self._lock:
            row = self._db.execute("SELECT status, owner, heartbeat_at, run_s, claimed_at,"
                                   " json_extract(plan, '$.latency_s') AS plan_s FROM runs WHERE id=?",
                                   (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"run_id: no run {run_id!r} in {self.path}")
        return _running_s(row, time.time())

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

    def update_options(self, run_id: str, changes: dict[str, Any], lease: Lease | None = None) -> None:
        with self._tx() as db:
            if lease is not None:
                self._hold(db, lease)
            row = db.execute("SELECT options, status, owner, heartbeat_at FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"run_id: no run {run_id!r}")
            if lease is None:  # unfenced: only while no other live process owns the run
                _refuse_if_owned(row, run_id, time.time())
            db.execute("UPDATE runs SET options=? WHERE id=?",
                       (json.dumps({**json.loads(row["options"]), **changes}), run_id))

    def tree_usage(self, run_id: str) -> Usage:
        """Everything a run cost: its plan and steps, its reviews, and every child run, counted once."""
        total = self.get_run(run_id).usage
        for review in self.options(run_id).get("reviews") or []:
            total = total + PlanInfo.model_validate(review["info"]).usage
        for child in self.children(run_id):
            total = total + self.tree_usage(child)
        return total

    def claim(self, run_id: str) -> tuple[Lease, Run]:
        """Make this process the run's owner under a new lease epoch; refuse if another live process owns
        it. Claiming again in this process fences off the earlier claim too."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT status, owner, heartbeat_at, lease FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"run_id: no run {run_id!r}")
            _refuse_if_owned(row, run_id, now)
            lease = Lease(run_id, int(row["lease"]) + 1)
            # an execution that never finished (its process died) counts until its last heartbeat
            db.execute("UPDATE runs SET status=?, owner=?, lease=?, heartbeat_at=?, updated_at=?, error=NULL,"
                       " run_s = run_s + COALESCE(MAX(COALESCE(heartbeat_at, claimed_at) - claimed_at, 0), 0),"
                       " claimed_at=? WHERE id=?",
                       (RunStatus.RUNNING.value, _OWNER, lease.epoch, now, now, now, run_id))
            # a step or attempt left running belonged to a process that is gone
            db.execute("UPDATE attempts SET status='interrupted' WHERE run_id=? AND status='running'", (run_id,))
            db.execute("UPDATE steps SET status=? WHERE run_id=? AND status IN (?,?,?)",
                       (StepStatus.PENDING.value, run_id, StepStatus.RUNNING.value, StepStatus.FAILED.value,
                        StepStatus.SKIPPED.value))
        return lease, self.get_run(run_id)

    def _hold(self, db: sqlite3.Connection, lease: Lease) -> None:
        """Inside a write transaction: raise LeaseLost unless this process still holds the run."""
        row = db.execute("SELECT owner, lease FROM runs WHERE id=?", (lease.run_id,)).fetchone()
        if row is None or row["owner"] != _OWNER or row["lease"] != lease.epoch:
            raise LeaseLost(f"run {lease.run_id}: taken over by {row['owner'] if row else 'nobody'}; "
                            "this process stops working on it")

    def heartbeat(self, lease: Lease) -> None:
        """Tell other hosts the owner lives; raise LeaseLost if the run was taken over."""
        with self._tx() as db:
            self._hold(db, lease)
            db.execute("UPDATE runs SET heartbeat_at=? WHERE id=?", (time.time(), lease.run_id))

    def finish_run(self, lease: Lease, status: RunStatus, answer: str | None = None,
                   error: str | None = None) -> None:
        with self._tx() as db:
            self._hold(db, lease)
            now = time.time()
            db.execute("UPDATE runs SET status=?, answer=COALESCE(?, answer), error=?, updated_at=?, owner=NULL,"
                       " run_s = run_s + COALESCE(MAX(? - claimed_at, 0), 0), claimed_at=NULL WHERE id=?",
                       (status.value, answer, redact_optional(error), now, now, lease.run_id))

    def rate(self, run_id: str, score: float, note: str | None = None, source: str = "user") -> None:
        """Store a run's reward (a later rating replaces an earlier one). Only a root run is rated: its
        answer is what a user sees; children and rounds are parts of it. Only a finished run (FINAL) is rated:
        the planner learns from rewards, and a planned or running run has no answer yet to judge."""
        if not 0.0 <= score <= 1.0:
            raise RunStateError(f"score: {score!r}; a reward is between 0 (unusable) and 1 (correct)")
        parent = self.parent_of(run_id)
        if parent is not None:
            raise RunStateError(f"run {run_id} is part of run {parent}; rate that one")
        with self._tx() as db:
            row = db.execute("SELECT status, owner, heartbeat_at FROM runs WHERE id=?", (run_id,)).fetchone()
            status = RunStatus(row["status"])
            if status not in FINAL:
                if status == RunStatus.RUNNING and not owner_alive(row["owner"], row["heartbeat_at"]):
                    status = RunStatus.INTERRUPTED
                then = ("rate it when it has finished" if status == RunStatus.RUNNING
                        else "resume it, and rate it when it has finished")
                raise RunStateError(f"run {run_id} is {status.value}, not finished: only a completed, failed, "
                                    f"cancelled or budget_exceeded run is rated; {then}")
            db.execute("UPDATE runs SET reward=?, reward_note=?, reward_source=?, rated_at=? WHERE id=?",
                       (score, note, source, time.time(), run_id))

    def rated_runs(self, before: float | None = None, limit: int = 5000) -> list[sqlite3.Row]:
        """Rewarded root runs, newest first, with what the planner learns from: the task, the strategy,
        the final step's worker, the number of steps and the tokens and cost of the run's own steps."""
        with self._lock:
            return self._db.execute(
                "SELECT r.id, r.task, r.options, r.reward, r.workflow, r.plan,"
                " (SELECT COALESCE(SUM(ended_at - started_at), 0) FROM steps s WHERE s.run_id = r.id"
                "  AND s.code IS NOT NULL) AS tool_s,"
                " (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id AND s.prompt_tokens + s.completion_tokens > 0)"
                "  AS model_steps,"
                " (SELECT worker FROM steps s WHERE s.run_id = r.id ORDER BY idx DESC LIMIT 1) AS final_worker,"
                " (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id) AS n_steps,"
                " (SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM steps s"
                "  WHERE s.run_id = r.id) AS tokens,"
                " (SELECT SUM(cost_usd) FROM steps s WHERE s.run_id = r.id) AS cost_usd"
                " FROM runs r WHERE r.reward IS NOT NULL AND r.parent_run_id IS NULL AND r.rated_at < ?"
                f" AND r.status IN ({','.join('?' * len(FINAL))})"
                " ORDER BY r.rated_at DESC LIMIT ?",
                (before if before is not None else math.inf, *sorted(s.value for s in FINAL), limit)).fetchall()

    def edit_step(self, lease: Lease, index: int, workflow: Workflow) -> None:
        """Record a host's change of a step's instruction or worker (run_step), as the run's owner."""
        step = workflow.steps[index]
        with self._tx() as db:
            self._hold(db, lease)
            db.execute("UPDATE runs SET workflow=?, updated_at=? WHERE id=?",
                       (workflow.model_dump_json(), time.time(), lease.run_id))
            db.execute("UPDATE steps SET worker=?, instruction=?, edited=1 WHERE run_id=? AND idx=?",
                       (step.worker, step.instruction, lease.run_id, index))

    # -- steps and attempts ---------------------------------------------------------------------
    def step_started(self, lease: Lease, index: int) -> None:
        with self._tx() as db:
            self._hold(db, lease)
            db.execute("UPDATE steps SET status=?, started_at=COALESCE(started_at, ?), error=NULL"
                       " WHERE run_id=? AND idx=?", (StepStatus.RUNNING.value, time.time(), lease.run_id, index))

    def attempt_started(self, lease: Lease, index: int, worker: str) -> int:
        """Record a call about to be made; LeaseLost here means it must not be made."""
        with self._tx() as db:
            self._hold(db, lease)
            n = db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE run_id=? AND idx=?",
                           (lease.run_id, index)).fetchone()[0]
            db.execute("INSERT INTO attempts (run_id, idx, n, worker, status, started_at) VALUES (?,?,?,?,?,?)",
                       (lease.run_id, index, n, worker, "running", time.time()))
        return int(n)

    def _end_attempt(self, db: sqlite3.Connection, run_id: str, index: int, n: int, status: str, latency_s: float,
                     usage: Usage | None, error: str | None) -> None:
        u = usage or Usage()
        db.execute("UPDATE attempts SET status=?, error=?, latency_s=?, prompt_tokens=?, completion_tokens=?,"
                   " cost_usd=? WHERE run_id=? AND idx=? AND n=?",
                   (status, redact_optional(error), latency_s, u.prompt_tokens, u.completion_tokens, u.cost_usd,
                    run_id, index, n))

    def attempt_ended(self, lease: Lease, index: int, n: int, status: str, latency_s: float,
                      usage: Usage | None = None, error: str | None = None) -> None:
        with self._tx() as db:
            self._hold(db, lease)
            self._end_attempt(db, lease.run_id, index, n, status, latency_s, usage, error)

    def step_completed(self, lease: Lease, index: int, output: str, usage: Usage,
                       attempt: tuple[int, float, Usage | None] | None = None, code: str | None = None) -> None:
        """Commit a step's output, with the successful attempt (n, latency, usage) that produced it, in one
        transaction: a kill between the two would leave a paid call whose output is lost."""
        now = time.time()
        with self._tx() as db:
            self._hold(db, lease)
            if attempt is not None:
                self._end_attempt(db, lease.run_id, index, attempt[0], "ok", attempt[1], attempt[2], None)
            db.execute("UPDATE steps SET status=?, output=?, error=NULL, prompt_tokens=?, completion_tokens=?,"
                       " cost_usd=?, calls=?, ended_at=?, code=? WHERE run_id=? AND idx=?",
                       (StepStatus.COMPLETED.value, output, usage.prompt_tokens, usage.completion_tokens,
                        usage.cost_usd, usage.calls, now, code, lease.run_id, index))
            db.execute("UPDATE runs SET updated_at=? WHERE id=?", (now, lease.run_id))

    def step_ended(self, lease: Lease, index: int, status: StepStatus, error: str | None,
                   usage: Usage | None = None) -> None:
        u = usage or Usage()
        with self._tx() as db:
            self._hold(db, lease)
            db.execute("UPDATE steps SET status=?, error=?, prompt_tokens=?, completion_tokens=?, cost_usd=?,"
                       " calls=?, ended_at=? WHERE run_id=? AND idx=?",
                       (status.value, redact_optional(error), u.prompt_tokens, u.completion_tokens, u.cost_usd,
                        u.calls, time.time(), lease.run_id, index))

    def cancel_in_flight(self, lease: Lease) -> None:
        """A cancelled run keeps its completed steps; what was in flight goes back to pending."""
        with self._tx() as db:
            self._hold(db, lease)
            db.execute("UPDATE attempts SET status='cancelled' WHERE run_id=? AND status='running'", (lease.run_id,))
            db.execute("UPDATE steps SET status=? WHERE run_id=? AND status=?",
                       (StepStatus.PENDING.value, lease.run_id, StepStatus.RUNNING.value))

    def reset_step(self, lease: Lease, index: int) -> None:
        with self._tx() as db:
            self._hold(db, lease)
            db.execute("UPDATE steps SET status=?, error=NULL WHERE run_id=? AND idx=?",
                       (StepStatus.PENDING.value, lease.run_id, index))

    def usage_rows(self, since: float) -> list[sqlite3.Row]:
        """Every run of every tree whose root was created since `since`, with its root's strategy and
        time, its plan and options (planning and review usage) and each step's worker and usage."""
        with self._lock:
            return self._db.execute(
                "WITH RECURSIVE tree(id, root) AS ("
                " SELECT id, id FROM runs WHERE parent_run_id IS NULL AND created_at >= ?"
                " UNION ALL SELECT r.id, t.root FROM runs r JOIN tree t ON r.parent_run_id = t.id)"
                " SELECT t.root, t.id, root.options AS root_options,"
                " json_extract(root.plan, '$.source') AS root_source, root.created_at, r.plan, r.options,"
                " (SELECT json_group_array(json_array(s.worker, s.prompt_tokens, s.completion_tokens, s.cost_usd,"
                "  s.calls)) FROM steps s WHERE s.run_id = t.id) AS steps"
                " FROM tree t JOIN runs r ON r.id = t.id JOIN runs root ON root.id = t.root", (since,)).fetchall()

    # -- evals ----------------------------------------------------------------------------------------
    def add_eval(self, command: str, suite: str, started_at: float, ended_at: float, report: dict[str, Any]) -> str:
        """Record an `eval` or `calibrate` with its report (evals.report_json); the new eval's id."""
        eval_id = new_run_id()
        with self._tx() as db:
            db.execute("INSERT INTO evals (id, command, suite, started_at, ended_at, report) VALUES (?,?,?,?,?,?)",
                       (eval_id, command, suite, started_at, ended_at, json.dumps(report)))
        return eval_id

    def list_evals(self, limit: int = 50) -> list[EvalSummary]:
        """Evals, newest first, summarised in SQL: the runs list of each report is counted, not loaded."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, command, suite, started_at, ended_at,"
                " (SELECT COUNT(DISTINCT json_extract(v.value, '$.task_id')) FROM json_each(report, '$.runs') v)"
                " AS tasks, (SELECT json_group_array(key) FROM json_each(report, '$.strategies')) AS strategies"
                " FROM evals ORDER BY started_at DESC, id DESC LIMIT ?", (limit,)).fetchall()
        return [EvalSummary(eval_id=r["id"], command=r["command"], suite=r["suite"], started_at=r["started_at"],
                            ended_at=r["ended_at"], tasks=int(r["tasks"] or 0),
                            strategies=tuple(json.loads(r["strategies"] or "[]"))) for r in rows]

    def get_eval(self, eval_id: str) -> EvalRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM evals WHERE id=?", (eval_id,)).fetchone()
        if row is None:
            raise EvalNotFound(f"eval_id: no eval {eval_id!r} in {self.path} (the web view lists them at /ui/evals)")
        return EvalRecord(eval_id=row["id"], command=row["command"], suite=row["suite"],
                          started_at=row["started_at"], ended_at=row["ended_at"], report=json.loads(row["report"]))


@dataclass(frozen=True)
class EvalSummary:
    """An eval as the list of evals shows it: when, which command and suite, how many tasks, which strategies."""

    eval_id: str
    command: str  # `eval` or `calibrate`
    suite: str
    started_at: float
    ended_at: float
    tasks: int
    strategies: tuple[str, ...]  # in the report's order


@dataclass(frozen=True)
class EvalRecord:
    """A recorded eval with its whole report (evals.report_json)."""

    eval_id: str
    command: str
    suite: str
    started_at: float
    ended_at: float
    report: dict[str, Any]
