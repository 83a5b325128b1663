"""The Planner interface and the plan-validate-retry-fallback loop every conductor shares."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import anyio

from ..errors import WorkerError, WorkflowError
from ..models import CONDUCTOR_WORKER, PlanInfo, Prior, RecipeUse, Step, Usage, WorkerSpec, Workflow
from ..runs.budget import BudgetExceeded, BudgetGuard
from ..runs.workflows import validate_workflow
from ..workers.llm import ModelCall, Reply
from .checks import check_instructions, repair
from .parse import parse_json_plan, parse_paper_plan
from .prompts import EXAMPLE_SUBJECTS, planner_messages, review_messages
from .schema import workflow_schema

log = logging.getLogger(__name__)


@dataclass
class PlanResult:
    workflow: Workflow
    info: PlanInfo


@dataclass(frozen=True)
class PlanEvent:
    """Planning began, is going on (a tick while the conductor writes), or ended: hosts show these as
    progress, since a small conductor on a busy CPU can take longer than a host waits for a tool call."""

    planner: str
    phase: Literal["start", "waiting", "writing", "planned"]  # waiting: for a model busy with another call
    elapsed_s: float
    attempt: int = 1
    tokens: int = 0  # generated so far in this attempt (0 where the planner cannot tell)
    max_tokens: int | None = None
    steps: int | None = None  # "planned": the workflow's length
    source: str | None = None  # "planned": how the workflow came to be (PlanInfo.source)
    note: str | None = None  # "planned": why it fell back, if it did
    run_id: str | None = None  # filled in by whoever knows the run (RunManager)

    @property
    def message(self) -> str:
        if self.phase == "start":
            return f"planning with {self.planner}"
        if self.phase == "planned":
            tail = f": {self.note}" if self.note else ""
            return f"planned {self.steps} step(s) in {self.elapsed_s:.0f} s ({self.source}){tail}"
        if self.phase == "waiting":
            return f"planning with {self.planner}: waiting for the model, {self.elapsed_s:.0f} s"
        written = f"{self.tokens} of at most {self.max_tokens} tokens" if self.max_tokens else "waiting for a reply"
        again = f", attempt {self.attempt}" if self.attempt > 1 else ""
        return f"planning with {self.planner}: {written}{again}, {self.elapsed_s:.0f} s"


PlanSink = Callable[[PlanEvent], Awaitable[None]]


E = TypeVar("E")


async def tell(progress: Callable[[E], Awaitable[None]], event: E) -> None:
    """Send one progress event. Progress is for show: a sink that fails (its client gone away) never fails the plan
    or run that tells it; every surface sends its progress through here."""
    try:
        await progress(event)
    except Exception:
        log.debug("progress not delivered", exc_info=True)


@dataclass
class Watch:
    """What one attempt has written so far: a local model's thread sets it, the progress ticker reads it."""

    tokens: int = 0
    max_tokens: int | None = None

    def token(self, n: int) -> None:
        self.tokens = n


class Planner(Protocol):
    name: str

    async def plan(self, task: str, workers: Sequence[WorkerSpec], max_steps: int,
                   allow_recursion: bool = False, prior: Prior | None = None,
                   guard: BudgetGuard | None = None, progress: PlanSink | None = None) -> PlanResult:
        """`prior`: what past rewards say about tasks like this one (outcomes.py); a fixed strategy
        ignores it. `guard`: the run's budget; each model call is reserved on it and its usage added.
        `progress`: told while a model plans (a fixed strategy, which plans at once, tells nothing)."""
        ...

    async def review(self, task: str, round_text: str, answer: str, workers: Sequence[WorkerSpec],
                     max_steps: int, allow_recursion: bool = False,
                     guard: BudgetGuard | None = None) -> ReviewResult:
        """No workflow accepts the answer; else a corrective workflow."""
        ...


@dataclass
class ReviewResult:
    workflow: Workflow | None  # None accepts the answer
    info: PlanInfo


def fallback_workflow(task: str, workers: Sequence[WorkerSpec], prior: Prior | None = None) -> Workflow:
    """The safe plan: the whole task to the worker the outcomes favour, else the first (strongest)."""
    worker = prior.final[0] if prior is not None else next((w.id for w in workers if w.kind == "model"),
                                                            workers[0].id)
    return Workflow(steps=[Step(worker=worker, instruction=task[:8000], access="none")])


class ModelPlanner(ABC):
    """A conductor model: prompt it, parse and validate its plan, retry once, else fall back."""

    name: str
    fmt: Literal["json", "paper"]
    tries = 2
    # "neutral": the model sees worker-0, worker-1, ... instead of the manifest's ids, as the paper's
    # conductor did, so that a name's wording cannot steer it; plans are mapped back to the real ids
    worker_names: Literal["ids", "neutral"] = "ids"
    # a plan (or review) that takes longer, every attempt together, is stopped and replaced by the fallback
    plan_timeout_s: float | None = None
    progress_every_s = 1.0  # how often a `progress` sink hears how the writing goes

    def _shown(self, workers: Sequence[WorkerSpec]) -> tuple[list[WorkerSpec], dict[str, str]]:
        """The workers as the model sees them, and the map from a shown id back to the real one."""
        if self.worker_names == "ids":
            return list(workers), {w.id: w.id for w in workers}
        shown = [w.model_copy(update={"id": f"worker-{i}"}) for i, w in enumerate(workers)]
        return shown, {s.id: w.id for s, w in zip(shown, workers, strict=True)}

    @staticmethod
    def _real(workflow: Workflow | None, real: dict[str, str]) -> Workflow | None:
        if workflow is None:
            return None
        return Workflow(steps=[s.model_copy(update={"worker": real.get(s.worker, s.worker)})
                               for s in workflow.steps])

    async def fit(self, task: str, build: Callable[[str], list[dict[str, str]]],
                  max_steps: int) -> tuple[list[dict[str, str]] | None, list[str]]:
        """The prompt `build` makes for `task`, and notes for the trace. A conductor with a small context (a
        local GGUF) plans from a shortened view of a task too long for it; None when not even that fits."""
        return build(task), []

    @abstractmethod
    async def generate(self, messages: list[dict[str, str]], constraint: Any, max_steps: int,
                       attempt: int, watch: Watch | None = None) -> Reply:
        """One reply; `constraint` (from `constraint()`) is None in the paper's free format. A planner that
        can count its tokens as they come sets `watch.max_tokens` and calls `watch.token(n)`."""

    def constraint(self, names: Sequence[str], max_steps: int, allow_empty: bool,
                   final: Sequence[str] | None = None) -> Any:
        """What a JSON-format reply is constrained to: the workflow's JSON schema by default (a remote
        model's final worker is then held to `final` after parsing)."""
        return workflow_schema(names, max_steps, allow_empty=allow_empty)

    def call_spec(self, constraint: Any, max_steps: int) -> ModelCall | None:
        """One `generate` call as a budget sees it (model, price, completion cap); None for a planner that
        only delegates to another one."""
        return None

    async def plan(self, task: str, workers: Sequence[WorkerSpec], max_steps: int,
                   allow_recursion: bool = False, prior: Prior | None = None,
                   guard: BudgetGuard | None = None, progress: PlanSink | None = None) -> PlanResult:
        if prior is not None and prior.decided:
            # one step on one worker is all the outcomes allow: nothing is left for the model to decide
            prior.changes.append(f"one step on {prior.final[0]}: decided by the outcomes, no conductor call")
            wf = fallback_workflow(task, workers, prior)
            use = RecipeUse(name="direct", slots={"solver": wf.steps[0].worker})  # the task, as it is, to one
            return PlanResult(wf, PlanInfo(source="prior", planner=self.name, attempts=0, latency_s=0.0,
                                           prior=prior, recipe=use))
        if prior is not None and prior.max_steps is not None and prior.max_steps < max_steps:
            prior.changes.append(f"at most {prior.max_steps} step(s): more steps did not pay on similar tasks")
            max_steps = prior.max_steps
        shown, real = self._shown(workers)
        started = time.perf_counter()
        if progress is not None:  # at once: fitting the prompt may first wait for the model
            await tell(progress, PlanEvent(self.name, "start", 0.0))
        messages, notes = await self._fit_within(
            task, lambda view: planner_messages(view, shown, max_steps, self.fmt, allow_recursion), max_steps,
            started, progress)
        if messages is None:
            notes[-1] += "; planned the whole task as one step instead"
            return PlanResult(fallback_workflow(task, workers, prior),
                              PlanInfo(source="fallback", planner=self.name, attempts=0, errors=list(notes),
                                       notes=notes, latency_s=time.perf_counter() - started, prior=prior))
        final = None
        if prior is not None:
            alias = {r: s for s, r in real.items()}
            final = [alias[f] for f in prior.final]
            if set(prior.final) != {w.id for w in workers}:
                prior.changes.append(f"final step restricted to {', '.join(prior.final)} by the outcomes")
        workflow, info = await self._decide(messages, task, shown, max_steps, allow_recursion,
                                            allow_empty=False, final=final, guard=guard, progress=progress,
                                            started=started)
        workflow = self._real(workflow, real)
        if workflow is None and info.notes:  # out of time
            info.notes[-1] += "; planned the whole task as one step instead"
        info.prior = prior
        info.notes.extend(notes)
        return PlanResult(workflow or fallback_workflow(task, workers, prior), info)

    async def review(self, task: str, round_text: str, answer: str, workers: Sequence[WorkerSpec],
                     max_steps: int, allow_recursion: bool = False,
                     guard: BudgetGuard | None = None) -> ReviewResult:
        shown, real = self._shown(workers)
        started = time.perf_counter()
        messages, notes = await self._fit_within(
            task, lambda view: review_messages(view, round_text, answer, shown, max_steps, self.fmt,
                                               allow_recursion), max_steps, started, None)
        if messages is None:
            notes[-1] += "; no review: the answer stands"
            return ReviewResult(None, PlanInfo(source="review", planner=self.name, attempts=0, errors=list(notes),
                                               notes=notes, latency_s=time.perf_counter() - started))
        workflow, info = await self._decide(messages, task, shown, max_steps, allow_recursion, allow_empty=True,
                                            guard=guard, started=started)
        if info.source == "fallback" and info.notes:  # out of time
            info.notes[-1] += "; no review: the answer stands"
        info.source = "review"
        info.notes.extend(notes)
        return ReviewResult(self._real(workflow, real), info)  # no workflow: accepted, or no usable correction

    async def _fit_within(self, task: str, build: Callable[[str], list[dict[str, str]]], max_steps: int,
                          started: float, progress: PlanSink | None) -> tuple[list[dict[str, str]] | None, list[str]]:
        """`fit`, within what is left of plan_timeout_s: counting the prompt needs the model, which may still be
        loading or busy with another call. No messages (and why, last in the notes) when it did not fit or
        the time ran out first."""
        left = None if self.plan_timeout_s is None else self.plan_timeout_s - (time.perf_counter() - started)
        with anyio.move_on_after(left):  # only a timeout leaves this block without returning
            async with self._ticking(progress, Watch(), 1, started, phase="waiting"):
                return await self.fit(task, build, max_steps)
        return None, [f"conductor: no plan within plan_timeout_s={self.plan_timeout_s:g} s (conductor.plan_timeout_s); "
                      f"the model was not ready (loading, or busy with another call) before it could start"]

    @asynccontextmanager
    async def _ticking(self, progress: PlanSink | None, watch: Watch, attempt: int, started: float,
                       phase: Literal["waiting", "writing"] = "writing") -> AsyncIterator[None]:
        """Tell `progress` how the writing (or the wait for the model) goes every progress_every_s while the
        body runs."""
        if progress is None:
            yield
            return

        async def tick() -> None:
            while True:
                await anyio.sleep(self.progress_every_s)
                await tell(progress, PlanEvent(self.name, phase, time.perf_counter() - started, attempt,
                                               watch.tokens, watch.max_tokens))

        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _decide(self, messages: list[dict[str, str]], task: str, workers: Sequence[WorkerSpec],
                      max_steps: int, allow_recursion: bool, allow_empty: bool,
                      final: Sequence[str] | None = None, guard: BudgetGuard | None = None,
                      progress: PlanSink | None = None,
                      started: float | None = None) -> tuple[Workflow | None, PlanInfo]:
        """A valid workflow and how it was made; no workflow when it was empty (a review accepting) or
        when every try failed (info.source says `fallback`). `final`: the workers allowed to answer
        the last step (the grammar enforces it for a local conductor; a remote one's plan is repaired).
        Under a `guard`, each call's worst case is reserved first; a call the budget cannot afford is not
        made, and the plan falls back (a review accepts) with the reason in `errors`. Past plan_timeout_s
        the model is stopped, and the plan falls back with the reason in `errors` and `notes`."""
        ids = [w.id for w in workers]
        names = ids + ([CONDUCTOR_WORKER] if allow_recursion else [])
        constraint = self.constraint(names, max_steps, allow_empty, final) if self.fmt == "json" else None
        repairs: list[str] = []
        errors: list[str] = []
        notes: list[str] = []
        usage = Usage()
        started = time.perf_counter() if started is None else started  # the plan's clock, if it began earlier
        deadline = None if self.plan_timeout_s is None else started + self.plan_timeout_s
        raw = None

        def info(source: Any, attempts: int) -> PlanInfo:
            return PlanInfo(source=source, planner=self.name, attempts=attempts, errors=errors, notes=notes,
                            latency_s=time.perf_counter() - started, usage=usage, raw=raw, repairs=repairs)

        spec = self.call_spec(constraint, max_steps) if guard is not None else None
        for attempt in range(1, self.tries + 1):
            reservation = None
            if guard is not None and spec is not None:
                try:
                    reservation = guard.reserve(spec, messages)
                except (BudgetExceeded, WorkerError) as exc:  # over budget, or unpriced under max_usd
                    errors.append(str(exc))
                    break
            spent: Usage | None = None
            watch = Watch()
            try:
                with anyio.move_on_after(None if deadline is None else deadline - time.perf_counter()):
                    async with self._ticking(progress, watch, attempt, started):
                        gen = await self.generate(messages, constraint, max_steps, attempt, watch)
                        spent = gen.usage
                if spent is None:  # out of time: the model was stopped mid-reply
                    wrote = f"{watch.tokens} tokens written" if watch.max_tokens else "no reply yet"
                    late = (f"conductor: no plan within plan_timeout_s={self.plan_timeout_s:g} s (conductor."
                            f"plan_timeout_s); stopped attempt {attempt} with {wrote}")
                    errors.append(late)
                    notes.append(late)
                    return None, info("fallback", attempt)
            except WorkflowError as exc:
                errors.append(str(exc))
                continue
            finally:  # the guard counts what the call really used
                if guard is not None and reservation is not None:
                    guard.settle(reservation, spent)
                elif guard is not None and spent is not None:
                    guard.add(spent)
            usage, raw = usage + gen.usage, gen.text
            try:
                data = parse_json_plan(gen.text) if self.fmt == "json" else parse_paper_plan(gen.text, names)
                if allow_empty and isinstance(data, dict) and data.get("steps") == []:
                    return None, info("conductor", attempt)
                workflow = validate_workflow(data, ids, max_steps, allow_recursion)
                check_instructions(workflow, task, EXAMPLE_SUBJECTS)
            except WorkflowError as exc:
                log.info("plan attempt %d rejected: %s", attempt, exc)
                errors.append(str(exc))
                continue
            workflow, fixed = repair(workflow)
            repairs.extend(fixed)
            if final and workflow.steps[-1].worker not in final:
                repairs.append(f"final step moved from {workflow.steps[-1].worker} to {final[0]}, "
                               "which the outcomes favour")
                steps = [*workflow.steps[:-1], workflow.steps[-1].model_copy(update={"worker": final[0]})]
                workflow = Workflow(steps=steps)
            return workflow, info("conductor" if attempt == 1 else "retry", attempt)
        return None, info("fallback", self.tries)
