"""Budgets hold against a provider that writes as much as it is allowed: the reserved completion cap is
sent on every call, and the conductor's own calls are reserved too. Real HTTP, real litellm, real SQLite;
the scripted server honours max_tokens and records what each request asked for."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conductor_mcp.models import Budget, Manifest, Price, RunStatus, WorkerSpec
from conductor_mcp.planners.remote import RemotePlanner
from conductor_mcp.runs.budget import DEFAULT_MAX_TOKENS
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.resilience import RetryPolicy
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.workers.registry import build_registry

from ..servers.openai_server import ScriptedServer

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(attempts_per_worker=2, base_delay_s=0.01, max_delay_s=0.05)
PRICE = {"input_per_mtok": 10.0, "output_per_mtok": 10.0}  # $0.06 buys 6,000 tokens
TWO_STEPS = {"steps": [{"worker": "a", "instruction": "Write at length"},
                       {"worker": "b", "instruction": "Write more", "access": "all"}]}


def engine(server: ScriptedServer, store: Store, planner: RemotePlanner | None = None,
           **params: Any) -> Engine:
    # as workers discovered from API keys are: no max_tokens of their own
    workers = [WorkerSpec.model_validate({"id": i, "model": f"openai/scripted-{i}", "api_base": server.base_url,
                                          "timeout_s": 10, "price": PRICE, "params": params})
               for i in ("a", "b")]
    return Engine(build_registry(Manifest(workers=workers), "test"), store, planner=planner, policy=FAST)


@pytest.mark.parametrize("budget", [Budget(max_total_tokens=6000), Budget(max_usd=0.06)], ids=["tokens", "usd"])
async def test_uncapped_worker_is_sent_the_reserved_cap(server: ScriptedServer, store: Store, budget: Budget) -> None:
    server.script(reply="word " * 10_000)  # a provider that writes 10,000 tokens unless told to stop
    eng = engine(server, store)
    run = await eng.plan("long answers", workflow=TWO_STEPS, budget=budget)
    run = await RunManager(engine=eng).drive(run.id)
    # the first call fitted and was capped at what the budget reserved; the second could not fit
    assert run.status == RunStatus.BUDGET_EXCEEDED
    assert [c.max_tokens for c in server.calls()] == [DEFAULT_MAX_TOKENS["litellm"]]
    spent = store.tree_usage(run.id)
    assert spent.completion_tokens == DEFAULT_MAX_TOKENS["litellm"]
    assert spent.total_tokens <= 6000 and (spent.cost_usd or 0.0) <= 0.06


async def test_worker_cap_from_params_is_sent(server: ScriptedServer, store: Store) -> None:
    eng = engine(server, store, max_tokens=7)
    run = await eng.plan("short", workflow=TWO_STEPS)
    run = await RunManager(engine=eng).drive(run.id)
    assert run.status == RunStatus.COMPLETED
    assert [c.max_tokens for c in server.calls()] == [7, 7]
    assert all(s.usage.completion_tokens <= 7 for s in run.steps)


def conductor(server: ScriptedServer) -> RemotePlanner:
    return RemotePlanner("openai/conductor-model", api_base=server.base_url)


async def test_conductor_plan_is_reserved_and_capped(server: ScriptedServer, store: Store) -> None:
    plan = json.dumps({"steps": [{"worker": "a", "instruction": "Draft the answer to the question"},
                                 {"worker": "b", "instruction": "Check the draft, then answer", "access": "all"}]})
    server.script(model="conductor-model", reply=plan)
    eng = engine(server, store, planner=conductor(server), max_tokens=50)
    # too small for the conductor's worst case (its prompt and a 4,096-token reply): it is not called
    run = await eng.plan("What is the tallest mountain?", budget=Budget(max_total_tokens=3000))
    assert server.stats()["requests"] == 0
    assert run.plan.source == "fallback" and "budget: max_total_tokens 3000" in run.plan.errors[0]
    # room enough: called with the cap it was reserved for, and its usage counts against the run's limit
    run = await eng.plan("What is the tallest mountain?", budget=Budget(max_total_tokens=20_000))
    assert run.plan.source == "conductor"
    assert [c.max_tokens for c in server.calls()] == [DEFAULT_MAX_TOKENS["litellm"]]
    run = await RunManager(engine=eng).drive(run.id)
    assert run.status == RunStatus.COMPLETED
    assert store.tree_usage(run.id).total_tokens == run.plan.usage.total_tokens + sum(
        s.usage.total_tokens for s in run.steps) <= 20_000


async def test_review_the_budget_cannot_afford_is_not_made(server: ScriptedServer, store: Store) -> None:
    server.script(model="conductor-model", reply='{"steps": []}')
    eng = engine(server, store, planner=conductor(server), max_tokens=50)
    wf = {"steps": [{"worker": "a", "instruction": "Answer it"}]}
    run = await eng.plan("reviewed under a budget", workflow=wf, budget=Budget(max_rounds=2, max_total_tokens=3000))
    run = await RunManager(engine=eng).drive(run.id)
    # the worker's step fitted; the review (a 4,096-token cap) did not, so the answer stands unreviewed
    assert run.status == RunStatus.COMPLETED and run.answer == run.steps[0].output
    assert server.stats()["by_model"] == {"scripted-a": 1}
    (review,) = store.options(run.id)["reviews"]
    assert review["accepted"] and "budget: max_total_tokens 3000" in review["info"]["errors"][0]
    assert store.tree_usage(run.id).total_tokens <= 3000


async def test_conductor_under_max_usd_needs_a_price(server: ScriptedServer, store: Store) -> None:
    server.script(model="conductor-model", reply=json.dumps({"steps": [{"worker": "a", "instruction": "Answer"}]}))
    eng = engine(server, store, planner=conductor(server))
    run = await eng.plan("priced planning", budget=Budget(max_usd=1.0))
    assert server.stats()["requests"] == 0  # its cost could not be bounded, so it was not called
    assert run.plan.source == "fallback" and "no known price" in run.plan.errors[0]
    priced = RemotePlanner("openai/conductor-model", api_base=server.base_url, price=Price.model_validate(PRICE))
    run = await engine(server, store, planner=priced).plan("priced planning", budget=Budget(max_usd=1.0))
    assert run.plan.source == "conductor" and run.plan.usage.cost_usd == pytest.approx(
        run.plan.usage.total_tokens * 10 / 1e6)
