"""Workflow validation and the paper/JSON plan parsers."""

from __future__ import annotations

import pytest

from conductor_mcp.errors import WorkflowError
from conductor_mcp.models import Workflow
from conductor_mcp.planners.parse import parse_json_plan, parse_paper_plan
from conductor_mcp.planners.prompts import planner_messages, render_paper
from conductor_mcp.planners.schema import workflow_schema
from conductor_mcp.runs.workflows import validate_workflow

IDS = ["a", "b"]


def test_valid_workflow_and_visibility() -> None:
    wf = validate_workflow({"steps": [
        {"worker": "a", "instruction": "x", "access": "none"},
        {"worker": "b", "instruction": "y", "access": "none"},
        {"worker": "a", "instruction": "z", "access": [1, 0, 1]},
        {"worker": "a", "instruction": "w", "access": "all"},
    ]}, IDS, 5)
    assert wf.visible(0) == [] and wf.visible(2) == [0, 1] and wf.visible(3) == [0, 1, 2]


@pytest.mark.parametrize(("steps", "message"), [
    ([{"worker": "zz", "instruction": "x"}], "steps[0].worker: unknown worker 'zz'; allowed: a, b"),
    ([{"worker": "a", "instruction": "x", "access": [0]}], "steps[0].access refers to step(s) [0]"),
    ([{"worker": "a", "instruction": "x"}, {"worker": "a", "instruction": "y", "access": [1]}],
     "steps[1].access refers to step(s) [1]"),
    ([{"worker": "a", "instruction": "   "}], "steps[0].instruction"),
    ([{"worker": "a", "instruction": "x", "extra": 1}], "steps[0].extra"),
    ([], "steps"),
    ([{"worker": "a", "instruction": "x"}] * 4, "4 steps, at most 3"),
])
def test_invalid_workflows(steps: list[dict[str, object]], message: str) -> None:
    with pytest.raises(WorkflowError) as err:
        validate_workflow({"steps": steps}, IDS, 3)
    assert message in str(err.value)


def test_json_text_and_conductor_worker() -> None:
    text = '{"steps": [{"worker": "conductor", "instruction": "sub", "access": "none"}]}'
    with pytest.raises(WorkflowError, match="unknown worker 'conductor'"):
        validate_workflow(text, IDS, 5)
    assert validate_workflow(text, IDS, 5, allow_recursion=True).steps[0].worker == "conductor"


def test_parse_json_plan_in_prose() -> None:
    assert parse_json_plan('Sure!\n```json\n{"steps": []}\n```') == {"steps": []}
    with pytest.raises(WorkflowError, match="no JSON object"):
        parse_json_plan("no plan here")
    with pytest.raises(WorkflowError, match="not valid JSON"):
        parse_json_plan('{"steps": [')


def test_parse_paper_plan() -> None:
    text = """Let me think. Maybe model_id = [9] at first... no.
model_id = [1, 0]
subtasks = ["Plan the algorithm", "Implement it"]
access_list = [[], ["all"]]
"""
    plan = parse_paper_plan(text, IDS)
    assert plan == {"steps": [{"worker": "b", "instruction": "Plan the algorithm", "access": "none"},
                              {"worker": "a", "instruction": "Implement it", "access": "all"}]}
    assert parse_paper_plan("model_id = [0, 0, 1]\nsubtasks = ['x', 'y', 'z']\naccess_list = [[], [0], [0, 1]]",
                            IDS)["steps"][2]["access"] == [0, 1]


@pytest.mark.parametrize(("text", "message"), [
    ("subtasks = ['x']\naccess_list = [[]]", "no `model_id"),
    ("model_id = [5]\nsubtasks = ['x']\naccess_list = [[]]", "model_id[0] = 5"),
    ("model_id = [0, 1]\nsubtasks = ['x']\naccess_list = [[]]", "differ in length"),
    ("model_id = [0]\nsubtasks = [x]\naccess_list = [[]]", "not a Python list literal"),
])
def test_parse_paper_errors(text: str, message: str) -> None:
    with pytest.raises(WorkflowError) as err:
        parse_paper_plan(text, IDS)
    assert message in str(err.value)


def test_render_paper_round_trips() -> None:
    wf = Workflow.model_validate({"steps": [{"worker": "b", "instruction": "x"},
                                            {"worker": "a", "instruction": "y", "access": "all"}]})
    assert validate_workflow(parse_paper_plan(render_paper(wf, IDS), IDS), IDS, 5) == wf


def test_schema_bounds_every_array_and_string() -> None:
    schema = workflow_schema(["odd.id@1", "b"], 3)
    branches = schema["properties"]["steps"]["anyOf"]
    assert [len(b["prefixItems"]) for b in branches] == [1, 2, 3]
    last = branches[-1]["prefixItems"][2]["properties"]
    assert last["worker"] == {"enum": ["odd.id@1", "b"]}
    assert last["instruction"]["maxLength"] == 200
    assert last["access"]["anyOf"][1] == {"type": "array", "items": {"enum": [0, 1]}, "maxItems": 2}
    assert branches[0]["prefixItems"][0]["properties"]["access"] == {"enum": ["none"]}


def test_prompt_prefix_is_task_independent() -> None:
    from conductor_mcp.models import WorkerSpec

    workers = [WorkerSpec(id="a", model="openai/x", description="strong"), WorkerSpec(id="b", model="openai/y")]
    one = planner_messages("task one", workers, 5, "json")
    two = planner_messages("task two", workers, 5, "json")
    assert one[0] == two[0] and one[1] != two[1]
    assert "- a: strong" in one[0]["content"]
    assert "model_id = " in planner_messages("t", workers, 5, "paper")[0]["content"]


def test_worker_prompt_tells_only_the_last_worker_it_answers() -> None:
    """The paper's worker prompt: the task, the visible steps' subtasks and responses, the subtask; the last
    worker is told its response is the final answer, the others that theirs goes to the next steps."""
    from conductor_mcp.runs.engine import worker_messages

    wf = validate_workflow({"steps": [
        {"worker": "a", "instruction": "Draft it", "access": "none"},
        {"worker": "b", "instruction": "Improve the draft", "access": [0]}]}, IDS, 5)
    first = worker_messages("Name three moons of Jupiter.", wf, 0, {})
    last = worker_messages("Name three moons of Jupiter.", wf, 1, {0: "Io, Europa"})
    assert "final answer" not in first[0]["content"] and "next steps" in first[0]["content"]
    assert "final answer to the overall task" in last[0]["content"]
    assert last[1]["content"] == ("Overall task:\nName three moons of Jupiter.\n\nStep 0 subtask:\nDraft it\n\n"
                                  "Step 0 response:\nIo, Europa\n\nYour subtask:\nImprove the draft")
    assert "Step 0" not in first[1]["content"]
