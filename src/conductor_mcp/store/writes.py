"""Writes: a run as it is planned and carried out, step by step and call by call, its rating, and evals.

Every write an owner makes passes the fence (Ownership._hold, or _update_held where the write updates the runs row
anyway) in its own transaction, so a process that lost the run writes nothing; each state change is committed as it
happens.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import RunNotFound, RunStateError
from ..models import Budget, PlanInfo, Review, Run, RunOptions, RunStatus, StepRecord, StepStatus, Usage, Workflow
from ..redact import redact, redact_optional
from .base import Conn
from .ids import new_run_id
from .leases import Claimed, Lease, Ownership, process_owner, stale_after_s

FINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.BUDGET_EXCEEDED}


def _part_ended(parent_id: str, status: RunStatus) -> str:
    return f"cancelled: run {parent_id}, which it is part of, ended {status.value} before taking it back"


class Writes(Ownership):
    # -- runs -----------------------------------------------------------------------------------
    def create_run(self, task: str, workflow: Workflow, plan: PlanInfo, options: RunOptions | None = None,
                   parent: Lease | None = None, parent_step: int | None = None, run_id: str | None = None) -> str:
        """Store a planned run; a child run (recursion or a round) only under its parent's lease. `run_id`: an id
        from new_run_id() handed out before the plan was written (a run being planned in the background)."""
        return self.add_run(task, workflow, plan, options, parent, parent_step, run_id).id

    def add_run(self, task: str, workflow: Workflow, plan: PlanInfo, options: RunOptions | None = None,
                parent: Lease | None = None, parent_step: int | None = None, run_id: str | None = None) -> Run:
        """create_run, answering the run as get_run would read it back (planned, its steps pending), without
        reading it: a planned run is known from what was written."""
        return self._insert_run(task, workflow, plan, options, parent, parent_step, run_id, claim=False).run

    def add_claimed_run(self, task: str, workflow: Workflow, plan: PlanInfo, options: RunOptions | None = None,
                        run_id: str | None = None) -> Claimed:
        """add_run and claim_run in one transaction, for a run carried out as soon as it is planned (solve): it is
        stored running under this process's first lease, never `planned`; the engine executes it at once (what
        comes before its first step is part of that execution, so a stop there settles it as any stop does)."""
        return self._insert_run(task, workflow, plan, options, None, None, run_id, claim=True)

    def _insert_run(self, task: str, workflow: Workflow, plan: PlanInfo, options: RunOptions | None,
                    parent: Lease | None, parent_step: int | None, run_id: str | None, claim: bool) -> Claimed:
        run_id = run_id or new_run_id()
        parent_run_id = parent.run_id if parent else None
        plan_json = redact(plan.model_dump_json())
        stored = options.stored() if options else {}
        status = RunStatus.RUNNING if claim else RunStatus.PLANNED
        with self._tx() as db:
            if parent is not None:
                self._hold(db, parent)
            now = self._now(db)
            owner, epoch, beat, expires, claimed_at = ((process_owner(), 1, now, now + stale_after_s(), now) if claim
                                                       else (None, 0, None, None, None))
            db.execute(
                "INSERT INTO runs (id, task, status, workflow, plan, options, created_at, updated_at,"
                " parent_run_id, parent_step, owner, lease, heartbeat_at, lease_expires_at, claimed_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, task, status.value, workflow.model_dump_json(), plan_json, json.dumps(stored), now, now,
                 parent_run_id, parent_step, owner, epoch, beat, expires, claimed_at),
            )
            self._write_steps(db, run_id, workflow)
        run = Run(id=run_id, task=task, status=status, workflow=workflow,
                  plan=PlanInfo.model_validate_json(plan_json),  # as stored: redacted
                  steps=[StepRecord(index=i, worker=s.worker, instruction=s.instruction, access=s.access,
                                    status=StepStatus.PENDING) for i, s in enumerate(workflow.steps)],
                  created_at=now, updated_at=now, parent_run_id=parent_run_id, parent_step=parent_step,
                  owner=owner, heartbeat_at=beat)
        return Claimed(Lease(run_id, epoch), run, stored)

    def _write_steps(self, db: Conn, run_id: str, workflow: Workflow) -> None:
        """The run's steps, pending, in one statement (one round trip on PostgreSQL, not one a step)."""
        values = [(run_id, i, step.worker, step.instruction, json.dumps(step.access), StepStatus.PENDING.value)
                  for i, step in enumerate(workflow.steps)]
        db.execute("INSERT INTO steps (run_id, idx, worker, instruction, access, status) VALUES "
                   + ",".join(["(?,?,?,?,?,?)"] * len(values)), [v for row in values for v in row])

    def _set_option(self, lease: Lease, key: str, value: Any) -> None:
        with self._tx() as db:
            self._hold(db, lease)
            row = db.execute("SELECT options FROM runs WHERE id=?", (lease.run_id,)).fetchone()
            db.execute("UPDATE runs SET options=? WHERE id=?",
                       (json.dumps({**json.loads(row["options"]), key: value}), lease.run_id))

    def set_budget(self, lease: Lease, budget: Budget) -> None:
        """Replace the run's limits (a resume's new budget), as its owner: written only once it may run."""
        self._set_option(lease, "budget", budget.model_dump(mode="json"))

    def set_reviews(self, lease: Lease, reviews: list[Review]) -> None:
        """Record the conductor's reviews of a root run's rounds, as its owner."""
        self._set_option(lease, "reviews", [r.model_dump(mode="json") for r in reviews])

    def finish_run(self, lease: Lease, status: RunStatus, answer: str | None = None,
                   error: str | None = None) -> None:
        """End the run's execution, or hand it back (status running, owned by no one: for the next owner to claim).
        Parts of a run (child runs) are handed back when the run is taken over, for its new owner to take back as
        it reaches their step; a run that ends first cancels them, and a part handed back after the run it is part
        of ended is cancelled instead. Either way they keep their completed steps, and a resume of the run takes
        them back (a claim takes a cancelled run)."""
        # only a run claimed again (lease epoch 2 on) can have parts handed back: they are handed back when it is
        # taken over or handed back itself; so a run's first execution that ends (or stops, planned: run_step)
        # writes one statement, its own row, and a hand-back first reads the run it is part of
        alone = status != RunStatus.RUNNING and lease.epoch == 1
        with self._statement() if alone else self._tx() as db:
            now = self._now(db)
            ended = self._ended_around(db, lease.run_id) if status == RunStatus.RUNNING else None
            if ended is not None:
                status, error = RunStatus.CANCELLED, ended
            self._update_held(db, lease, "status=?, answer=COALESCE(?, answer), error=?, updated_at=?, owner=NULL,"
                              f" lease_expires_at=NULL, run_s = run_s + COALESCE({self.MAX2}(? - claimed_at, 0), 0),"
                              " claimed_at=NULL", (status.value, answer, redact_optional(error), now, now))
            if status in FINAL and not alone:
                self._cancel_handed_back_parts(db, lease.run_id, status, now)

    def _ended_around(self, db: Conn, run_id: str) -> str | None:
        """For a part handed back: why it is cancelled instead, where the run it is part of has ended. That run's
        row is locked before the part's (as its end locks its own, then its parts'), so one of the two sees the
        other's write."""
        row = db.execute("SELECT parent_run_id FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None or row["parent_run_id"] is None:
            return None
        parent = self._lock_run(db, row["parent_run_id"], "status")
        if parent is None or RunStatus(parent["status"]) not in FINAL:
            return None
        return _part_ended(row["parent_run_id"], RunStatus(parent["status"]))

    def _cancel_handed_back_parts(self, db: Conn, run_id: str, status: RunStatus, now: float) -> None:
        """Cancel the parts of an ended run that no one holds: handed back (running, owned by no one), or whose owner
        died (its lease lapsed) before it could hand them back; and their parts. What such a part had in flight is
        settled as a claim would settle it."""
        parents = [run_id]
        while parents:  # depth by depth; the runs_parent index serves it
            marks = ",".join("?" * len(parents))
            found = db.execute(f"SELECT id, parent_run_id, owner, lease, heartbeat_at, lease_expires_at FROM runs WHERE"
                               f" parent_run_id IN ({marks}) AND status=?", (*parents, RunStatus.RUNNING.value)
                               ).fetchall()
            parents = []
            for part in found:
                if self._alive(part, now):  # its owner still holds it: it stops at its next renewal
                    continue
                # it names the run it is part of, which ended, or was cancelled just now
                why = _part_ended(part["parent_run_id"], status if part["parent_run_id"] == run_id
                                  else RunStatus.CANCELLED)
                cursor = db.execute("UPDATE runs SET status=?, error=?, updated_at=?, owner=NULL, lease_expires_at=NULL"
                                    " WHERE id=? AND status=? AND COALESCE(owner, '')=? AND lease=?",  # as found:
                                    (RunStatus.CANCELLED.value, why, now, part["id"], RunStatus.RUNNING.value,
                                     part["owner"] or "", part["lease"]))  # no claim or end since
                if cursor.rowcount == 1:
                    self._settle_left_running(db, part["id"], StepStatus.RUNNING)
                    parents.append(part["id"])

    def rate(self, run_id: str, score: float, note: str | None = None, source: str = "user") -> None:
        """Store a run's reward (a later rating replaces an earlier one). Only a root run is rated: its
        answer is what a user sees; children and rounds are parts of it. Only a finished run (FINAL) is rated:
        the planner learns from rewards, and a planned or running run has no answer yet to judge."""
        if not 0.0 <= score <= 1.0:
            raise RunStateError(f"score: {score!r}; a reward is between 0 (unusable) and 1 (correct)")
        with self._tx() as db:
            row = db.execute("SELECT parent_run_id, status, owner, heartbeat_at, lease_expires_at FROM runs"
                             " WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"run_id: no run {run_id!r} (list runs with `mcp-conductor runs` or the "
                                  "conductor://runs resource)")
            if row["parent_run_id"] is not None:
                raise RunStateError(f"run {run_id} is part of run {row['parent_run_id']}; rate that one")
            status = self._status(row, self._now(db))
            if status not in FINAL:
                then = ("rate it when it has finished" if status == RunStatus.RUNNING
                        else "resume it, and rate it when it has finished")
                raise RunStateError(f"run {run_id} is {status.value}, not finished: only a completed, failed, "
                                    f"cancelled or budget_exceeded run is rated; {then}")
            db.execute("UPDATE runs SET reward=?, reward_note=?, reward_source=?, rated_at=? WHERE id=?",
                       (score, note, source, self._now(db), run_id))

    def edit_step(self, lease: Lease, index: int, workflow: Workflow) -> None:
        """Record a host's change of a step's instruction or worker (run_step), as the run's owner."""
        step = workflow.steps[index]
        with self._tx() as db:
            self._update_held(db, lease, "workflow=?, updated_at=?", (workflow.model_dump_json(), self._now(db)))
            db.execute("UPDATE steps SET worker=?, instruction=?, edited=1 WHERE run_id=? AND idx=?",
                       (step.worker, step.instruction, lease.run_id, index))

    # -- steps and attempts ---------------------------------------------------------------------
    def attempt_started(self, lease: Lease, index: int, worker: str, step_start: bool = False) -> int:
        """Record a call about to be made; LeaseLost here means it must not be made. `step_start`: the step's
        first attempt, which also records the step as running, in the same transaction."""
        with self._tx() as db:
            self._hold(db, lease)
            if step_start:
                db.execute("UPDATE steps SET status=?, started_at=COALESCE(started_at, ?), error=NULL"
                           " WHERE run_id=? AND idx=?", (StepStatus.RUNNING.value, self._now(db), lease.run_id, index))
            n = db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE run_id=? AND idx=?",
                           (lease.run_id, index)).fetchone()[0]
            db.execute("INSERT INTO attempts (run_id, idx, n, worker, status, started_at) VALUES (?,?,?,?,?,?)",
                       (lease.run_id, index, n, worker, "running", self._now(db)))
        return int(n)

    def _end_attempt(self, db: Conn, run_id: str, index: int, n: int, status: str, latency_s: float,
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
        with self._tx() as db:
            now = self._now(db)
            self._update_held(db, lease, "updated_at=?", (now,))  # first: the fence, and the lock order of _hold
            if attempt is not None:
                self._end_attempt(db, lease.run_id, index, attempt[0], "ok", attempt[1], attempt[2], None)
            db.execute("UPDATE steps SET status=?, output=?, error=NULL, prompt_tokens=?, completion_tokens=?,"
                       " cost_usd=?, calls=?, ended_at=?, code=? WHERE run_id=? AND idx=?",
                       (StepStatus.COMPLETED.value, output, usage.prompt_tokens, usage.completion_tokens,
                        usage.cost_usd, usage.calls, now, code, lease.run_id, index))

    def step_ended(self, lease: Lease, index: int, status: StepStatus, error: str | None,
                   usage: Usage | None = None) -> None:
        u = usage or Usage()
        with self._tx() as db:
            self._hold(db, lease)
            db.execute("UPDATE steps SET status=?, error=?, prompt_tokens=?, completion_tokens=?, cost_usd=?,"
                       " calls=?, ended_at=? WHERE run_id=? AND idx=?",
                       (status.value, redact_optional(error), u.prompt_tokens, u.completion_tokens, u.cost_usd,
                        u.calls, self._now(db), lease.run_id, index))

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

    # -- evals ----------------------------------------------------------------------------------------
    def add_eval(self, command: str, suite: str, started_at: float, ended_at: float, report: dict[str, Any]) -> str:
        """Record an `eval` or `calibrate` with its report (evals.report_json); the new eval's id."""
        eval_id = new_run_id()
        with self._tx() as db:
            db.execute("INSERT INTO evals (id, command, suite, started_at, ended_at, report) VALUES (?,?,?,?,?,?)",
                       (eval_id, command, suite, started_at, ended_at, json.dumps(report)))
        return eval_id
