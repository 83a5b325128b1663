"""The Planner interface and the plan-validate-retry-fallback loop every conductor shares."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..errors import WorkflowError
from ..models import CONDUCTOR_WORKER, PlanInfo, Step, Usage, Workflow, WorkerSpec
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
                     max_steps: int, allow_recursion: bool = False) -> PlanResult | None:
        """None accepts the answer; else a corrective workflow."""
        ...


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
    async def generate(self, messages: list[dict[str, str]], schema: dict[str, Any] | None,
                       max_steps: int, attempt: int) -> Generation: ...

    async def plan(self, task: str, workers: Sequence[WorkerSpec], max_steps: int,
                   allow_recursion: bool = False) -> PlanResult:
        messages = planner_messages(task, workers, max_steps, self.fmt, allow_recursion)
        result = await self._decide(messages, workers, max_steps, allow_recursion, allow_empty=False)
        if result is None or isinstance(result, PlanInfo):
            info = result if isinstance(result, PlanInfo) else PlanInfo(source="fallback", planner=self.name)
            return PlanResult(fallback_workflow(task, workers), info)
        return result

    async def review(self, task: str, round_text: str, answer: str, workers: Sequence[WorkerSpec],
                     max_steps: int, allow_recursion: bool = False) -> PlanResult | None:
        messages = review_messages(task, round_text, answer, workers, max_steps, self.fmt, allow_recursion)
        result = await self._decide(messages, workers, max_steps, allow_recursion, allow_empty=True)
        if isinstance(result, PlanResult):
            result.info.source = "review"
            return result
        return None  # accepted, or no usable correction: keep the answer

    async def _decide(self, messages: list[dict[str, str]], workers: Sequence[WorkerSpec], max_steps: int,
                      allow_recursion: bool, allow_empty: bool) -> PlanResult | PlanInfo | None:
        """A valid workflow; None for an empty one (allowed in reviews); PlanInfo when every try failed."""
        ids = [w.id for w in workers]
        names = ids + ([CONDUCTOR_WORKER] if allow_recursion else [])
        schema = workflow_schema(names, max_steps, allow_empty=allow_empty) if self.fmt == "json" else None
        errors: list[str] = []
        usage = Usage()
        started = time.perf_counter()
        raw = None
        for attempt in range(1, self.tries + 1):
            try:
                gen = await self.generate(messages, schema, max_steps, attempt)
            except WorkflowError as exc:
                errors.append(str(exc))
                continue
            usage, raw = usage + gen.usage, gen.text
            try:
                data = parse_json_plan(gen.text) if self.fmt == "json" else parse_paper_plan(gen.text, names)
                if allow_empty and isinstance(data, dict) and data.get("steps") == []:
                    return None
                workflow = validate_workflow(data, ids, max_steps, allow_recursion)
            except WorkflowError as exc:
                log.info("plan attempt %d rejected: %s", attempt, exc)
                errors.append(str(exc))
                continue
            info = PlanInfo(source="conductor" if attempt == 1 else "retry", planner=self.name,
                            attempts=attempt, errors=errors, latency_s=time.perf_counter() - started,
                            usage=usage, raw=raw)
            return PlanResult(workflow, info)
        return PlanInfo(source="fallback", planner=self.name, attempts=self.tries, errors=errors,
                        latency_s=time.perf_counter() - started, usage=usage, raw=raw)
