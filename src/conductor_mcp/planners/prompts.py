"""The conductor's prompt: workers, rules and worked examples first, the task last.

Everything before the task is the same for every plan with the same registry, so a local conductor
reuses its evaluated prefix (llama.cpp keeps the longest common token prefix) and worker descriptions
are not re-read on every plan. Small conductors copy the shape of the prompt (see the project notes),
so the examples vary the number of steps and which worker answers last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..models import CONDUCTOR_WORKER, Step, WorkerSpec, Workflow

SYSTEM = """You are the conductor. You do not solve tasks yourself: you write a short workflow that a
team of worker models carries out. Each step gives one worker one instruction (a subtask) and an access
list: which earlier steps' instructions and answers that worker sees ("all", "none", or a list of
earlier step numbers, counting from 0). The last step's answer is the final answer, so the last step
must produce the complete answer to the task, on the worker best suited to it.
Rules: at most {max_steps} steps; use one step for a simple task; put independent steps side by side
with access "none" so they run in parallel; give a strong worker the final step; keep each instruction
short and specific."""

PAPER_FORMAT = """Think briefly, then end your reply with exactly three Python lists:
model_id = [...]       # one worker number per step
subtasks = ["...", ...] # one instruction per step
access_list = [[], ["all"], ...]  # per step: [] for none, ["all"], or earlier step numbers"""


def describe_workers(workers: Sequence[WorkerSpec], numbered: bool = False) -> str:
    lines = []
    for i, w in enumerate(workers):
        label = f"{i}: {w.id}" if numbered else w.id
        lines.append(f"- {label}: {w.description or w.model or w.gguf}")
    return "\n".join(lines)


PYTHON_RULE = """A python worker computes exactly: have a model step write a Python program that prints the
result, then give a python-worker step access to that step; its answer is what the program printed."""


def example_workflows(workers: Sequence[WorkerSpec]) -> list[tuple[str, Workflow]]:
    """Worked examples in the live registry's ids (the first model worker is taken as the strongest).

    Small conductors copy these, so every instruction speaks of "the task" and never of an example's
    subject: a copied instruction is still a sound instruction for any task.
    """
    ids = [w.id for w in workers if w.kind == "model"]
    python = next((w.id for w in workers if w.kind == "python"), None)
    strong = ids[0]
    other = ids[1] if len(ids) > 1 else ids[0]
    third = ids[2] if len(ids) > 2 else other
    arithmetic = Workflow(steps=[
        Step(worker=third, instruction="Solve the task step by step and state the result.", access="none"),
        Step(worker=other, instruction="Solve the task independently, step by step, and state the "
             "result.", access="none"),
        Step(worker=strong, instruction="Compare the two solutions above, fix any error, and give the "
             "final answer to the task.", access=[0, 1]),
    ])
    if python is not None:  # exact arithmetic: a program, run
        arithmetic = Workflow(steps=[
            Step(worker=strong, instruction="Write a Python program that computes the answer to the task and "
                 "prints it, in one ```python block.", access="none"),
            Step(worker=python, instruction="Run the program of step 0.", access=[0]),
        ])
    return [
        ("What is the capital of Australia?",
         Workflow(steps=[Step(worker=strong, instruction="Answer the task directly and concisely.")])),
        ("Write a Python function that merges two sorted lists, with tests.",
         Workflow(steps=[
             Step(worker=other, instruction="Outline an approach to the task and the edge cases to test.",
                  access="none"),
             Step(worker=strong, instruction="Write the complete solution to the task, following the "
                  "outline from step 0.", access=[0]),
         ])),
        ("A train covers 120 km in 1.5 hours, then 80 km in 0.5 hours. What is its average speed?", arithmetic),
    ]


# The examples' subjects: an instruction naming one that the task does not was copied (checks.py).
EXAMPLE_SUBJECTS = frozenset({
    "capital", "australia", "canberra", "merge", "merges", "merging", "sorted", "lists", "train", "trains",
    "speed", "average", "hours", "covers"})


def render_paper(workflow: Workflow, ids: Sequence[str]) -> str:
    model_id = [ids.index(s.worker) for s in workflow.steps]
    subtasks = [s.instruction for s in workflow.steps]
    access = [["all"] if s.access == "all" else [] if s.access == "none" else list(s.access)
              for s in workflow.steps]
    return f"model_id = {model_id}\nsubtasks = {json.dumps(subtasks)}\naccess_list = {json.dumps(access)}"


def task_view(head: str, tail: str, omitted_chars: int) -> str:
    """A long task as the conductor sees it: its start and its end, with a marker where text was left out
    (the workers get the whole task)."""
    return (f"{head}\n[... {omitted_chars} characters of the task left out here: too long for the "
            f"conductor; the workers see the whole task ...]\n{tail}")


REVIEW = """Task: {task}
A workflow was run for this task:
{steps}
Its answer:
{answer}

Review the answer. If it is correct and complete, reply with an empty workflow ({empty}). Otherwise write a
corrective workflow; its steps with access "all" also see this round's steps and answer.
Workflow:"""


def review_messages(task: str, round_text: str, answer: str, workers: Sequence[WorkerSpec], max_steps: int,
                    fmt: str, allow_recursion: bool = False) -> list[dict[str, str]]:
    """The planning prompt's prefix (so it stays cached), then the round to review."""
    messages = planner_messages(task, workers, max_steps, fmt, allow_recursion)
    empty = "model_id = []" if fmt == "paper" else '{"steps": []}'
    messages[-1] = {"role": "user", "content": REVIEW.format(task=task, steps=round_text, answer=answer[:4000],
                                                             empty=empty)}
    return messages


def planner_messages(task: str, workers: Sequence[WorkerSpec], max_steps: int, fmt: str,
                     allow_recursion: bool = False) -> list[dict[str, str]]:
    ids = [w.id for w in workers]
    numbered = fmt == "paper"
    parts = [SYSTEM.format(max_steps=max_steps)]
    if any(w.kind == "python" for w in workers):
        parts.append(PYTHON_RULE)
    parts += ["", "Workers (strongest first):", describe_workers(workers, numbered)]
    if allow_recursion:
        label = f"{len(workers)}: {CONDUCTOR_WORKER}" if numbered else CONDUCTOR_WORKER
        parts.append(f"- {label}: you yourself; give a hard subtask to plan and solve as its own workflow")
    parts += ["", "Examples:"]
    for question, wf in example_workflows(workers):
        shown = render_paper(wf, ids) if numbered else wf.model_dump_json()
        parts += [f"Task: {question}", f"Workflow: {shown}", ""]
    if numbered:
        parts.append(PAPER_FORMAT)
    else:
        parts.append("Reply with the workflow as JSON only.")
    return [{"role": "system", "content": "\n".join(parts)},
            {"role": "user", "content": f"Task: {task}\nWorkflow:"}]
