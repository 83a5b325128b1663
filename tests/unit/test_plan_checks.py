"""Plan checks and repairs, and the similarity the outcomes are weighted by."""

from __future__ import annotations

import pytest

from conductor_mcp.errors import WorkflowError
from conductor_mcp.models import WorkerSpec, Workflow
from conductor_mcp.planners.checks import check_instructions, repair
from conductor_mcp.planners.grammar import workflow_grammar
from conductor_mcp.planners.prompts import EXAMPLE_SUBJECTS, example_workflows
from conductor_mcp.runs.outcomes import similarities, weights

TASK = "Tom has 12 apples and buys 30 more. How many apples does he have?"


def wf(*steps: tuple[str, str, object]) -> Workflow:
    return Workflow.model_validate({"steps": [{"worker": w, "instruction": i, "access": a} for w, i, a in steps]})


@pytest.mark.parametrize("instruction", ["ssts", "1.5h", "Solve the problem step by step and state the average speed",
                                         "Answer with the capital city of Australia."])
def test_instructions_that_carry_nothing_of_the_task_are_rejected(instruction: str) -> None:
    with pytest.raises(WorkflowError, match=r"steps\[0\].instruction"):
        check_instructions(wf(("a", instruction, "none")), TASK, EXAMPLE_SUBJECTS)


@pytest.mark.parametrize("instruction", ["Count the apples Tom has now.", "Solve the task step by step.",
                                         "Check the answer above."])
def test_instructions_about_the_task_pass(instruction: str) -> None:
    check_instructions(wf(("a", instruction, "none")), TASK, EXAMPLE_SUBJECTS)


def test_the_examples_themselves_pass_the_checks_for_any_task() -> None:
    # a copied example instruction is harmless: it speaks of "the task", never of the example's subject
    team = [WorkerSpec(id=i, model="openai/x") for i in "abc"]
    for workers in (team, [*team, WorkerSpec(id="py", kind="python")]):
        for _, example in example_workflows(workers):
            check_instructions(example, TASK, EXAMPLE_SUBJECTS)


def test_unreachable_steps_are_pruned_and_indices_remapped() -> None:
    fixed, changes = repair(wf(("a", "Draft one", "none"), ("b", "Draft two", "none"),
                               ("c", "Use the second draft", [1])))
    assert [(s.worker, s.access) for s in fixed.steps] == [("b", "none"), ("c", [0])]
    assert changes == ["pruned step(s) [0]: their output could not reach the final step"]


def test_a_final_compare_step_is_made_to_see_what_it_compares() -> None:
    fixed, changes = repair(wf(("a", "Solve the task", "none"), ("b", "Solve it again", "none"),
                               ("c", "Compare both solutions and give the answer", "none")))
    assert len(fixed.steps) == 3 and fixed.steps[2].access == "all" and "access set to all" in changes[0]
    same, none = repair(wf(("a", "Solve the task", "none"), ("b", "Check it", [0])))
    assert none == [] and same.steps[1].access == [0]


def test_grammar_final_worker_rule() -> None:
    g = workflow_grammar(["a", "b"], 3, final=["b"])
    assert 'fworker ::= "\\"b\\""' in g and "s2 ::=" in g and "| " in g.split("s0 ::=")[1].splitlines()[0]
    assert "( \",\" ws s1 )?" in workflow_grammar(["a", "b"], 3)  # no prior: as before


def test_similarity_prefers_tasks_like_this_one() -> None:
    sims = similarities(TASK, ["Ann has 3 apples and buys 4 more apples.", "Write a Python function to sort."])
    assert sims[0] > sims[1] >= 0
    w = weights(sims)
    assert w[0] == pytest.approx(10) and 1 <= w[1] < w[0]
