"""The trace store's schema: one append-only list of numbered migrations, applied by both backends.

The SQL is written once, in SQLite's dialect; `for_postgres` gives PostgreSQL the same schema (REAL is
8 bytes in SQLite, so it is DOUBLE PRECISION there; SQLite's two-argument MAX is GREATEST). A store
records each migration it applied in `_migrations`, so a user's trace database survives every upgrade.
"""

from __future__ import annotations

import re

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
    # A lease's expiry, in the database's clock: on PostgreSQL, where replicas on several machines share runs, an
    # owner is alive while its lease has not expired (heartbeats renew it); SQLite records it too.
    ("007_lease_expiry", """
        ALTER TABLE runs ADD COLUMN lease_expires_at REAL;
    """),
    # Every replica looks for orphaned runs every few seconds: without it, each look reads every stored run.
    ("008_running_runs", """
        CREATE INDEX runs_running ON runs(updated_at, id) WHERE status = 'running';
    """),
]

MIGRATIONS_TABLE = "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"


def statements(sql: str) -> list[str]:
    """A migration's statements, in order (none of them holds a `;` inside)."""
    return [s.strip() for s in sql.split(";") if s.strip()]


_REAL = re.compile(r"\bREAL\b")
_MAX2 = re.compile(r"\bMAX\((?=[^()]*,)")  # MAX(a, b): SQLite's scalar maximum


def for_postgres(sql: str) -> str:
    """The same schema change in PostgreSQL's dialect."""
    return _MAX2.sub("GREATEST(", _REAL.sub("DOUBLE PRECISION", sql))
