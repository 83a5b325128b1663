"""Planning with the real bundled GGUF through llama-cpp-python, and a remote conductor over HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conductor_mcp.models import Manifest, Prior, RunStatus, WorkerRecord, WorkerSpec
from conductor_mcp.planners.gguf import GGUFPlanner
from conductor_mcp.planners.remote import RemotePlanner
from conductor_mcp.runs.engine import Engine
from conductor_mcp.store import Store
from conductor_mcp.workers.registry import build_registry, bundled_gguf_path

from ..conftest import solve
from ..servers.openai_server import ScriptedServer

pytestmark = pytest.mark.anyio
ODD = ["odd.id@1", "Z_9-x", "w/3+q"]


@pytest.fixture(scope="module")
def gguf_planner() -> GGUFPlanner:
    return GGUFPlanner(bundled_gguf_path())


def odd_workers() -> list[WorkerSpec]:
    return [WorkerSpec(id=i, model=f"openai/{i}", description=d) for i, d in
            zip(ODD, ["strongest: code and maths", "fast drafts", "careful reviewer"], strict=True)]


async def test_grammar_is_applied_with_unusual_ids(gguf_planner: GGUFPlanner) -> None:
    # ids a 135M model would never write by chance: every step naming one proves the schema was applied
    for task in ("Write a Python function that reverses a linked list, with tests.",
                 "What is the boiling point of water at sea level in Fahrenheit?"):
        result = await gguf_planner.plan(task, odd_workers(), 5)
        assert result.info.source == "conductor", result.info.errors
        assert result.info.planner == "gguf:SmolLM2-135M-Instruct.Q4_1.gguf"
        assert 1 <= len(result.workflow.steps) <= 5
        for i, step in enumerate(result.workflow.steps):
            assert step.worker in ODD
            if isinstance(step.access, list):
                assert all(j < i for j in step.access)
            assert 3 <= len(step.instruction) <= 200
        assert result.info.usage.completion_tokens > 0 and result.info.usage.cost_usd == 0.0


async def test_max_steps_bound_respected(gguf_planner: GGUFPlanner) -> None:
    result = await gguf_planner.plan("Plan a three-course dinner, write the shopping list, and a schedule.",
                                     odd_workers(), 2)
    assert result.info.source == "conductor" and len(result.workflow.steps) <= 2


async def test_paper_format_remote_conductor(server: ScriptedServer) -> None:
    server.script(model="conductor-model", reply=(
        "The task needs a draft and a check.\nmodel_id = [1, 0]\n"
        "subtasks = [\"Draft an answer\", \"Check the draft and give the final answer\"]\n"
        "access_list = [[], [\"all\"]]"))
    planner = RemotePlanner("openai/conductor-model", fmt="paper", api_base=server.base_url)
    workers = [WorkerSpec(id="a", model="openai/a"), WorkerSpec(id="b", model="openai/b")]
    result = await planner.plan("anything", workers, 5)
    assert result.info.source == "conductor" and result.info.planner == "litellm:openai/conductor-model"
    assert [(s.worker, s.access) for s in result.workflow.steps] == [("b", "none"), ("a", "all")]
    assert result.info.usage.prompt_tokens > 0 and result.info.usage.calls == 1


async def test_bad_plans_retry_then_fall_back(server: ScriptedServer) -> None:
    replies = iter(["no lists here", "model_id = [7]\nsubtasks = ['x']\naccess_list = [[]]"])
    server.script(model="conductor-model", reply=lambda _m: next(replies))
    planner = RemotePlanner("openai/conductor-model", fmt="paper", api_base=server.base_url)
    workers = [WorkerSpec(id="a", model="openai/a"), WorkerSpec(id="b", model="openai/b")]
    result = await planner.plan("the task itself", workers, 5)
    assert result.info.source == "fallback" and result.info.attempts == 2
    assert "no `model_id" in result.info.errors[0] and "model_id[0] = 7" in result.info.errors[1]
    assert [(s.worker, s.instruction) for s in result.workflow.steps] == [("a", "the task itself")]


async def test_json_retry_recorded(server: ScriptedServer) -> None:
    replies = iter(['{"steps": [{"worker": "zzz", "instruction": "x", "access": "none"}]}',
                    '{"steps": [{"worker": "b", "instruction": "do it", "access": "none"}]}'])
    server.script(model="conductor-model", reply=lambda _m: next(replies))
    planner = RemotePlanner("openai/conductor-model", api_base=server.base_url)
    workers = [WorkerSpec(id="a", model="openai/a"), WorkerSpec(id="b", model="openai/b")]
    result = await planner.plan("t", workers, 5)
    assert result.info.source == "retry" and "unknown worker 'zzz'" in result.info.errors[0]


async def test_solve_end_to_end(gguf_planner: GGUFPlanner, server: ScriptedServer, store: Store) -> None:
    workers = [WorkerSpec(id=i, model=f"openai/scripted-{i}", api_base=server.base_url, description=d)
               for i, d in (("big", "strongest, use for final answers"), ("small", "fast drafts"))]
    registry = build_registry(Manifest(workers=workers), "test")
    engine = Engine(registry, store, planner=gguf_planner)
    run = await solve(engine, "Name three prime numbers and explain why they are prime.")
    assert run.status == RunStatus.COMPLETED and run.answer
    assert run.answer == run.steps[-1].output
    assert server.stats()["ok"] == len(run.steps) == run.usage.calls - 1  # + the conductor's own call


async def test_review_with_the_bundled_conductor(gguf_planner: GGUFPlanner) -> None:
    # the review grammar also admits an empty workflow (accept); whatever it decides is valid
    result = await gguf_planner.review("What is 2 + 2?", "Step 0 (odd.id@1) subtask:\nAdd.\n\nStep 0 response:\n4",
                                       "4", odd_workers(), 3)
    assert result.info.source == "review" and result.info.usage.completion_tokens > 0
    if result.workflow is not None:
        assert all(s.worker in ODD for s in result.workflow.steps) and len(result.workflow.steps) <= 3


async def test_recursion_offered_in_the_grammar(gguf_planner: GGUFPlanner) -> None:
    result = await gguf_planner.plan("Solve a hard multi-part maths olympiad problem.", odd_workers(), 3,
                                     allow_recursion=True)
    assert result.info.source == "conductor"
    assert {s.worker for s in result.workflow.steps} <= {*ODD, "conductor"}


async def test_neutral_worker_names(server: ScriptedServer, gguf_planner: GGUFPlanner) -> None:
    """With `worker_names: neutral` the conductor sees worker-0, worker-1, ... (the paper's setting) and its
    plan comes back in the manifest's ids, with the outcomes' final worker still enforced."""
    seen: list[str] = []

    def reply(messages: list[dict[str, Any]]) -> str:
        seen.append(str(messages[0]["content"]))
        return json.dumps({"steps": [{"worker": "worker-1", "instruction": "Draft an answer to the task"},
                                     {"worker": "worker-0", "instruction": "Check the draft; answer the task",
                                      "access": "all"}]})

    server.script(model="neutral-conductor", reply=reply)
    planner = RemotePlanner("openai/neutral-conductor", api_base=server.base_url)
    planner.worker_names = "neutral"
    workers = [WorkerSpec(id="gpt-big", model="openai/a", description="strong"),
               WorkerSpec(id="tiny-fast", model="openai/b", description="fast")]
    result = await planner.plan("Explain why the sky is blue.", workers, 5)
    assert [s.worker for s in result.workflow.steps] == ["tiny-fast", "gpt-big"]
    assert "worker-0: strong" in seen[0] and "gpt-big" not in seen[0] and "tiny-fast" not in seen[0]
    record = WorkerRecord(reward=1.0, outcomes=5, mean_tokens=100, score=1.0)
    prior = Prior(prefer="balanced", outcomes=5, workers={"tiny-fast": record}, final=["tiny-fast"])
    result = await planner.plan("Explain why the sky is blue.", workers, 5, prior=prior)
    assert result.workflow.steps[-1].worker == "tiny-fast"  # the outcomes' choice, mapped back
    # the bundled conductor under neutral names: the grammar holds it to the shown ids, the plan uses ours
    gguf_planner.worker_names = "neutral"
    try:
        planned = await gguf_planner.plan("Write a haiku about autumn.", odd_workers(), 3)
    finally:
        gguf_planner.worker_names = "ids"
    assert planned.info.source == "conductor" and planned.info.raw and "worker-" in planned.info.raw
    assert all(s.worker in ODD for s in planned.workflow.steps)
