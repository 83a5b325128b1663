"""Reads: a run with its steps and attempts, pages and listings of runs, what the planner learns from, usage
over run trees, and recorded evals. Statuses are read as users see them: a running run whose owner is gone
is `interrupted`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from ..errors import EvalNotFound, RunNotFound
from ..models import Attempt, PlanInfo, Run, RunOptions, RunStatus, StepRecord, StepStatus, Usage, Workflow
from .base import Row
from .leases import Ownership
from .writes import FINAL

_NOT_FOUND_HINT = "(list runs with `mcp-conductor runs` or the conductor://runs resource)"


def strategy_of(plan_source: str | None, options: RunOptions) -> str:
    """Store.strategy_sql in Python."""
    return "host" if plan_source == "host" else options.strategy


def matches(task: str | None, answer: str | None, terms: str) -> bool:
    """Every whitespace-separated term occurs in the task or the answer, ignoring case (any script)."""
    text = f"{task or ''}\n{answer or ''}".casefold()
    return all(term in text for term in terms.casefold().split())


@dataclass(frozen=True)
class RunListing:
    """A root run as `mcp-conductor runs` finds it: its id, strategy and time spent running."""

    run_id: str
    strategy: str
    running_s: float


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


_ATTEMPT_COLUMNS = ", ".join(f"a.{c} AS a_{c}" for c in ("n", "worker", "status", "error", "latency_s", "started_at",
                                                       "prompt_tokens", "completion_tokens", "cost_usd"))


class Queries(Ownership):
    def _running_s(self, row: Row, now: float) -> float:
        """Planning, then every execution: finished ones are in run_s; the one in progress counts until now,
        or, if its process is gone, until its last heartbeat."""
        total = float(row["run_s"] or 0) + float(row["plan_s"] or 0)
        claimed = row["claimed_at"]
        if claimed is not None:
            alive = row["status"] == RunStatus.RUNNING and self._alive(row, now)
            total += max((now if alive else row["heartbeat_at"] or claimed) - claimed, 0.0)
        return total

    def options(self, run_id: str) -> dict[str, Any]:
        with self._read() as db:
            row = db.execute("SELECT options FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"run_id: no run {run_id!r} in {self.location}")
        result: dict[str, Any] = json.loads(row[0])
        return result

    def parent_of(self, run_id: str) -> str | None:
        with self._read() as db:
            row = db.execute("SELECT parent_run_id FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"run_id: no run {run_id!r} {_NOT_FOUND_HINT}")
        return row[0] if row[0] is None else str(row[0])

    def get_run(self, run_id: str) -> Run:
        with self._read() as db:
            now = self._now(db)
            row = db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"run_id: no run {run_id!r} {_NOT_FOUND_HINT}")
            # the steps and their attempts in one statement (one round trip on PostgreSQL): a step's row once per
            # attempt, a step with none once (its attempt's columns NULL)
            rows = db.execute(f"SELECT s.*, {_ATTEMPT_COLUMNS} FROM steps s LEFT JOIN attempts a"
                              " ON a.run_id = s.run_id AND a.idx = s.idx WHERE s.run_id=? ORDER BY s.idx, a.n",
                              (run_id,)).fetchall()
        steps: list[Row] = []
        by_step: dict[int, list[Attempt]] = {}
        for r in rows:
            if not steps or steps[-1]["idx"] != r["idx"]:
                steps.append(r)
                by_step[r["idx"]] = []
            if r["a_n"] is not None:
                by_step[r["idx"]].append(Attempt(
                    n=r["a_n"], worker=r["a_worker"], status=r["a_status"], error=r["a_error"],
                    latency_s=r["a_latency_s"], started_at=r["a_started_at"],
                    usage=Usage(prompt_tokens=r["a_prompt_tokens"], completion_tokens=r["a_completion_tokens"],
                                cost_usd=r["a_cost_usd"], calls=1)))
        return Run(
            id=row["id"], task=row["task"], status=self._status(row, now),
            workflow=Workflow.model_validate_json(row["workflow"]),
            plan=PlanInfo.model_validate_json(row["plan"]),
            steps=[StepRecord(
                index=s["idx"], worker=s["worker"], instruction=s["instruction"], access=json.loads(s["access"]),
                status=StepStatus(s["status"]), output=s["output"], error=s["error"],
                usage=Usage(prompt_tokens=s["prompt_tokens"], completion_tokens=s["completion_tokens"],
                            cost_usd=s["cost_usd"], calls=s["calls"]),
                started_at=s["started_at"], ended_at=s["ended_at"], edited=bool(s["edited"]),
                attempts=by_step[s["idx"]], code=s["code"],
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
        with self._read() as db:
            now = self._now(db)
            if cursor is not None:
                row = db.execute("SELECT created_at FROM runs WHERE id=? AND parent_run_id IS NULL",
                                 (cursor,)).fetchone()
                if row is None:
                    raise RunNotFound(f"cursor: {cursor!r} is not a run id from a page of runs")
                where += " AND (created_at < ? OR (created_at = ? AND id < ?))"
                args = [row[0], row[0], cursor]
            rows = db.execute(
                "SELECT id, status, owner, heartbeat_at, lease_expires_at, substr(task, 1, 200) AS task,"
                f" length(task) AS task_chars, {self.strategy_sql()} AS strategy, created_at, reward"
                f" FROM runs WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit + 1)).fetchall()
            page = rows[:limit]
            # what tree_usage counts, summed in SQL over each run's tree: plans, steps and reviews
            tokens = {r[0]: r[1] for r in db.execute(
                "WITH RECURSIVE tree(id, root) AS ("
                f" SELECT id, id FROM runs WHERE id IN ({','.join('?' * len(page)) or 'NULL'})"
                " UNION ALL SELECT r.id, t.root FROM runs r JOIN tree t ON r.parent_run_id = t.id)"
                " SELECT t.root, SUM("
                "  COALESCE((SELECT SUM(s.prompt_tokens + s.completion_tokens) FROM steps s WHERE s.run_id = t.id), 0)"
                f"  + COALESCE({self.json('r.plan', '$.usage.prompt_tokens', number=True)}, 0)"
                f"  + COALESCE({self.json('r.plan', '$.usage.completion_tokens', number=True)}, 0)"
                f"  + {self._reviews_tokens_sql('r.options')})"
                " FROM tree t JOIN runs r ON r.id = t.id GROUP BY t.root", [r["id"] for r in page]).fetchall()}
        out = []
        for r in page:
            out.append({"run_id": r["id"], "status": self._status(r, now).value,
                        "strategy": r["strategy"] or "conductor",
                        "task": r["task"] + ("..." if r["task_chars"] > 200 else ""), "task_chars": r["task_chars"],
                        "tokens": int(tokens.get(r["id"]) or 0), "created_at": r["created_at"],
                        "reward": r["reward"]})
        return out, (page[-1]["id"] if len(rows) > limit else None)

    # -- queries for the command line -------------------------------------------------------------
    def resolve_run(self, ref: str) -> str:
        """The run id `ref` names: `last` (the newest root run), a whole id, or the start of exactly one id."""
        ref = ref.strip()
        with self._read() as db:
            now = self._now(db)
            if ref == "last":
                row = db.execute("SELECT id FROM runs WHERE parent_run_id IS NULL"
                                 " ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
                if row is None:
                    raise RunNotFound(f"run_id: `last`, but {self.location} holds no runs yet")
                return str(row[0])
            if not ref:
                raise RunNotFound("run_id: empty; give a run id, the start of one, or `last`")
            if db.execute("SELECT 1 FROM runs WHERE id=?", (ref,)).fetchone() is not None:
                return ref
            rows = db.execute(
                "SELECT id, status, owner, heartbeat_at, lease_expires_at, created_at, parent_run_id,"
                " substr(task, 1, 50) AS task FROM runs WHERE lower(substr(id, 1, ?)) = lower(?)"
                " ORDER BY created_at DESC, id DESC LIMIT 11", (len(ref), ref)).fetchall()
        if not rows:
            raise RunNotFound(f"run_id: no run {ref!r} and none whose id starts so in {self.location} "
                              "(list runs with `mcp-conductor runs`)")
        if len(rows) == 1:
            return str(rows[0]["id"])
        lines = []
        for r in rows[:10]:
            part = f", part of run {r['parent_run_id']}" if r["parent_run_id"] else ""
            task = " ".join(r["task"].split())
            lines.append(f"  {r['id']}  {self._status(r, now).value}{part}  {task}")
        more = "\n  and more" if len(rows) > 10 else ""
        raise RunNotFound(f"run_id: {ref!r} is the start of several run ids; give more of it:\n"
                          + "\n".join(lines) + more)

    def run_ids(self, prefix: str, limit: int) -> list[str]:
        """Ids of root runs that start with `prefix` (in any case), newest first, at most `limit`."""
        with self._read() as db:
            rows = db.execute(
                "SELECT id FROM runs WHERE parent_run_id IS NULL AND lower(substr(id, 1, ?)) = lower(?)"
                " ORDER BY created_at DESC, id DESC LIMIT ?", (len(prefix), prefix, limit)).fetchall()
        return [str(r[0]) for r in rows]

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
            where.append(f"({self.strategy_sql()}) = ?")
            args.append(strategy)
        out: list[RunListing] = []
        with self._read() as db:
            now = self._now(db)
            if text and text.split():
                condition, more = self._text_match_sql(db, text)
                where.append(condition)
                args += more
            rows = db.execute(
                "SELECT id, status, owner, heartbeat_at, lease_expires_at, run_s, claimed_at,"
                f" {self.strategy_sql()} AS strategy, {self.json('plan', '$.latency_s', number=True)} AS plan_s"
                f" FROM runs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC", args)
            try:
                for r in rows:
                    if len(out) >= limit:
                        break
                    status = self._status(r, now)
                    if wanted and status not in wanted:
                        continue
                    out.append(RunListing(r["id"], r["strategy"], self._running_s(r, now)))
            finally:
                rows.close()  # a cursor left open would hold its read transaction
        return out

    def running_seconds(self, run_id: str) -> float:
        """Time the run has spent planning and running, over all its executions (not since it was created)."""
        with self._read() as db:
            now = self._now(db)
            row = db.execute("SELECT status, owner, heartbeat_at, lease_expires_at, run_s, claimed_at,"
                             f" {self.json('plan', '$.latency_s', number=True)} AS plan_s FROM runs WHERE id=?",
                             (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"run_id: no run {run_id!r} in {self.location}")
        return self._running_s(row, now)

    def children(self, run_id: str, step: int | None = None, rounds: bool = False) -> list[str]:
        """Child runs, oldest first: all, those of one `conductor` step, or the correction rounds."""
        query = "SELECT id FROM runs WHERE parent_run_id=?"
        args: tuple[Any, ...] = (run_id,)
        if step is not None:
            query, args = query + " AND parent_step=?", (run_id, step)
        elif rounds:
            query += " AND parent_step IS NULL"
        with self._read() as db:
            return [r[0] for r in db.execute(query + " ORDER BY created_at", args).fetchall()]

    def tree_usage(self, run_id: str) -> Usage:
        """Everything a run cost: its plan and steps, its reviews, and every child run, counted once."""
        total = self.get_run(run_id).usage
        for review in self.options(run_id).get("reviews") or []:
            total = total + PlanInfo.model_validate(review["info"]).usage
        for child in self.children(run_id):
            total = total + self.tree_usage(child)
        return total

    def rated_runs(self, before: float | None = None, limit: int = 5000) -> list[Row]:
        """Rewarded root runs, newest first, with what the planner learns from: the task, the strategy,
        the final step's worker, the number of steps and the tokens and cost of the run's own steps."""
        with self._read() as db:
            return db.execute(
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

    def usage_rows(self, since: float) -> list[Row]:
        """Every run of every tree whose root was created since `since`, with its root's strategy and
        time, its plan and options (planning and review usage) and each step's worker and usage."""
        with self._read() as db:
            return db.execute(
                "WITH RECURSIVE tree(id, root) AS ("
                " SELECT id, id FROM runs WHERE parent_run_id IS NULL AND created_at >= ?"
                " UNION ALL SELECT r.id, t.root FROM runs r JOIN tree t ON r.parent_run_id = t.id)"
                " SELECT t.root, t.id, root.options AS root_options,"
                f" {self.json('root.plan', '$.source')} AS root_source, root.created_at, r.plan, r.options,"
                f" {self._steps_json_sql('t.id')} AS steps"
                " FROM tree t JOIN runs r ON r.id = t.id JOIN runs root ON root.id = t.root", (since,)).fetchall()

    # -- evals ----------------------------------------------------------------------------------------
    def list_evals(self, limit: int = 50) -> list[EvalSummary]:
        """Evals, newest first, summarised in SQL: the runs list of each report is counted, not loaded."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT id, command, suite, started_at, ended_at, {self._eval_summary_sql()}"
                " FROM evals ORDER BY started_at DESC, id DESC LIMIT ?", (limit,)).fetchall()
        return [EvalSummary(eval_id=r["id"], command=r["command"], suite=r["suite"], started_at=r["started_at"],
                            ended_at=r["ended_at"], tasks=int(r["tasks"] or 0),
                            strategies=tuple(json.loads(r["strategies"] or "[]"))) for r in rows]

    def get_eval(self, eval_id: str) -> EvalRecord:
        with self._read() as db:
            row = db.execute("SELECT * FROM evals WHERE id=?", (eval_id,)).fetchone()
        if row is None:
            raise EvalNotFound(f"eval_id: no eval {eval_id!r} in {self.location}"
                               " (the web view lists them at /ui/evals)")
        return EvalRecord(eval_id=row["id"], command=row["command"], suite=row["suite"],
                          started_at=row["started_at"], ended_at=row["ended_at"], report=json.loads(row["report"]))
