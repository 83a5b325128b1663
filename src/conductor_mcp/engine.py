"""Run workflows: schedule steps as their inputs finish, call workers, write every change to the store.

A step runs as soon as every step it sees has completed, so independent steps run concurrently in one
anyio task group. A step committed as completed is never called again, which is what makes resume
safe after a crash: the store, not memory, says what is done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from .errors import RunStateError, WorkerError, WorkflowError
from .models import (
    MAX_STEPS_LIMIT,
    PlanInfo,
    Run,
    RunStatus,
    StepRecord,
    StepStatus,
    Usage,
    Workflow,
)
from .planners import Planner, make_planner
from .planners.strategies import strategy_planner
from .registry import Registry
from .resilience import RetryPolicy, WorkerHealth
from .store import FINAL, HEARTBEAT_S, Store
from .workers import WorkerPool
from .workflows import validate_workflow

log = logging.getLogger(__name__)
MAX_TASK_CHARS = 100_000


@dataclass(frozen=True)
class StepEvent:
    """A step started or ended; hosts turn these into progress messages."""

    run_id: str
    index: int
    total: int
    worker: str
    phase: str  # "start" | "end"
    status: StepStatus
    instruction: str

    @property
    def message(self) -> str:
        what = self.instruction if len(self.instruction) <= 60 else self.instruction[:57] + "..."
        tail = "" if self.phase == "start" else f" [{self.status.value}]"
        return f"step {self.index + 1}/{self.total} {self.worker}: {what}{tail}"


EventSink = Callable[[StepEvent], Awaitable[None]]


def worker_messages(task: str, workflow: Workflow, index: int, outputs: dict[int, str]) -> list[dict[str, str]]:
    """The paper's worker prompt: the task, each visible step's subtask and response, then this subtask."""
    parts = [f"Overall task:\n{task}"]
    for j in workflow.visible(index):
        parts.append(f"Step {j} subtask:\n{workflow.steps[j].instruction}\n\nStep {j} response:\n{outputs[j]}")
    parts.append(f"Your subtask:\n{workflow.steps[index].instruction}")
    return [
        {"role": "system", "content": "You are one member of a team of models solving a task together. "
                                      "Do your subtask well; your response may be the final answer."},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def check_task(task: str) -> str:
    if not task or not task.strip():
        raise WorkflowError("task: empty; give the task to solve")
    if len(task) > MAX_TASK_CHARS:
        raise WorkflowError(f"task: {len(task)} characters, at most {MAX_TASK_CHARS}")
    return task.strip()


class Engine:
    def __init__(self, registry: Registry, store: Store, planner: Planner | None = None,
                 pool: WorkerPool | None = None, policy: RetryPolicy | None = None) -> None:
        self.registry = registry
        self.store = store
        self._planner = planner
        self.pool = pool or WorkerPool(registry)
        self.policy = policy or RetryPolicy()
        self.health = WorkerHealth(self.policy)

    @property
    def planner(self) -> Planner:
        if self._planner is None:
            self._planner = make_planner(self.registry)  # loads nothing until the first plan
        return self._planner

    # -- planning -------------------------------------------------------------------------------
    def _max_steps(self, max_steps: int | None) -> int:
        limit = self.registry.conductor.max_steps
        if max_steps is None:
            return limit
        if not 1 <= max_steps <= MAX_STEPS_LIMIT:
            raise WorkflowError(f"max_steps: {max_steps}; allowed 1..{MAX_STEPS_LIMIT}")
        return max_steps

    async def plan(self, task: str, workers: Sequence[str] | None = None, max_steps: int | None = None,
                   workflow: Any = None, strategy: str = "conductor") -> Run:
        """Plan (or take the host's `workflow`) and store the run as `planned`; nothing is spent yet.

        `strategy` is `conductor` (the default), `moa` or `single:<worker>`.
        """
        task = check_task(task)
        ids = self.registry.select(workers)
        steps = self._max_steps(max_steps)
        fixed = strategy_planner(strategy)
        if workflow is not None:
            wf = validate_workflow(workflow, ids, steps)
            info = PlanInfo(source="host", planner="host", attempts=0)
        else:
            planner = fixed if fixed is not None else self.planner
            result = await planner.plan(task, [self.registry.spec(i) for i in ids], steps)
            wf, info = result.workflow, result.info
        options = {"workers": ids, "max_steps": steps, "strategy": strategy}
        run_id = self.store.create_run(task, wf, info, options)
        return self.store.get_run(run_id)

    async def solve(self, task: str, workers: Sequence[str] | None = None, max_steps: int | None = None,
                    on_event: EventSink | None = None, strategy: str = "conductor") -> Run:
        run = await self.plan(task, workers, max_steps, strategy=strategy)
        return await self.execute(run.id, on_event)

    # -- execution ------------------------------------------------------------------------------
    async def resume(self, run_id: str, on_event: EventSink | None = None) -> Run:
        """Continue a run from its first unfinished step; a completed run is returned as it is."""
        run = self.store.get_run(run_id)
        if run.status == RunStatus.COMPLETED:
            return run
        return await self.execute(run_id, on_event)

    async def execute(self, run_id: str, on_event: EventSink | None = None) -> Run:
        run = self.store.claim(run_id)  # refuses a run another live process owns
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._heartbeat, run_id)
                status, error = await self._schedule(run, on_event)
                outer.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            self._settle_cancelled(run_id)
            raise
        except BaseException as exc:
            self.store.finish_run(run_id, RunStatus.FAILED, error=f"internal error: {exc!r}")
            raise
        answer = None
        final = self.store.get_run(run_id)
        if status == RunStatus.COMPLETED:
            answer = final.steps[-1].output
        self.store.finish_run(run_id, status, answer=answer, error=error)
        return self.store.get_run(run_id)

    def _settle_cancelled(self, run_id: str) -> None:
        # store calls are synchronous, so cancellation cannot interrupt these writes
        self.store.cancel_in_flight(run_id)
        self.store.finish_run(run_id, RunStatus.CANCELLED, error="cancelled by the client")

    async def _heartbeat(self, run_id: str) -> None:
        while True:
            await anyio.sleep(HEARTBEAT_S)
            self.store.heartbeat([run_id])

    async def _schedule(self, run: Run, on_event: EventSink | None) -> tuple[RunStatus, str | None]:
        wf = run.workflow
        outputs = {s.index: s.output or "" for s in run.steps if s.status == StepStatus.COMPLETED}
        finished = {i: anyio.Event() for i in range(len(wf.steps))}
        for i in outputs:
            finished[i].set()
        failures: dict[int, str] = {}

        async def run_one(i: int) -> None:
            try:
                for j in wf.visible(i):
                    await finished[j].wait()
                blocked = [j for j in wf.visible(i) if j not in outputs]
                if blocked:
                    self.store.step_ended(run.id, i, StepStatus.SKIPPED,
                                          f"skipped: it sees step(s) {blocked}, which did not complete")
                    return
                if failures:  # a step failed for good: start nothing new, keep what is running
                    return
                outputs[i] = await self._run_step(run, wf, i, outputs, on_event)
            except WorkerError as exc:
                failures[i] = str(exc)
            finally:
                finished[i].set()

        async with anyio.create_task_group() as tg:
            for i in range(len(wf.steps)):
                if i not in outputs:
                    tg.start_soon(run_one, i)
        if failures:
            first = min(failures)
            return RunStatus.FAILED, f"step {first} failed: {failures[first]}"
        return RunStatus.COMPLETED, None

    async def _run_step(self, run: Run, wf: Workflow, i: int, outputs: dict[int, str],
                        on_event: EventSink | None) -> str:
        step = wf.steps[i]
        total = len(wf.steps)
        self.store.step_started(run.id, i)
        if on_event:
            await on_event(StepEvent(run.id, i, total, step.worker, "start", StepStatus.RUNNING, step.instruction))
        messages = worker_messages(run.task, wf, i, outputs)
        try:
            text, usage = await self._call_with_retries(run.id, i, step.worker, messages)
        except WorkerError as exc:
            self.store.step_ended(run.id, i, StepStatus.FAILED, str(exc))
            if on_event:
                await on_event(StepEvent(run.id, i, total, step.worker, "end", StepStatus.FAILED,
                                         step.instruction))
            raise
        self.store.step_completed(run.id, i, text, usage)
        if on_event:
            await on_event(StepEvent(run.id, i, total, step.worker, "end", StepStatus.COMPLETED, step.instruction))
        return text

    def _candidates(self, worker: str) -> list[str]:
        """The step's worker, then its declared fallbacks (a cooled-down worker goes last)."""
        chain, seen = [], set()
        current: str | None = worker
        while current is not None and current not in seen:
            seen.add(current)
            chain.append(current)
            current = self.registry.spec(current).fallback
        return sorted(chain, key=self.health.cooling)  # stable: order kept among equals

    async def _call_with_retries(self, run_id: str, index: int, worker: str,
                                 messages: list[dict[str, str]]) -> tuple[str, Usage]:
        errors: list[str] = []
        for candidate in self._candidates(worker):
            for attempt in range(1, self.policy.attempts_per_worker + 1):
                n = self.store.attempt_started(run_id, index, candidate)
                started = time.perf_counter()
                try:
                    done = await self.pool.complete(candidate, messages)
                except anyio.get_cancelled_exc_class():
                    self.store.attempt_ended(run_id, index, n, "cancelled", time.perf_counter() - started)
                    raise
                except (WorkerError, TimeoutError) as exc:
                    err = exc if isinstance(exc, WorkerError) else WorkerError(
                        f"{candidate}: timed out after {self.registry.spec(candidate).timeout_s:g}s")
                    self.store.attempt_ended(run_id, index, n, "error", time.perf_counter() - started,
                                             error=str(err))
                    errors.append(str(err))
                    if not err.retryable:
                        break
                    if attempt < self.policy.attempts_per_worker:
                        await anyio.sleep(self.policy.delay(attempt, err.retry_after))
                    continue
                self.store.attempt_ended(run_id, index, n, "ok", done.latency_s, done.usage)
                self.health.ok(candidate)
                return done.text, done.usage
            self.health.failed(candidate)
        failure = WorkerError("; ".join(errors[-3:]) or f"{worker}: no attempt made", retryable=False)
        raise failure

    # -- host-driven steps ----------------------------------------------------------------------
    def runnable(self, run: Run) -> list[int]:
        done = {s.index for s in run.steps if s.status == StepStatus.COMPLETED}
        return [s.index for s in run.steps if s.status != StepStatus.COMPLETED
                and all(j in done for j in run.workflow.visible(s.index))]

    async def run_step(self, run_id: str, index: int, instruction: str | None = None,
                       worker: str | None = None) -> tuple[StepRecord, Run]:
        """Run one step of a run (optionally changed); refuse when a step it sees is not done."""
        run = self.store.get_run(run_id)
        if run.status in (RunStatus.RUNNING,):
            raise RunStateError(f"run {run_id} is running; wait for it (get_run) before driving steps by hand")
        n = len(run.steps)
        if not 0 <= index < n:
            raise WorkflowError(f"step: {index} is out of range; this run has steps 0..{n - 1}")
        record = run.steps[index]
        if record.status == StepStatus.COMPLETED:
            raise RunStateError(f"step {index} is already completed; its output is kept and never re-bought")
        waiting = [j for j in run.workflow.visible(index) if run.steps[j].status != StepStatus.COMPLETED]
        if waiting:
            raise RunStateError(f"step {index} sees step(s) {waiting}, which are not completed yet; "
                                f"run those first")
        wf = run.workflow
        if instruction is not None or worker is not None:
            allowed = self.store.options(run_id).get("workers") or self.registry.available_ids()
            steps = [s.model_copy() for s in wf.steps]
            steps[index] = steps[index].model_copy(update={
                k: v for k, v in (("instruction", instruction), ("worker", worker)) if v is not None})
            wf = validate_workflow({"steps": [s.model_dump() for s in steps]}, allowed, MAX_STEPS_LIMIT)
            self.store.edit_step(run_id, index, wf)
        run = self.store.claim(run_id)
        outputs = {s.index: s.output or "" for s in run.steps if s.status == StepStatus.COMPLETED}
        try:
            await self._run_step(run, wf, index, outputs, None)
        except WorkerError as exc:
            self.store.finish_run(run_id, RunStatus.FAILED, error=f"step {index} failed: {exc}")
        except anyio.get_cancelled_exc_class():
            self._settle_cancelled(run_id)
            raise
        else:
            after = self.store.get_run(run_id)
            if all(s.status == StepStatus.COMPLETED for s in after.steps):
                self.store.finish_run(run_id, RunStatus.COMPLETED, answer=after.steps[-1].output)
            else:
                self.store.finish_run(run_id, RunStatus.PLANNED)
        final = self.store.get_run(run_id)
        return final.steps[index], final


def is_final(status: RunStatus) -> bool:
    return status in FINAL
