"""The engine end to end on workers reached through litellm over real HTTP, with a real SQLite store."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from conductor_mcp.errors import RunStateError, WorkflowError
from conductor_mcp.models import Manifest, RunStatus, StepStatus
from conductor_mcp.planners.base import PlanEvent
from conductor_mcp.runs.engine import Engine, StepEvent
from conductor_mcp.runs.resilience import RetryPolicy
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store, process_owner
from conductor_mcp.workers.openai_http import POOLS, Channel
from conductor_mcp.workers.registry import build_registry

from ..conftest import http_registry, resume
from ..servers.openai_server import ScriptedServer, count_tokens

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(attempts_per_worker=2, base_delay_s=0.01, max_delay_s=0.05)

DIAMOND = {"steps": [
    {"worker": "alpha", "instruction": "Draft A for diamond", "access": "none"},
    {"worker": "beta", "instruction": "Draft B for diamond", "access": "none"},
    {"worker": "gamma", "instruction": "Merge the drafts for diamond", "access": "all"},
]}


def engine(server: ScriptedServer, store: Store, **kw: Any) -> Engine:
    return Engine(http_registry(server.base_url, **kw), store, policy=FAST)


async def test_parallel_steps_prompt_usage_and_answer(server: ScriptedServer, store: Store) -> None:
    server.set_latency(model_latency={"scripted-alpha": 0.3, "scripted-beta": 0.3})
    seen: list[str] = []

    def merge(messages: list[dict[str, Any]]) -> str:
        seen.append(messages[-1]["content"])
        return "MERGED ANSWER"

    server.script(model="scripted-gamma", reply=merge)
    eng = engine(server, store)
    events: list[StepEvent] = []

    async def sink(e: StepEvent) -> None:
        events.append(e)

    run = await eng.plan("Solve the diamond task", workflow=DIAMOND)
    assert run.status == RunStatus.PLANNED and run.plan.source == "host"
    run = await RunManager(engine=eng).drive(run.id, sink)
    assert run.status == RunStatus.COMPLETED and run.answer == "MERGED ANSWER"
    a, b, c = run.steps
    # the two independent steps overlapped; the aggregator started after both ended
    assert a.started_at is not None and b.started_at is not None and a.ended_at and b.ended_at and c.started_at
    assert b.started_at < a.ended_at and a.started_at < b.ended_at
    assert c.started_at >= max(a.ended_at, b.ended_at)
    # the paper's worker prompt: task, each visible step's subtask and response, then the subtask
    prompt = seen[0]
    assert prompt.index("Solve the diamond task") < prompt.index("Draft A for diamond") < prompt.index(
        a.output or "?") < prompt.index("Draft B for diamond") < prompt.index("Your subtask:\nMerge the drafts")
    # usage as the server counted it; no price known for these models: cost is null, not 0
    assert c.usage.completion_tokens == count_tokens("MERGED ANSWER") and c.usage.cost_usd is None
    assert run.usage.calls == 3 and run.usage.cost_usd is None
    assert [(e.index, e.phase) for e in events if e.index == 2] == [(2, "start"), (2, "end")]
    assert events[-1].message.startswith("step 2 of 0..2 gamma: Merge the drafts")  # 0-based, as run_step and the trace


async def test_price_from_manifest(server: ScriptedServer, store: Store) -> None:
    eng = engine(server, store, price={"input_per_mtok": 1.0, "output_per_mtok": 2.0})
    run = await eng.plan("priced", workflow={"steps": [{"worker": "alpha", "instruction": "go"}]})
    run = await RunManager(engine=eng).drive(run.id)
    u = run.steps[0].usage
    assert u.cost_usd == pytest.approx((u.prompt_tokens * 1.0 + u.completion_tokens * 2.0) / 1e6)


async def test_failure_skips_dependents_keeps_others_then_resume(server: ScriptedServer, store: Store) -> None:
    server.set_faults(fail_models={"scripted-alpha": "500"})
    server.set_latency(model_latency={"scripted-beta": 0.2})
    eng = engine(server, store)
    run = await eng.plan("failing task", workflow=DIAMOND)
    run = await RunManager(engine=eng).drive(run.id)
    assert run.status == RunStatus.FAILED and "step 0 failed" in (run.error or "")
    a, b, c = run.steps
    assert a.status == StepStatus.FAILED and [x.status for x in a.attempts] == ["error", "error"]
    assert "500" in (a.attempts[0].error or "")
    assert b.status == StepStatus.COMPLETED  # already running: finished and kept
    assert c.status == StepStatus.SKIPPED and "[0]" in (c.error or "")
    # the provider recovers; resume runs only what is unfinished
    server.set_faults(fail_models={})
    before = server.ok_calls_for("Your subtask:\nDraft B for diamond")
    run = await resume(eng, run.id)
    assert run.status == RunStatus.COMPLETED
    assert server.ok_calls_for("Your subtask:\nDraft B for diamond") == before == 1  # never re-bought
    assert len(run.steps[0].attempts) == 3  # two failed attempts, then the one that worked


async def test_fallback_worker(server: ScriptedServer, store: Store) -> None:
    server.set_faults(fail_models={"scripted-alpha": "500"})
    base = http_registry(server.base_url)
    workers = [s.spec.model_copy(update={"fallback": "beta"}) if s.spec.id == "alpha" else s.spec
               for s in base.states]
    eng = Engine(build_registry(Manifest(workers=workers), "test"), store, policy=FAST)
    run = await eng.plan("fallback", workflow={"steps": [{"worker": "alpha", "instruction": "go"}]})
    run = await RunManager(engine=eng).drive(run.id)
    assert run.status == RunStatus.COMPLETED
    assert [a.worker for a in run.steps[0].attempts] == ["alpha", "alpha", "beta"]


async def test_empty_completion_is_a_failure(server: ScriptedServer, store: Store) -> None:
    eng = engine(server, store)
    server.script(model="scripted-alpha", reply=lambda m: "")  # empty completion is a failure
    run = await eng.plan("empty", workflow={"steps": [{"worker": "alpha", "instruction": "go"}]})
    run = await RunManager(engine=eng).drive(run.id)
    assert run.status == RunStatus.FAILED and "empty completion" in (run.error or "")
    assert len(run.steps[0].attempts) == 2


async def test_cancel_keeps_completed_steps(server: ScriptedServer, store: Store) -> None:
    server.set_latency(model_latency={"scripted-beta": 5.0})
    eng = engine(server, store)
    wf = {"steps": [{"worker": "alpha", "instruction": "quick one"},
                    {"worker": "beta", "instruction": "slow one", "access": "all"}]}
    run = await eng.plan("cancel me", workflow=wf)
    with anyio.move_on_after(1.0):
        await RunManager(engine=eng).drive(run.id)
    run = store.get_run(run.id)
    assert run.status == RunStatus.CANCELLED
    assert run.steps[0].status == StepStatus.COMPLETED and run.steps[1].status == StepStatus.PENDING
    assert run.steps[1].attempts[0].status == "cancelled"


async def test_run_step_by_hand(server: ScriptedServer, store: Store) -> None:
    eng = engine(server, store)
    run = await eng.plan("by hand", workflow=DIAMOND)
    with pytest.raises(RunStateError, match=r"step 2 sees step\(s\) \[0, 1\]"):
        await eng.run_step(run.id, 2)
    with pytest.raises(WorkflowError, match="out of range"):
        await eng.run_step(run.id, 7)
    step, run = await eng.run_step(run.id, 0, instruction="Draft A, edited")
    assert step.status == StepStatus.COMPLETED and step.edited and eng.runnable(run) == [1]
    assert run.status == RunStatus.PLANNED
    with pytest.raises(WorkflowError, match="unknown worker 'nobody'"):
        await eng.run_step(run.id, 1, worker="nobody")
    await eng.run_step(run.id, 1, worker="alpha")
    step, run = await eng.run_step(run.id, 2)
    assert run.status == RunStatus.COMPLETED and run.answer == step.output
    assert run.workflow.steps[1].worker == "alpha" and run.steps[1].worker == "alpha"
    with pytest.raises(RunStateError, match="already completed"):
        await eng.run_step(run.id, 0)


async def test_run_step_refused_after_its_claim_leaves_an_interrupted_run_adoptable(
        server: ScriptedServer, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process completed the step between run_step's read and its claim: the run is left as it was found.
    For an interrupted run, that is stored `running` with no owner (what replicas adopt), not a stored
    `interrupted`, which no replica would ever look for."""
    eng = engine(server, store)
    run = await eng.plan("by hand", workflow=DIAMOND)
    with sqlite3.connect(store.location) as con:  # its owner was stopped: handed back
        con.execute("UPDATE runs SET status='running', owner=NULL, lease=1 WHERE id=?", (run.id,))
    claim = store.claim

    def claim_after_another_process(run_id: str) -> Any:
        with sqlite3.connect(store.location) as con:  # what the other process wrote, just before this claim
            con.execute("UPDATE steps SET status='completed', output='theirs' WHERE run_id=? AND idx=0", (run_id,))
        return claim(run_id)

    monkeypatch.setattr(store, "claim", claim_after_another_process)
    assert store.get_run(run.id).status == RunStatus.INTERRUPTED
    with pytest.raises(RunStateError, match="step 0 is already completed"):
        await eng.run_step(run.id, 0)
    assert store.get_run(run.id).status == RunStatus.INTERRUPTED and store.get_run(run.id).owner is None
    assert store.orphaned_runs() == [run.id]


async def test_keys_never_reach_store(server: ScriptedServer, store: Store) -> None:
    secret = "sk-very-secret-value-12345"
    os.environ["CONDUCTOR_TEST_KEY"] = secret
    try:
        eng = engine(server, store, api_key_env="CONDUCTOR_TEST_KEY")
        run = await eng.plan("secret", workflow=DIAMOND)
        await RunManager(engine=eng).drive(run.id)
    finally:
        del os.environ["CONDUCTOR_TEST_KEY"]
    store.close()
    for path in Path(store.location).parent.iterdir():
        assert secret.encode() not in path.read_bytes()


async def test_bad_input(server: ScriptedServer, store: Store) -> None:
    eng = engine(server, store)
    with pytest.raises(WorkflowError, match="task: empty"):
        await eng.plan("  ")
    with pytest.raises(WorkflowError, match="max_steps: 9"):
        await eng.plan("x", max_steps=9, workflow=DIAMOND)
    with pytest.raises(WorkflowError, match="2 steps, at most 1"):
        await eng.plan("x", max_steps=1, workflow={"steps": DIAMOND["steps"][:2]})


async def test_calls_one_at_a_time_keep_one_connection_and_calls_at_once_spread(server: ScriptedServer) -> None:
    """The direct client's channel spreads calls over POOLS connection pools (httpcore's pool costs grow with the
    connections it holds): each call goes to the pool with the fewest in flight, the first of those, so calls made
    one at a time reuse one connection and 2 × POOLS calls at once hold two in each pool."""
    channel = Channel(server.base_url, "none")
    body = {"model": "scripted-a", "messages": [{"role": "user", "content": "hi"}]}

    async def call() -> None:
        assert (await channel.post(body, 10)).status_code == 200

    try:
        for _ in range(3):
            await call()
        assert [len(p._pool.connections) for p in channel.pools] == [1] + [0] * (POOLS - 1)
        server.set_latency(latency_s=0.2)
        async with anyio.create_task_group() as tg:
            for _ in range(2 * POOLS):
                tg.start_soon(call)
        assert [len(p._pool.connections) for p in channel.pools] == [2] * POOLS
        assert channel.in_flight == [0] * POOLS
    finally:
        await channel.aclose()


async def test_solve_stores_its_run_claimed_and_a_stop_before_its_first_step_cancels_it(
        server: ScriptedServer, store: Store) -> None:
    """solve stores the plan and its claim in one transaction: the run is never `planned` on its way to running, and
    its one claim is lease 1. What solve does between that commit and the first step (the "planned" progress event)
    is part of the execution: under its heartbeat, and stopped there the run ends `cancelled`, nothing called, as a
    run stopped during a step does; a resume carries it out."""
    runs = RunManager(engine=engine(server, store))
    wf = {"steps": [{"worker": "alpha", "instruction": "say hi"}]}
    held = anyio.Event()

    async def hold(event: Any) -> None:  # the listener hears "planned" before the first step: it keeps the run there
        if isinstance(event, PlanEvent) and event.phase == "planned":
            held.set()
            await anyio.sleep_forever()

    async with runs.running():
        done = await runs.solve("greet", workflow=wf)
        assert await runs.wait(done, 10)
        row = store_row(store, done.run_id)
        assert (row["status"], row["lease"], row["owner"]) == ("completed", 1, None)
        assert [a.n for a in store.get_run(done.run_id).steps[0].attempts] == [1]

        stopped = await runs.solve("greet", workflow=wf, listener=hold)
        with anyio.fail_after(10):
            await held.wait()
        run = store.get_run(stopped.run_id)
        assert run.status == RunStatus.RUNNING and run.owner == process_owner()
        row = store_row(store, stopped.run_id)
        assert row["lease"] == 1 and row["lease_expires_at"] > row["claimed_at"] == run.heartbeat_at
        await runs.cancel(stopped)
        row = store_row(store, stopped.run_id)
        assert (row["status"], row["owner"], row["lease_expires_at"]) == ("cancelled", None, None)
        assert store.get_run(stopped.run_id).steps[0].attempts == [] and len(server.calls()) == 1

        again = runs.resume(stopped.run_id)
        assert again is not None and await runs.wait(again, 10)
        run = store.get_run(stopped.run_id)
        assert run.status == RunStatus.COMPLETED and [a.n for a in run.steps[0].attempts] == [1]
        assert len(server.calls()) == 2


def store_row(store: Store, run_id: str) -> dict[str, Any]:
    with store._read() as db:  # with the columns a Run does not carry: lease, lease_expires_at, claimed_at
        row = db.execute("SELECT status, lease, owner, lease_expires_at, claimed_at FROM runs WHERE id=?",
                         (run_id,)).fetchone()
    return dict(zip(row.keys(), tuple(row), strict=True))
