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
from ..workers.llm import known_cost
from .workflows import validate_workflow

if TYPE_CHECKING:
    from ..workers.registry import Registry

MAX_TASK_CHARS = 100_000  # a task (with a chat's context) longer than this is refused on every surface
MAX_JSON_DEPTH = 32  # arrays and objects nested deeper than this are refused on every surface (a workflow needs 5)

Param = Literal["task", "workers", "max_steps", "strategy", "workflow"]


class InputError(WorkflowError):
    """Input that no request may hold: text that is not valid Unicode, JSON nested too deep. `param` is where, as
    a path into the request (`messages[0].content`)."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


def check_text(param: str, text: str) -> str:
    """Text that can be stored and sent on: refused (never repaired) when it holds a lone surrogate, which JSON's
    `\\ud800` escapes and undecodable command-line bytes produce."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(param, f"not valid Unicode text: a lone surrogate U+{ord(text[exc.start]):04X} at "
                                f"character {exc.start}") from None
    return text


def check_json(value: object, where: str = "") -> None:
    """A parsed JSON value: nested at most MAX_JSON_DEPTH deep, its strings (keys too) valid Unicode. Iterative,
    so a hostile depth costs no recursion."""
    stack: list[tuple[object, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            check_text(path or "body", item)
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise InputError(path or "body", f"nested deeper than {MAX_JSON_DEPTH} levels")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str):
                    # a key that is not valid Unicode is named escaped: the refusal must itself be valid Unicode
                    named = key.encode("utf-8", "backslashreplace").decode("utf-8")
                    check_text(f"{path}.{named}" if path else named, key)
                    stack.append((child, f"{path}.{named}" if path else named, depth + 1))
                else:
                    stack.append((child, f"{path}[{key}]", depth + 1))


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
    try:
        check_text("task", task)
    except InputError as exc:
        raise RequestError("task", str(exc)) from None
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
    if budget.max_usd is not None:  # a worker with no price could not be used: refused now, not mid-run
        used = ([s.worker for s in checked.steps] if checked is not None
                else [fixed.worker] if isinstance(fixed, SinglePlanner) else ids)
        unpriced = [i for i in dict.fromkeys(used)
                    if registry.spec(i).kind == "model" and known_cost(registry.spec(i), 1, 1) is None]
        if unpriced:
            raise RequestError("workers", f"{unpriced} have no known price, so they cannot be used under max_usd; "
                                          "add `price:` to their manifest entries, leave them out, or drop max_usd")
    return PlanRequest(task, ids, steps, strategy, budget, prefer or registry.conductor.prefer, checked)
