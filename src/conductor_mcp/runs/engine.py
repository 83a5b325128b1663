"""Run workflows: schedule steps as their inputs finish, call workers, write every change to the store.

A step runs as soon as every step it sees has completed, so independent steps run concurrently in one
anyio task group. A step committed as completed is never called again, which is what makes resume
safe after a crash: the store, not memory, says what is done. A step on the worker `conductor` is a
child run planned by the conductor (recursion); with max_rounds > 1 the conductor reviews each answer
and may run a corrective round, also as a child run. One budget guard covers the whole tree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio

from .. import telemetry
from ..errors import LeaseLost, ParentLeaseLost, RunStateError, WorkerError, WorkflowError
from ..models import (
    CONDUCTOR_WORKER,
    MAX_STEPS_LIMIT,
    Budget,
    PlanInfo,
    Prefer,
    Prior,
    Review,
    Run,
    RunOptions,
    RunStatus,
    StepRecord,
    StepStatus,
    Usage,
    WorkerSpec,
    Workflow,
)
from ..planners import Planner, make_planner
from ..planners.base import PlanSink
from ..planners.strategies import strategy_planner
from ..store import FINAL, Claimed, Lease, Store
from ..workers import python_worker
from ..workers.pool import WorkerPool
from ..workers.registry import Registry
from .budget import BudgetExceeded, BudgetGuard
from .heartbeats import Heartbeats
from .outcomes import Outcomes
from .recipes import instantiate
from .request import PlanRequest, check_max_steps, check_request
from .resilience import RetryPolicy, WorkerHealth
from .workflows import validate_workflow

log = logging.getLogger(__name__)
HANDED_BACK = "handed back: the server running it was stopped (SIGTERM); resume it on any server"


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
        # 0-based, as run_step, access lists, the trace and the step resources count
        return f"step {self.index} of 0..{self.total - 1} {self.worker}: {what}{tail}"


EventSink = Callable[[StepEvent], Awaitable[None]]
Attempted = tuple[int, float, Usage | None]  # the successful attempt: number, latency, usage
AttemptStarter = Callable[[str], Awaitable[int]]  # records an attempt of a worker (the step's first starts it)


@dataclass
class RoundResult:
    status: RunStatus
    answer: str | None = None
    error: str | None = None


def round_text(run: Run, limit: int = 1500) -> str:
    """A finished round's steps and outputs, as later rounds and reviews see them."""
    parts = []
    for s in run.steps:
        out = (s.output or "")[:limit]
        parts.append(f"Step {s.index} ({s.worker}) subtask:\n{s.instruction}\n\nStep {s.index} response:\n{out}")
    return "\n\n".join(parts)


def worker_messages(task: str, workflow: Workflow, index: int, outputs: dict[int, str],
                    previous_round: str | None = None) -> list[dict[str, str]]:
    """The paper's worker prompt: the task, each visible step's subtask and response, then this subtask.
    A corrective round's steps with access "all" also see the previous round. A step that sees nothing and
    whose subtask is the task itself gets the task as it is: wrapping it in the team prompt only costs."""
    step = workflow.steps[index]
    if not workflow.visible(index) and not (previous_round and step.access == "all") and \
            step.instruction == task.strip():
        return [{"role": "user", "content": task}]
    parts = [f"Overall task:\n{task}"]
    if previous_round and workflow.steps[index].access == "all":
        parts.append(f"Previous round:\n{previous_round}")
    for j in workflow.visible(index):
        parts.append(f"Step {j} subtask:\n{workflow.steps[j].instruction}\n\nStep {j} response:\n{outputs[j]}")
    parts.append(f"Your subtask:\n{workflow.steps[index].instruction}")
    # the paper tells the last worker that its response is the answer, so it answers the whole task
    role = ("Your response is the final answer to the overall task: make it complete."
            if index == len(workflow.steps) - 1 else "Your response goes to the next steps, not to the user.")
    return [
        {"role": "system", "content": "You are one member of a team of models solving a task together. "
                                      f"Do your subtask well. {role}"},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def lease_lost(exc: BaseException) -> LeaseLost | None:
    """The LeaseLost inside `exc`, which a task group may have wrapped in exception groups."""
    if isinstance(exc, LeaseLost):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = lease_lost(inner)
            if found is not None:
                return found
    return None


class Engine:
    def __init__(self, registry: Registry, store: Store, planner: Planner | None = None,
                 pool: WorkerPool | None = None, policy: RetryPolicy | None = None) -> None:
        self.registry = registry
        self.store = store
        self._planner = planner
        self.pool = pool or WorkerPool(registry)
        self.policy = policy or RetryPolicy()
        self.health = WorkerHealth(self.policy)
        self.learn_before: float | None = None  # learn only from ratings older than this (evals set it)
        self.handing_back = False  # the server is stopping (RunManager.drain): a cancelled run is handed back

    @property
    def planner(self) -> Planner:
        if self._planner is None:
            self._planner = make_planner(self.registry)  # loads nothing until the first plan
        return self._planner

    def _planner_for(self, strategy: str) -> Planner:
        fixed = strategy_planner(strategy, self.registry.recipes)
        return fixed if fixed is not None else self.planner

    def _specs(self, ids: Sequence[str]) -> list[WorkerSpec]:
        return [self.registry.spec(i) for i in ids]

    # -- planning -------------------------------------------------------------------------------
    def prior(self, task: str, ids: Sequence[str], prefer: Prefer | None = None,
              max_steps: int | None = None) -> Prior | None:
        """What the store's rewarded runs say about `task` over these workers (None: nothing yet)."""
        outcomes = Outcomes.from_store(self.store, before=self.learn_before)
        return outcomes.prior(task, self._specs(ids), prefer or self.registry.conductor.prefer,
                              check_max_steps(max_steps, self.registry.conductor.max_steps),
                              self.registry.recipes)

    def check_plan(self, task: str, workers: Sequence[str] | None = None, max_steps: int | None = None,
                   strategy: str = "conductor", budget: Budget | None = None,
                   prefer: Prefer | None = None, workflow: Any = None) -> PlanRequest:
        """A plan's arguments, checked (a clear error for the first bad one) before anything is spent."""
        request = check_request(self.registry, task, workers, max_steps, strategy, budget, prefer, workflow)
        self.store.require_writable()  # before the conductor spends anything on a plan that cannot be kept
        return request

    async def plan(self, task: str, workers: Sequence[str] | None = None, max_steps: int | None = None,
                   workflow: Any = None, strategy: str = "conductor", budget: Budget | None = None,
                   prefer: Prefer | None = None, *, on_plan: PlanSink | None = None,
                   run_id: str | None = None) -> Run:
        """Plan (or take the host's `workflow`) and store the run as `planned`; nothing is spent yet.

        `strategy` is `conductor` (the default), `moa` or `single:<worker>`. The conductor plans with
        what past rewards say (`prefer` trades reward against cost; default the manifest's). `on_plan`
        hears how planning goes; `run_id`: the id to store the run under (one from store.new_run_id()).
        """
        request = self.check_plan(task, workers, max_steps, strategy, budget, prefer, workflow)
        return await self.plan_checked(request, on_plan=on_plan, run_id=run_id)

    async def plan_checked(self, request: PlanRequest, *, on_plan: PlanSink | None = None,
                           run_id: str | None = None) -> Run:
        """`plan` for arguments that check_plan has passed."""
        with telemetry.tracer().planning() as run_span:
            wf, info, options = await self._plan(request, run_span, on_plan)
            run = self.store.add_run(request.task, wf, info, options, run_id=run_id)
            run_span.planned(run, options)
            return run

    async def plan_claimed(self, request: PlanRequest, *, on_plan: PlanSink | None = None,
                           run_id: str | None = None) -> Claimed:
        """plan_checked for a run carried out at once (solve): stored already claimed by this process, in the
        plan's own transaction. Hand it to execute_checked as `claimed`, with nothing awaited in between (whatever
        the caller has to do first goes in as execute_checked's `first`, which the execution settles if it fails)."""
        with telemetry.tracer().planning() as run_span:
            wf, info, options = await self._plan(request, run_span, on_plan)
            claimed = self.store.add_claimed_run(request.task, wf, info, options, run_id=run_id)
            run_span.planned(claimed.run, options)
            return claimed

    async def _plan(self, request: PlanRequest, run_span: telemetry.RunSpan,
                    on_plan: PlanSink | None) -> tuple[Workflow, PlanInfo, RunOptions]:
        """The workflow (the host's, a recipe's or the planner's), how it was planned, and the run's options."""
        task, ids, steps, strategy, budget, prefer = (request.task, request.workers, request.max_steps,
                                                      request.strategy, request.budget, request.prefer)
        recursion = budget.max_depth > 0
        if request.workflow is not None:
            wf = request.workflow
            info = PlanInfo(source="host", planner="host", attempts=0)
        else:
            prior = self.prior(task, ids, prefer, steps) if strategy == "conductor" else None
            if prior is not None and prior.recipe is not None:  # the outcomes chose a recipe: nothing to ask
                wf = instantiate(self.registry.recipes[prior.recipe.name], prior.recipe, task)
                info = PlanInfo(source="prior", planner=self.planner.name, attempts=0, latency_s=0.0, prior=prior,
                                recipe=prior.recipe)
            else:
                # the run's limits cover its conductor calls too (the plan's usage is part of the run's)
                planning = self._planner_for(strategy).plan(task, self._specs(ids), steps, recursion, prior,
                                                            guard=BudgetGuard(budget), progress=on_plan)
                with telemetry.tracer().plan("plan", self.registry.conductor.api_base) as plan_span:
                    result = await planning
                    plan_span.planned(result.info, result.workflow)
                wf, info = result.workflow, result.info
        options = RunOptions(workers=ids, max_steps=steps, strategy=strategy, budget=budget, prefer=prefer,
                             otel=run_span.link)  # so that a run resumed in another process links to its plan
        return wf, info, options

    # -- execution ------------------------------------------------------------------------------
    def options(self, run_id: str) -> RunOptions:
        """A run's options, typed (a run stored before a field existed gets its default)."""
        return RunOptions.load(self.store.options(run_id))

    def check_resumable(self, run_id: str) -> Run:
        """The run, if it is a root run whose unfinished steps (its unfinished child runs' too) name workers
        the registry still has; else a clear error, raised before anything is claimed or spent."""
        run = self.store.get_run(run_id)
        if run.parent_run_id is not None:
            raise RunStateError(f"run {run_id} is part of run {run.parent_run_id}; resume that one")
        if run.status != RunStatus.COMPLETED:
            self.store.require_writable()
        pending = [run]
        while pending:
            current = pending.pop()
            if current.status == RunStatus.COMPLETED:
                continue
            for step in current.steps:
                if step.status != StepStatus.COMPLETED:
                    self._check_worker(current, step.index, step.worker, run_id)
            pending.extend(self.store.get_run(c) for c in self.store.children(current.id))
        return run

    def _check_worker(self, run: Run, index: int, worker: str, root: str) -> None:
        if worker == CONDUCTOR_WORKER or worker in self.registry.ids:
            return
        if run.id == root:
            where, instead = f"step {index}", (f"run that step on another worker with run_step(run_id={root!r}, "
                                               f"step={index}, worker=...), or ")
        else:
            where, instead = f"step {index} of run {run.id} (part of run {root})", ""
        raise RunStateError(
            f"{where}: worker {worker!r} is not in the workers of {self.registry.source} any more (they are "
            f"{', '.join(self.registry.ids)}); add it back to go on, or {instead}plan the task again")

    async def execute_checked(self, run_id: str, on_event: EventSink | None = None,
                              budget: Budget | None = None, known: Run | None = None,
                              claimed: Claimed | None = None, first: Callable[[], Awaitable[None]] | None = None,
                              heartbeats: Heartbeats | None = None) -> Run:
        """Carry out a run that check_resumable has passed (`budget`: the run's new limits, stored once it is
        claimed; `known`: the run as plan or check_resumable answered it just now, which the claim takes
        instead of reading it back while nothing has changed it; `claimed`: what plan_claimed answered, which
        is claimed already; `first`: awaited before the first step, as part of the execution: under its
        heartbeat, and a cancellation there ends the run as one during a step does; `heartbeats`: the loop that
        keeps the lease alive, running beside the caller for as long as the run can; None: the loop of the run
        around this one, else a loop of the run's own). RunManager is the door."""
        return await self._execute(run_id, on_event, None, budget=budget, known=known, claimed=claimed, first=first,
                                   heartbeats=heartbeats)

    def _guard(self, run_id: str, limits: Budget) -> BudgetGuard:
        # what was spent so far only matters under a limit (and costs a walk of the run tree)
        limited = limits.max_total_tokens is not None or limits.max_usd is not None
        return BudgetGuard(limits, self.store.tree_usage(run_id) if limited else Usage())

    async def _execute(self, run_id: str, on_event: EventSink | None, guard: BudgetGuard | None,
                       budget: Budget | None = None, known: Run | None = None, claimed: Claimed | None = None,
                       first: Callable[[], Awaitable[None]] | None = None, heartbeats: Heartbeats | None = None
                       ) -> Run:
        """Claim the run and carry it out. `guard`: the budget a parent shares with its child runs (None: the
        run's own, from its stored limits, after `budget` replaced them, written as the run's owner)."""
        with telemetry.tracer().run(run_id, self.options) as run_span:
            # the claim refuses a run another live process owns
            lease, run, stored = claimed if claimed is not None else self.store.claim_run(run_id, known)
            try:
                if budget is not None:
                    self.store.set_budget(lease, budget)
                opts = self.options(run_id) if budget is not None else RunOptions.load(stored)
                guard = guard if guard is not None else self._guard(run_id, opts.budget)
                async with self._keeping(lease, heartbeats):
                    outcome = await self._carry_out(run, lease, opts, on_event, guard, first)
            except BaseException as exc:
                lost = lease_lost(exc)
                if isinstance(lost, ParentLeaseLost):  # this child run is still ours: the parent's new owner
                    self._settle_cancelled(lease, handed_back=f"handed back: {lost}")  # carries it on
                if lost is not None:  # another process runs it now: write nothing, call nothing
                    log.warning("%s", lost)
                    raise lost from None
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    # the client's cancellation, a stopping server's, or, for a child run, a run around it that
                    # stopped as one of its writes found it taken over (a renewal that finds it raises
                    # ParentLeaseLost above): then the child is handed back all the same
                    taken = self._taken_over_around()
                    self._settle_cancelled(lease, handed_back=f"handed back: {taken}" if taken else None)
                else:
                    with suppress(LeaseLost):
                        self.store.finish_run(lease, RunStatus.FAILED, error=f"internal error: {exc!r}")
                raise
            self.store.finish_run(lease, outcome.status, answer=outcome.answer, error=outcome.error)
            run = self.store.get_run(run_id)
            run_span.finished(run)
        return run

    async def _carry_out(self, run: Run, lease: Lease, opts: RunOptions, on_event: EventSink | None,
                         guard: BudgetGuard, first: Callable[[], Awaitable[None]] | None) -> RoundResult:
        if first is not None:
            await first()
        outcome = await self._schedule(run, lease, opts, on_event, guard)
        if outcome.status == RunStatus.COMPLETED and opts.kind == "root":
            outcome = await self._rounds(run, lease, opts, outcome, on_event, guard)
        return outcome

    def _taken_over_around(self) -> LeaseLost | None:
        """The loss of a run around the current one (a child run's parent, its parent, ...), read from the store;
        None for a run no other run encloses, without a read."""
        for around in Heartbeats.enclosing_leases():
            try:
                taken = self.store.taken_over(around)
            except Exception:  # the store cannot say: settled as a cancellation, as before
                log.warning("run %s: whether it is still ours could not be read", around.run_id, exc_info=True)
                return None
            if taken is not None:
                return taken
        return None

    def _settle_cancelled(self, lease: Lease, handed_back: str | None = None) -> None:
        """`handed_back`: why the run is handed back though this server goes on (its parent was taken over)."""
        # store calls are synchronous, so cancellation cannot interrupt these writes
        with suppress(LeaseLost):
            self.store.cancel_in_flight(lease)
            if self.handing_back or handed_back:  # the run stays `running` with no owner (`interrupted`), which any
                # server on the same store may claim at once, without waiting for a stale heartbeat
                self.store.finish_run(lease, RunStatus.RUNNING, error=handed_back or HANDED_BACK)
            else:
                self.store.finish_run(lease, RunStatus.CANCELLED, error="cancelled by the client")

    @asynccontextmanager
    async def _keeping(self, lease: Lease, heartbeats: Heartbeats | None, alone: bool = False
                       ) -> AsyncIterator[None]:
        """Keep the lease alive while the block runs: in `heartbeats` (a RunManager's loop), in the loop the run
        around this one is held in (a child run's parent; unless `alone`: a run no other run encloses), or in a loop
        of its own that ends with the block."""
        beats = heartbeats or (None if alone else Heartbeats.enclosing(self.store))
        if beats is not None:
            with beats.holding(lease):
                yield
            return
        beats = Heartbeats(self.store)
        ended = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(beats.run, ended)
                try:
                    with beats.holding(lease):
                        yield
                finally:
                    ended.set()
        except BaseExceptionGroup as group:  # the loop raises nothing: what the group holds is the block's own,
            if len(group.exceptions) == 1:  # raised as the block raised it (run_step tells its errors by type)
                exc = group.exceptions[0]
                raise exc from exc.__cause__
            raise

    async def _schedule(self, run: Run, lease: Lease, opts: RunOptions, on_event: EventSink | None,
                        guard: BudgetGuard) -> RoundResult:
        wf = run.workflow
        outputs = {s.index: s.output or "" for s in run.steps if s.status == StepStatus.COMPLETED}
        finished = {i: anyio.Event() for i in range(len(wf.steps))}
        for i in outputs:
            finished[i].set()
        failures: dict[int, str] = {}
        stops: dict[int, str] = {}
        previous_text = round_text(self.store.get_run(opts.previous)) if opts.previous else None

        async def run_one(i: int) -> None:
            try:
                for j in wf.visible(i):
                    await finished[j].wait()
                failed_inputs = [j for j in wf.visible(i) if j in failures]
                if failed_inputs:
                    self.store.step_ended(lease, i, StepStatus.SKIPPED,
                                          f"skipped: it sees step(s) {failed_inputs}, which failed")
                    return
                if failures or stops or any(j not in outputs for j in wf.visible(i)):
                    return  # a step failed or a budget stopped the run: start nothing new, keep what runs
                messages = worker_messages(run.task, wf, i, outputs, previous_text)
                outputs[i] = await self._run_step(run, lease, wf, i, messages, opts, on_event, guard, outputs)
            except BudgetExceeded as exc:
                stops[i] = str(exc)
            except WorkerError as exc:
                failures[i] = str(exc)
            finally:
                finished[i].set()

        todo = [i for i in range(len(wf.steps)) if i not in outputs]
        if all(i - 1 in wf.visible(i) for i in range(1, len(wf.steps))):
            for i in todo:  # a chain (one step included): each waits for the one before, so run them in order here
                await run_one(i)  # without a task apiece (each would cost more than a one-step run's scheduling)
        else:
            async with anyio.create_task_group() as tg:
                for i in todo:
                    tg.start_soon(run_one, i)
        if failures:
            first = min(failures)
            return RoundResult(RunStatus.FAILED, None, f"step {first} failed: {failures[first]}")
        if stops:
            best = outputs[max(outputs)] if outputs else None
            return RoundResult(RunStatus.BUDGET_EXCEEDED, best, stops[min(stops)])
        return RoundResult(RunStatus.COMPLETED, outputs[len(wf.steps) - 1], None)

    async def _run_step(self, run: Run, lease: Lease, wf: Workflow, i: int, messages: list[dict[str, str]],
                        opts: RunOptions, on_event: EventSink | None, guard: BudgetGuard,
                        outputs: dict[int, str]) -> str:
        step = wf.steps[i]
        total = len(wf.steps)

        async def emit(phase: str, status: StepStatus) -> None:
            if on_event:
                await on_event(StepEvent(run.id, i, total, step.worker, phase, status, step.instruction))

        started = False

        async def attempt_started(worker: str) -> int:
            """Record an attempt (LeaseLost: make no call); the first also starts the step, in one transaction,
            and is when listeners hear that it started."""
            nonlocal started
            n = self.store.attempt_started(lease, i, worker, step_start=not started)
            if not started:
                started = True
                await emit("start", StepStatus.RUNNING)
            return n

        with telemetry.tracer().step(run.id, i, step) as step_span:
            code = None
            try:
                if step.worker == CONDUCTOR_WORKER:
                    text, usage, attempt = await self._run_child(run, lease, i, messages, opts, guard,
                                                                 attempt_started)
                elif self.registry.spec(step.worker).kind == "python":
                    text, usage, attempt, code = await self._run_program(lease, wf, i, outputs, attempt_started)
                else:
                    text, usage, attempt = await self._call_with_retries(lease, i, step.worker, messages, guard,
                                                                    step_span, attempt_started)
            except BudgetExceeded:
                self.store.reset_step(lease, i)
                raise
            except WorkerError as exc:
                self.store.step_ended(lease, i, StepStatus.FAILED, str(exc))
                await emit("end", StepStatus.FAILED)
                raise
            self.store.step_completed(lease, i, text, usage, attempt, code=code)
            await emit("end", StepStatus.COMPLETED)
            step_span.completed(text)
        return text

    async def _run_program(self, lease: Lease, wf: Workflow, i: int, outputs: dict[int, str],
                           attempt_started: AttemptStarter) -> tuple[str, Usage, Attempted, str | None]:
        """A python worker's step: the program it sees, run once in the sandbox (it calls no model, so it is
        not retried: the same code prints the same). Its output is what the program printed; a step that finds
        no program says so as its output, so that a later step can fall back to reasoning."""
        spec = self.registry.spec(wf.steps[i].worker)
        code, where = python_worker.find_program(wf, i, outputs)
        free = Usage(cost_usd=0.0)
        n = await attempt_started(spec.id)
        if code is None:
            self.store.attempt_ended(lease, i, n, "ok", 0.0, free)
            return f"[no program to run: {where}]", free, (n, 0.0, free), None
        try:
            done = await python_worker.run(spec, code, self.pool.limiter(spec.id))
        except anyio.get_cancelled_exc_class():
            with suppress(LeaseLost):
                self.store.attempt_ended(lease, i, n, "cancelled", 0.0)
            raise
        if done.refused is not None:  # fail closed: the program was not run without the isolation it asks for
            error = f"{spec.id}: {done.refused}"
            self.store.attempt_ended(lease, i, n, "error", done.seconds, error=error)
            raise WorkerError(error, retryable=False)
        return spec.capped(done.output()), free, (n, done.seconds, free), code

    def _candidates(self, worker: str) -> list[str]:
        """The step's worker, then its declared fallbacks (a cooled-down worker goes last)."""
        chain, seen = [], set()
        current: str | None = worker
        while current is not None and current not in seen:
            seen.add(current)
            chain.append(current)
            current = self.registry.spec(current).fallback
        return sorted(chain, key=self.health.cooling)  # stable: order kept among equals

    async def _call_with_retries(self, lease: Lease, index: int, worker: str, messages: list[dict[str, str]],
                                 guard: BudgetGuard, step_span: telemetry.StepSpan,
                                 attempt_started: AttemptStarter) -> tuple[str, Usage, Attempted]:
        """Call the step's worker (then its fallbacks) until one answers. The successful attempt is
        returned, not recorded: the step's commit records it with the output, in one transaction."""
        errors: list[str] = []
        for candidate in self._candidates(worker):
            spec = self.registry.spec(candidate)
            for attempt in range(1, self.policy.attempts_per_worker + 1):
                reservation = guard.reserve(spec, messages)  # raises before anything is spent
                try:
                    n = await attempt_started(candidate)  # LeaseLost: make no call
                except BaseException:
                    guard.settle(reservation, None)
                    raise
                started = time.perf_counter()
                try:
                    with step_span.model_call(spec, messages) as call_span:
                        done = await self.pool.complete(candidate, messages)
                        call_span.answered(done.text, done.usage)
                except anyio.get_cancelled_exc_class():
                    guard.settle(reservation, None)
                    with suppress(LeaseLost):
                        self.store.attempt_ended(lease, index, n, "cancelled", time.perf_counter() - started)
                    raise
                except (WorkerError, TimeoutError) as exc:
                    guard.settle(reservation, None)
                    err = exc if isinstance(exc, WorkerError) else WorkerError(
                        f"{candidate}: timed out after {spec.timeout_s:g}s")
                    self.store.attempt_ended(lease, index, n, "error", time.perf_counter() - started,
                                             error=str(err))
                    errors.append(str(err))
                    if not err.retryable:
                        break
                    if attempt < self.policy.attempts_per_worker:
                        await anyio.sleep(self.policy.delay(attempt, err.retry_after))
                    continue
                guard.settle(reservation, done.usage)
                self.health.ok(candidate)
                return spec.capped(done.text), done.usage, (n, done.latency_s, done.usage)
            self.health.failed(candidate)
        raise WorkerError("; ".join(errors[-3:]) or f"{worker}: no attempt made", retryable=False)

    # -- recursion and rounds -------------------------------------------------------------------
    async def _run_child(self, run: Run, lease: Lease, i: int, messages: list[dict[str, str]],
                         opts: RunOptions, guard: BudgetGuard,
                         attempt_started: AttemptStarter) -> tuple[str, Usage, Attempted]:
        """The conductor plans and runs the subtask as a child workflow; its answer is this step's output.
        Its usage stays on the child run (the tree's total counts it once)."""
        depth = opts.depth + 1
        n = await attempt_started(CONDUCTOR_WORKER)
        started = time.perf_counter()
        existing = self.store.children(run.id, step=i)
        try:
            if existing and self.store.get_run(existing[-1]).status == RunStatus.COMPLETED:
                child = self.store.get_run(existing[-1])
            else:
                if existing:
                    child_id = existing[-1]
                else:
                    if depth > guard.budget.max_depth:
                        raise WorkerError(f"conductor: depth {depth} exceeds max_depth {guard.budget.max_depth}",
                                          retryable=False)
                    ids = list(opts.workers or self.registry.available_ids())
                    subtask = messages[-1]["content"]
                    planning = self.planner.plan(subtask, self._specs(ids), opts.max_steps,
                                                 depth < guard.budget.max_depth, guard=guard)  # reserved, added
                    with telemetry.tracer().plan("plan", self.registry.conductor.api_base) as plan_span:
                        result = await planning
                        plan_span.planned(result.info, result.workflow)
                    child_opts = opts.model_copy(update={"kind": "recursion", "depth": depth})
                    child_id = self.store.create_run(subtask, result.workflow, result.info, child_opts,
                                                     parent=lease, parent_step=i)
                child = await self._execute(child_id, None, guard)
        except anyio.get_cancelled_exc_class():
            with suppress(LeaseLost):
                self.store.attempt_ended(lease, i, n, "cancelled", time.perf_counter() - started)
            raise
        if child.status == RunStatus.COMPLETED and child.answer is not None:
            return child.answer, Usage(), (n, time.perf_counter() - started, None)
        error = f"child run {child.id} ended {child.status.value}: {child.error}"
        self.store.attempt_ended(lease, i, n, "error", time.perf_counter() - started, error=error)
        if child.status == RunStatus.BUDGET_EXCEEDED:
            raise BudgetExceeded(error)
        raise WorkerError(f"conductor: {error}", retryable=False)

    async def _rounds(self, run: Run, lease: Lease, opts: RunOptions, outcome: RoundResult,
                      on_event: EventSink | None, guard: BudgetGuard) -> RoundResult:
        """Review the answer; run corrective rounds until the conductor accepts or max_rounds is reached."""
        if guard.budget.max_rounds <= 1:
            return outcome
        answer = outcome.answer or ""
        prev_id, current = run.id, 1
        rounds = {self.options(c).round or 0: c for c in self.store.children(run.id, rounds=True)}
        reviews = list(opts.reviews)
        while current < guard.budget.max_rounds:
            child_id = rounds.get(current + 1)
            if child_id is None:
                if any(r.round == current and r.accepted for r in reviews):
                    break
                ids = list(opts.workers or self.registry.available_ids())
                planner = self._planner_for(opts.strategy)
                planning = planner.review(run.task, round_text(self.store.get_run(prev_id)), answer,
                                          self._specs(ids), opts.max_steps,
                                          guard.budget.max_depth > 0, guard=guard)  # reserved and added
                with telemetry.tracer().plan("review", self.registry.conductor.api_base) as plan_span:
                    result = await planning
                    plan_span.planned(result.info, result.workflow)
                reviews.append(Review(round=current, accepted=result.workflow is None, info=result.info))
                self.store.set_reviews(lease, reviews)
                if result.workflow is None:
                    break
                child_opts = opts.model_copy(update={"kind": "round", "round": current + 1, "previous": prev_id,
                                                     "reviews": []})
                # the review's calls are counted once, in `reviews` above: the round's plan (that same review)
                # carries no usage, or every sum over the run tree would count them twice
                plan = result.info.model_copy(update={"usage": Usage()})
                child_id = self.store.create_run(run.task, result.workflow, plan, child_opts, parent=lease)
            child = await self._execute(child_id, on_event, guard)
            if child.status != RunStatus.COMPLETED or child.answer is None:
                status = child.status if child.status in FINAL else RunStatus.FAILED
                return RoundResult(status, answer, f"round {current + 1}: {child.error}")
            answer, prev_id, current = child.answer, child_id, current + 1
        return RoundResult(RunStatus.COMPLETED, answer, None)

    # -- host-driven steps ----------------------------------------------------------------------
    def runnable(self, run: Run) -> list[int]:
        done = {s.index for s in run.steps if s.status == StepStatus.COMPLETED}
        return [s.index for s in run.steps if s.status != StepStatus.COMPLETED
                and all(j in done for j in run.workflow.visible(s.index))]

    @staticmethod
    def _check_step_ready(run: Run, index: int) -> None:
        if run.steps[index].status == StepStatus.COMPLETED:
            raise RunStateError(f"step {index} is already completed; its output is kept and never re-bought")
        waiting = [j for j in run.workflow.visible(index) if run.steps[j].status != StepStatus.COMPLETED]
        if waiting:
            raise RunStateError(f"step {index} sees step(s) {waiting}, which are not completed yet; "
                                f"run those first")

    async def run_step(self, run_id: str, index: int, instruction: str | None = None,
                       worker: str | None = None) -> tuple[StepRecord, Run]:
        """Run one step of a run (optionally changed), its lease kept alive by a heartbeat loop of its own; refuse
        when a step it sees is not done."""
        with telemetry.tracer().run(run_id, self.options) as run_span:
            run = self.store.get_run(run_id)
            if run.parent_run_id is not None:  # its parent's execution drives it: a step run here would be lost
                raise RunStateError(f"run {run_id} is part of run {run.parent_run_id}; drive that one "
                                    "(resume, or run_step on its steps)")
            if run.status == RunStatus.RUNNING:
                raise RunStateError(f"run {run_id} is running; wait for it (get_run) before driving steps by hand")
            n = len(run.steps)
            if not 0 <= index < n:
                raise WorkflowError(f"step: {index} is out of range; this run has steps 0..{n - 1}")
            self._check_step_ready(run, index)
            opts = self.options(run_id)
            budget = opts.budget
            wf = run.workflow
            edited = instruction is not None or worker is not None
            if edited:
                allowed = opts.workers or self.registry.available_ids()
                steps = [s.model_copy() for s in wf.steps]
                steps[index] = steps[index].model_copy(update={
                    k: v for k, v in (("instruction", instruction), ("worker", worker)) if v is not None})
                wf = validate_workflow({"steps": [s.model_dump() for s in steps]}, allowed, MAX_STEPS_LIMIT,
                                       allow_recursion=budget.max_depth > 0)
            self._check_worker(run, index, wf.steps[index].worker, run_id)
            before = run
            lease, run = self.store.claim(run_id)
            try:  # what was read before the claim may have changed: another process may have run this step
                self._check_step_ready(run, index)
            except RunStateError:
                # left as it was found: an interrupted run is stored running with no owner, for adoption
                left = RunStatus.RUNNING if before.status == RunStatus.INTERRUPTED else before.status
                self.store.finish_run(lease, left, error=before.error)
                raise
            if edited:
                self.store.edit_step(lease, index, wf)  # fenced: only the owner changes a run's workflow
            outputs = {s.index: s.output or "" for s in run.steps if s.status == StepStatus.COMPLETED}
            guard = BudgetGuard(budget, self.store.tree_usage(run_id))
            messages = worker_messages(run.task, wf, index, outputs)
            try:
                async with self._keeping(lease, None, alone=True):
                    await self._run_step(run, lease, wf, index, messages, opts, None, guard, outputs)
            except BudgetExceeded as exc:
                self.store.finish_run(lease, RunStatus.BUDGET_EXCEEDED, error=str(exc))
            except WorkerError as exc:
                self.store.finish_run(lease, RunStatus.FAILED, error=f"step {index} failed: {exc}")
            except anyio.get_cancelled_exc_class():
                self._settle_cancelled(lease)
                raise
            except LeaseLost:
                raise  # another process runs it now: write nothing
            except Exception as exc:  # the store failed, or a fault of ours: rather than left owned (a replica
                # would adopt it once its lease lapsed, and run it to its end)
                with suppress(Exception):
                    self.store.finish_run(lease, RunStatus.FAILED, error=f"step {index}: internal error: {exc!r}")
                raise
            else:
                after = self.store.get_run(run_id)
                if all(s.status == StepStatus.COMPLETED for s in after.steps):
                    self.store.finish_run(lease, RunStatus.COMPLETED, answer=after.steps[-1].output)
                else:
                    self.store.finish_run(lease, RunStatus.PLANNED)
            final = self.store.get_run(run_id)
            run_span.finished(final)
        return final.steps[index], final
