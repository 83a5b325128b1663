"""What a request to plan or solve may ask for, decided in one place.

Every surface (MCP tools, `/v1`, the CLI) hands its arguments to `check_request` and only renders the
`RequestError` it may raise: `param` names the offending argument as the engine spells it, and each surface
maps that name to its own (`--use`, `conductor.workers`, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError, WorkflowError
from ..models import MAX_STEPS_LIMIT, Budget, Prefer, Workflow
from ..planners.strategies import SinglePlanner, strategy_planner
from .workflows import validate_workflow

if TYPE_CHECKING:
    from ..workers.registry import Registry

MAX_TASK_CHARS = 100_000  # a task (with a chat's context) longer than this is refused on every surface

Param = Literal["task", "workers", "max_steps", "strategy", "workflow"]


class RequestError(WorkflowError):
    """A request's argument is wrong. `param` names it; `too_long` marks a task over MAX_TASK_CHARS (OpenAI's
    API answers that one with its own code)."""

    def __init__(self, param: Param, message: str, *, too_long: bool = False) -> None:
        self.param: Param = param
        self.detail = message.removeprefix(f"{param}:").strip()  # the message without the engine's name
        self.too_long = too_long
        super().__init__(f"{param}: {self.detail}")


@dataclass(frozen=True)
class PlanRequest:
    """A plan's arguments once check_request has passed them; `workflow` is the caller's own, if any."""

    task: str
    workers: list[str]
    max_steps: int
    strategy: str
    budget: Budget
    prefer: Prefer
    workflow: Workflow | None = None


def check_task(task: str) -> str:
    """The task, stripped; empty or too long is a RequestError."""
    if not task or not task.strip():
        raise RequestError("task", "empty; give the task to solve")
    if len(task) > MAX_TASK_CHARS:
        raise RequestError("task", f"{len(task)} characters, at most {MAX_TASK_CHARS}", too_long=True)
    return task.strip()


def check_max_steps(max_steps: int | None, default: int) -> int:
    if max_steps is None:
        return default
    if not 1 <= max_steps <= MAX_STEPS_LIMIT:
        raise RequestError("max_steps", f"{max_steps}; allowed 1..{MAX_STEPS_LIMIT}")
    return max_steps


def check_request(registry: Registry, task: str, workers: Sequence[str] | None = None,
                  max_steps: int | None = None, strategy: str = "conductor", budget: Budget | None = None,
                  prefer: Prefer | None = None, workflow: Any = None) -> PlanRequest:
    """A request checked against the registry before anything is planned or spent: the first bad argument
    raises RequestError naming it."""
    task = check_task(task)
    try:
        ids = registry.select(workers)
    except ConfigError as exc:
        raise RequestError("workers", str(exc)) from None
    steps = check_max_steps(max_steps, registry.conductor.max_steps)
    budget = budget or Budget()
    try:
        fixed = strategy_planner(strategy, registry.recipes)
    except WorkflowError as exc:
        raise RequestError("strategy", str(exc)) from None
    checked = None
    if workflow is not None:  # the caller's own plan: the strategy plans nothing
        try:
            checked = validate_workflow(workflow, ids, steps, allow_recursion=budget.max_depth > 0)
        except WorkflowError as exc:
            raise RequestError("workflow", str(exc)) from None
    elif fixed is not None:
        if isinstance(fixed, SinglePlanner) and fixed.worker not in ids and fixed.worker in registry.available_ids():
            raise RequestError("workers", f"{ids} leaves out worker {fixed.worker!r}, which {strategy} runs")
        try:
            fixed.check([registry.spec(i) for i in ids], steps)
        except WorkflowError as exc:
            raise RequestError("strategy", str(exc)) from None
    return PlanRequest(task, ids, steps, strategy, budget, prefer or registry.conductor.prefer, checked)
