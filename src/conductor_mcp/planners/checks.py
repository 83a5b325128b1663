"""Checks and repairs of a conductor's plan that the grammar cannot express.

A small conductor copies its prompt's examples and writes steps nobody reads. So an instruction
that carries nothing of the task (no word at all, or naming the subject of an example that this task does
not share) rejects the plan, which is then retried or replaced; a final step that compares or checks
earlier work is made to see it; and a step whose output cannot reach the final step, directly or
through others, is pruned before anything is paid for it. Each repair is recorded in the trace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import WorkflowError
from ..models import Step, Workflow

_WORD = re.compile(r"[a-z]+")
# words that refer to the task or to other steps: an instruction using them speaks of the task
REFERENCES = frozenset({
    "task", "problem", "question", "request", "answer", "answers", "solution", "solutions", "draft", "drafts",
    "result", "results", "previous", "above", "earlier", "step", "steps", "output", "outputs", "response",
    "responses", "final", "it"})
# a final step that does one of these needs to see the steps it works on
_VERIFY = re.compile(r"\b(compare|check|verify|review|combine|merge the|both|all (the )?(drafts|answers|solutions)|"
                     r"previous|above|fix|improve|refine|critique|synthesi[sz]e|aggregate)\b", re.IGNORECASE)


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 3}


def check_instructions(workflow: Workflow, task: str, subjects: Iterable[str]) -> None:
    """Raise WorkflowError for an instruction that carries nothing of the task: no word, naming an
    example's subject (`subjects`) that the task does not, or sharing no word with it nor referring to it."""
    task_words = content_words(task)
    foreign = set(subjects) - set(_WORD.findall(task.lower()))
    for i, step in enumerate(workflow.steps):
        text = step.instruction
        if not any(len(w) > 1 for w in _WORD.findall(text.lower())):
            raise WorkflowError(f"steps[{i}].instruction: {text!r} says nothing of the task")
        words = content_words(text)
        copied = sorted(set(_WORD.findall(text.lower())) & foreign)
        if copied:
            raise WorkflowError(f"steps[{i}].instruction: {text!r} copies an example ({', '.join(copied)}), "
                                "not this task")
        if not words & task_words and not set(_WORD.findall(text.lower())) & REFERENCES:
            raise WorkflowError(f"steps[{i}].instruction: {text!r} shares nothing with the task")


def reachable(workflow: Workflow) -> set[int]:
    """Steps whose output reaches the final step, directly or through others (the final one included)."""
    last = len(workflow.steps) - 1
    seen, todo = {last}, [last]
    while todo:
        for j in workflow.visible(todo.pop()):
            if j not in seen:
                seen.add(j)
                todo.append(j)
    return seen


def repair(workflow: Workflow) -> tuple[Workflow, list[str]]:
    """Let a verifying final step see what it verifies; prune steps that cannot reach the answer."""
    changes: list[str] = []
    steps = list(workflow.steps)
    last = len(steps) - 1
    if last > 0 and steps[last].access == "none" and _VERIFY.search(steps[last].instruction):
        steps[last] = steps[last].model_copy(update={"access": "all"})
        changes.append(f"step {last} compares or checks earlier work: its access set to all")
        workflow = Workflow(steps=steps)
    keep = sorted(reachable(workflow))
    if len(keep) == len(steps):
        return workflow, changes
    dropped = [i for i in range(len(steps)) if i not in keep]
    new_index = {old: new for new, old in enumerate(keep)}
    pruned = []
    for old in keep:
        step = steps[old]
        access = step.access
        if isinstance(access, list):
            access = [new_index[j] for j in access if j in new_index] or "none"
        # "all" stays "all": a kept step that sees all earlier steps makes all of them reachable
        pruned.append(Step(worker=step.worker, instruction=step.instruction, access=access))
    changes.append(f"pruned step(s) {dropped}: their output could not reach the final step")
    return Workflow(steps=pruned), changes
