"""The Planner interface and the plan-validate-retry-fallback loop every conductor shares."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..errors import WorkflowError
from ..models import CONDUCTOR_WORKER, PlanInfo, Step, Usage, WorkerSpec, Workflow
from ..workflows import validate_workflow
from .parse import parse_json_plan, parse_paper_plan
from .prompts import planner_messages, review_messages
from .schema import workflow_schema

log = logging.getLogger(__name__)


@dataclass
class PlanResult:
    workflow: Workflow
    info: PlanInfo


class Planner(Protocol):
    name: str

    async def plan(self, task: str, workers: Sequence[WorkerSpec], max_steps: int,
                   allow_recursion: bool = False) -> PlanResult: ...

    async def review(self, task: str, round_text: str, answer: str, workers: Sequence[WorkerSpec],
                     max_steps: int, allow_recursion: bool = False) -> ReviewResult:
        """No workflow accepts the answer; else a corrective workflow."""
        ...


@dataclass
class ReviewResult:
    workflow: Workflow | None  # None accepts the answer
    info: PlanInfo


@dataclass
class Generation:
    text: str
    usage: Usage


def fallback_workflow(task: str, workers: Sequence[WorkerSpec]) -> Workflow:
    """The safe plan: the whole task to the first (strongest) worker."""
    return Workflow(steps=[Step(worker=workers[0].id, instruction=task[:8000], access="none")])


class ModelPlanner(ABC):
    """A conductor model: prompt it, parse and validate its plan, retry once, else fall back."""

    name: str
    fmt: Literal["json", "paper"]
    tries = 2

    @abstractmethod
    async def generate(self, messages: list[dict[str, str]], constraint: Any, max_steps: int,
                       attempt: int) -> Generation:
        """One reply; `constraint` (from `constraint()`) is None in the paper's free format."""

    def constraint(self, names: Sequence[str], max_steps: int, allow_empty: bool) -> Any:
        """What a JSON-format reply is constrained to: the workflow's JSON schema by default."""
        return workflow_schema(names, max_steps, allow_empty=allow_empty)

    async def plan(self, task: str, workers: Sequence[WorkerSpec], max_steps: int,
                   allow_recursion: bool = False) -> PlanResult:
        messages = planner_messages(task, workers, max_steps, self.fmt, allow_recursion)
        workflow, info = await self._decide(messages, workers, max_steps, allow_recursion, allow_empty=False)
        return PlanResult(workflow or fallback_workflow(task, workers), info)

    async def review(self, task: str, round_text: str, answer: str, workers: Sequence[WorkerSpec],
                     max_steps: int, allow_recursion: bool = False) -> ReviewResult:
        messages = review_messages(task, round_text, answer, workers, max_steps, self.fmt, allow_recursion)
        workflow, info = await self._decide(messages, workers, max_steps, allow_recursion, allow_empty=True)
        info.source = "review"
        return ReviewResult(workflow, info)  # no workflow: accepted, or no usable correction

    async def _decide(self, messages: list[dict[str, str]], workers: Sequence[WorkerSpec], max_steps: int,
                      allow_recursion: bool, allow_empty: bool) -> tuple[Workflow | None, PlanInfo]:
        """A valid workflow and how it was made; no workflow when it was empty (a review accepting) or
        when every try failed (info.source says `fallback`)."""
        ids = [w.id for w in workers]
        names = ids + ([CONDUCTOR_WORKER] if allow_recursion else [])
        constraint = self.constraint(names, max_steps, allow_empty) if self.fmt == "json" else None
        errors: list[str] = []
        usage = Usage()
        started = time.perf_counter()
        raw = None

        def info(source: Any, attempts: int) -> PlanInfo:
            return PlanInfo(source=source, planner=self.name, attempts=attempts, errors=errors,
                            latency_s=time.perf_counter() - started, usage=usage, raw=raw)

        for attempt in range(1, self.tries + 1):
            try:
                gen = await self.generate(messages, constraint, max_steps, attempt)
            except WorkflowError as exc:
                errors.append(str(exc))
                continue
            usage, raw = usage + gen.usage, gen.text
            try:
                data = parse_json_plan(gen.text) if self.fmt == "json" else parse_paper_plan(gen.text, names)
                if allow_empty and isinstance(data, dict) and data.get("steps") == []:
                    return None, info("conductor", attempt)
                workflow = validate_workflow(data, ids, max_steps, allow_recursion)
            except WorkflowError as exc:
                log.info("plan attempt %d rejected: %s", attempt, exc)
                errors.append(str(exc))
                continue
            return workflow, info("conductor" if attempt == 1 else "retry", attempt)
        return None, info("fallback", self.tries)
