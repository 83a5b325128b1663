"""Check a workflow against the registry and the rules, with errors that name the step and field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from ..errors import WorkflowError
from ..models import CONDUCTOR_WORKER, Workflow


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def field_problems(exc: ValidationError, whole: str = "arguments") -> list[str]:
    """Each of pydantic's errors as `field.path[0]: problem`, without the input echoed or a docs link;
    `whole` names an error of the value as a whole."""
    return [f"{_loc(e['loc']) or whole}: {e['msg']}" for e in exc.errors()]


def validate_workflow(data: Any, allowed: Sequence[str], max_steps: int,
                      allow_recursion: bool = False) -> Workflow:
    """A Workflow from a dict, JSON text or Workflow, or a WorkflowError naming each problem."""
    try:
        if isinstance(data, Workflow):
            workflow = Workflow.model_validate(data.model_dump())
        elif isinstance(data, str | bytes):
            workflow = Workflow.model_validate_json(data)
        else:
            workflow = Workflow.model_validate(data)
    except ValidationError as exc:
        raise WorkflowError("invalid workflow: " + "; ".join(field_problems(exc, "workflow"))) from None
    problems = []
    if len(workflow.steps) > max_steps:
        problems.append(f"steps: {len(workflow.steps)} steps, at most {max_steps} allowed")
    names = list(allowed) + ([CONDUCTOR_WORKER] if allow_recursion else [])
    for i, step in enumerate(workflow.steps):
        if step.worker not in names:
            problems.append(f"steps[{i}].worker: unknown worker {step.worker!r}; allowed: {', '.join(names)}")
    if problems:
        raise WorkflowError("invalid workflow: " + "; ".join(problems))
    return workflow
