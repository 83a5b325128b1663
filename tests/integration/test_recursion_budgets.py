"""Recursion, correction rounds, budgets and strategies, on litellm over HTTP and a real SQLite store.

The conductor here is a remote planner on the scripted server, so its plans are scripted and the tests
deterministic; the same engine paths serve the bundled GGUF conductor.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from conductor_mcp.errors import WorkflowError
from conductor_mcp.models import Budget, Manifest, RunStatus, StepStatus, WorkerSpec
from conductor_mcp.planners.remote import RemotePlanner
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.request import RequestError
from conductor_mcp.runs.resilience import RetryPolicy
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.surfaces.render import mermaid, trace_tree
from conductor_mcp.workers.registry import build_registry

from ..conftest import resume, solve
from ..servers.openai_server import ScriptedServer

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(attempts_per_worker=2, base_delay_s=0.01, max_delay_s=0.05)


def make_engine(server: ScriptedServer, store: Store, price: dict[str, float] | None = None) -> Engine:
    workers = [WorkerSpec.model_validate({"id": i, "model": f"openai/scripted-{i}", "api_base": server.base_url,
                                          "timeout_s": 5, "params": {"max_tokens": 300}, "price": price})
               for i in ("a", "b")]
    planner = RemotePlanner("openai/conductor-model", api_base=server.base_url)
    return Engine(build_registry(Manifest(workers=workers), "test"), store, planner=planner, policy=FAST)


def steps(*items: tuple[str, str, Any]) -> str:
    return json.dumps({"steps": [{"worker": w, "instruction": i, "access": a} for w, i, a in items]})


async def test_conductor_step_runs_a_child_workflow(server: ScriptedServer, store: Store) -> None:
    server.script(model="conductor-model", contains="Your subtask:\nHard part", reply=steps(
        ("a", "Child draft", "none"), ("b", "Child final", "all")))
    server.script(model="scripted-b", contains="Your subtask:\nChild final", reply="CHILD ANSWER")
    eng = make_engine(server, store)
    wf = {"steps": [{"worker": "a", "instruction": "Easy part"},
                    {"worker": "conductor", "instruction": "Hard part", "access": "all"},
                    {"worker": "b", "instruction": "Final answer", "access": "all"}]}
    run = await eng.plan("recursive task", workflow=wf)
    run = await RunManager(engine=eng).drive(run.id)
    assert run.status == RunStatus.COMPLETED
    assert run.steps[1].output == "CHILD ANSWER" and run.steps[1].attempts[0].worker == "conductor"
    (child_id,) = store.children(run.id)
    child = store.get_run(child_id)
    assert child.parent_run_id == run.id and child.parent_step == 1 and child.status == RunStatus.COMPLETED
    assert "Easy part" in child.task  # the child sees what step 1 saw
    assert store.options(child_id)["depth"] == 1 and store.options(child_id)["kind"] == "recursion"
    tree = trace_tree(store, run.id)
    assert tree["children"][0]["id"] == child_id
    assert tree["total_usage"]["calls"] == 2 + 1 + 2  # two root workers, the child's plan, two child workers
    diagram = mermaid(run, [child])
    assert 'subgraph c0["child of step 1: completed"]' in diagram and "s1 -.-> c0" in diagram
    # resuming the completed run re-buys nothing
    before = server.stats()["ok"]
    await resume(eng, run.id)
    assert server.stats()["ok"] == before


async def test_depth_is_bounded(server: ScriptedServer, store: Store) -> None:
    # the child plan asks for the conductor again, which max_depth=1 forbids: rejected twice, then fallback
    server.script(model="conductor-model", reply=steps(("conductor", "Recurse again", "none")))
    eng = make_engine(server, store)
    wf = {"steps": [{"worker": "conductor", "instruction": "Go deep"}]}
    run = await eng.plan("deep", workflow=wf, budget=Budget(max_depth=1))
    run = await RunManager(engine=eng).drive(run.id)
    assert run.status == RunStatus.COMPLETED
    child = store.get_run(store.children(run.id)[0])
    assert child.plan.source == "fallback" and "unknown worker 'conductor'" in child.plan.errors[0]
    with pytest.raises(WorkflowError, match="unknown worker 'conductor'"):
        await eng.plan("flat", workflow=wf, budget=Budget(max_depth=0))


async def test_rounds_review_and_correct(server: ScriptedServer, store: Store) -> None:
    reviews = iter([steps(("b", "Fix the answer", "all")), '{"steps": []}'])
    server.script(model="conductor-model", contains="Review the answer", reply=lambda _m: next(reviews))
    server.script(model="scripted-b", contains="Your subtask:\nFix the answer", reply="FIXED")
    eng = make_engine(server, store)
    run = await eng.plan("round task", workflow={"steps": [{"worker": "a", "instruction": "First try"}]},
                         budget=Budget(max_rounds=3))
    run = await RunManager(engine=eng).drive(run.id)
    assert run.status == RunStatus.COMPLETED and run.answer == "FIXED"
    (round_id,) = store.children(run.id, rounds=True)
    rnd = store.get_run(round_id)
    assert rnd.plan.source == "review" and store.options(round_id)["round"] == 2
    assert [(r["round"], r["accepted"]) for r in store.options(run.id)["reviews"]] == [(1, False), (2, True)]
    assert server.ok_calls_for("Previous round:\nStep 0 (a) subtask:\nFirst try") == 1  # access "all" sees it
    assert 'subgraph c0["round 2: completed"]' in mermaid(run, [rnd])


async def test_token_budget_stops_then_resume_with_more(server: ScriptedServer, store: Store) -> None:
    eng = make_engine(server, store)
    wf = {"steps": [{"worker": "a", "instruction": "Budget step one"},
                    {"worker": "b", "instruction": "Budget step two", "access": "all"}]}
    # step one's worst case (its prompt's UTF-8 bytes plus max_tokens 300) fits; step two's, seeing step one, not
    run = await eng.plan("budgeted", workflow=wf, budget=Budget(max_total_tokens=1000))
    run = await RunManager(engine=eng).drive(run.id)
    assert run.status == RunStatus.BUDGET_EXCEEDED and "max_total_tokens 1000" in (run.error or "")
    assert [s.status for s in run.steps] == [StepStatus.COMPLETED, StepStatus.PENDING]
    assert run.answer == run.steps[0].output  # the best answer so far
    run = await resume(eng, run.id, budget=Budget(max_total_tokens=5000))
    assert run.status == RunStatus.COMPLETED
    assert server.ok_calls_for("Your subtask:\nBudget step one") == 1


async def test_usd_budget(server: ScriptedServer, store: Store) -> None:
    unpriced = make_engine(server, store)
    with pytest.raises(RequestError, match=r"\['a'\] have no known price, so they cannot be used under max_usd"):
        await unpriced.plan("usd", workflow={"steps": [{"worker": "a", "instruction": "x"}]},
                            budget=Budget(max_usd=1.0))
    assert store.find_runs(10) == []  # refused before it was stored
    priced = make_engine(server, store, price={"input_per_mtok": 1000.0, "output_per_mtok": 1000.0})
    run = await priced.plan("usd", workflow={"steps": [{"worker": "a", "instruction": "x"}]},
                            budget=Budget(max_usd=0.05))
    run = await RunManager(engine=priced).drive(run.id)
    assert run.status == RunStatus.BUDGET_EXCEEDED and "max_usd 0.05" in (run.error or "")
    assert server.stats()["requests"] == 0  # stopped before anything was spent


@pytest.mark.parametrize(("strategy", "calls", "last_access"), [("moa", 3, "all"), ("single:b", 1, "none")])
async def test_strategies(server: ScriptedServer, store: Store, strategy: str, calls: int, last_access: str) -> None:
    eng = make_engine(server, store)
    run = await solve(eng, "compare strategies", strategy=strategy)
    assert run.status == RunStatus.COMPLETED and run.plan.source == "strategy"
    assert run.usage.calls == calls and run.workflow.steps[-1].access == last_access
    assert store.options(run.id)["strategy"] == strategy
    with pytest.raises(WorkflowError, match="strategy: 'bogus'"):
        await eng.plan("x", strategy="bogus")
