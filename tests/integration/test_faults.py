"""The engine under faults: 200 solves with 30% of worker calls failing, and 20 SIGKILLs mid-run.

These test the engine, not the planner, so the workflows are fixed. Workers are the scripted server
reached through litellm over HTTP; the store is a real SQLite file shared with killed processes.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from conductor_mcp.models import Manifest, RunStatus, StepStatus, WorkerSpec
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.resilience import RetryPolicy
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.workers.registry import build_registry

from ..conftest import resume
from ..servers.openai_server import FAULT_KINDS, ScriptedServer
from .mcp_helpers import server_env

pytestmark = pytest.mark.anyio


def workers(base_url: str, timeout_s: float) -> list[WorkerSpec]:
    return [WorkerSpec(id=w, model=f"openai/scripted-{w}", api_base=base_url, timeout_s=timeout_s,
                       fallback=fb, max_concurrency=16) for w, fb in (("a", "b"), ("b", "a"))]


async def test_200_solves_with_30_percent_faults(server: ScriptedServer, store: Store) -> None:
    # a 3 s timeout: with 1 s, a loaded machine delivered good replies late, the client gave up on them and
    # the server counted replies nobody kept; hangs (4 s) still outlast it
    server.set_faults(rate=0.3, kinds=sorted(FAULT_KINDS), seed=7, retry_after=0.05, hang_s=4.0)
    engine = Engine(build_registry(Manifest(workers=workers(server.base_url, 3.0)), "faults"), store,
                    policy=RetryPolicy(attempts_per_worker=3, base_delay_s=0.01, max_delay_s=0.05))
    limiter = anyio.CapacityLimiter(20)
    run_ids: list[str] = []

    async def one(k: int) -> None:
        async with limiter:
            wf = {"steps": [{"worker": "a", "instruction": f"fault run {k} step 0"},
                            {"worker": "b", "instruction": f"fault run {k} step 1", "access": "all"}]}
            run = await engine.plan(f"fault task {k}", workflow=wf)
            run_ids.append(run.id)
            await RunManager(engine=engine).drive(run.id)

    async with anyio.create_task_group() as tg:
        for k in range(200):
            tg.start_soon(one, k)
    # a run whose every worker failed every try ends `failed` with its trace; resume finishes it
    for run_id in run_ids:
        if store.get_run(run_id).status != RunStatus.COMPLETED:
            await resume(engine, run_id)
    server.set_faults(rate=0.0)
    await anyio.sleep(4.5)  # abandoned hangs are recorded by the server when they end
    runs = [store.get_run(r) for r in run_ids]
    assert len(runs) == 200 and all(r.status == RunStatus.COMPLETED for r in runs)
    # only this test's requests: a request abandoned by an earlier test may still finish on the shared server
    mine = [c for c in server.calls() if "Overall task:\nfault task " in c.last_user]
    ok = sum(1 for c in mine if c.outcome == "ok")
    hangs = sum(1 for c in mine if c.outcome == "hang")
    assert len(mine) > 400 and 0.2 < 1 - ok / len(mine) < 0.4
    completed = sum(1 for r in runs for s in r.steps if s.status == StepStatus.COMPLETED)
    ok_attempts = sum(1 for r in runs for s in r.steps for a in s.attempts if a.status == "ok")
    failed_attempts = [a for r in runs for s in r.steps for a in s.attempts if a.status == "error"]
    assert ok == completed == ok_attempts == 400  # every good reply is a completed step, once
    # every failure the server dealt is in a trace; a client-side timeout stands for a hang, or for a
    # request that never reached the server on a loaded machine
    timeouts = [a for a in failed_attempts if "timed out after" in (a.error or "")]
    assert len(failed_attempts) - len(timeouts) == len(mine) - ok - hangs
    assert len(timeouts) >= hangs
    assert all(a.error and a.latency_s is not None for a in failed_attempts)
    kinds = {k for k in ("InternalServerError 500", "RateLimitError 429", "timed out", "empty completion")
             if any(k in (a.error or "") for a in failed_attempts)}
    assert len(kinds) == 4, kinds  # each kind of failure was met, recorded and retried past


async def test_retry_after_is_honoured(server: ScriptedServer, store: Store) -> None:
    server.set_faults(fail_models={"scripted-a": "429"}, retry_after=1.0)
    spec = WorkerSpec(id="a", model="openai/scripted-a", api_base=server.base_url, timeout_s=5)
    engine = Engine(build_registry(Manifest(workers=[spec]), "t"), store,
                    policy=RetryPolicy(attempts_per_worker=2, base_delay_s=0.01, max_delay_s=5))
    run = await engine.plan("429", workflow={"steps": [{"worker": "a", "instruction": "x"}]})
    run = await RunManager(engine=engine).drive(run.id)
    first, second = run.steps[0].attempts
    assert "RateLimitError 429" in (first.error or "")
    assert second.started_at - first.started_at >= 1.0  # the server's Retry-After was the floor
    assert server.stats()["requests"] == 2  # one retry layer: litellm's client did not retry on its own


def test_sigkill_at_random_moments_then_resume(tmp_path: Path, server: ScriptedServer) -> None:
    """Kill `mcp-conductor resume` 20 times at random moments; then resume each run to the end."""
    server.set_latency(latency_s=0.6)
    manifest = tmp_path / "w.yaml"
    manifest.write_text("workers:\n" + "".join(
        f"  - {{id: {w}, model: openai/scripted-{w}, api_base: '{server.base_url}', timeout_s: 10}}\n"
        for w in ("a", "b")))
    env = server_env(tmp_path, manifest)
    store = Store(env["CONDUCTOR_DB"])
    engine = Engine(build_registry(Manifest(workers=workers(server.base_url, 10)), "crash"), store)
    rng = random.Random(20261122)
    run_ids: list[str] = []
    for k in range(10):
        wf: dict[str, Any] = {"steps": [{"worker": "a", "instruction": f"crash {k} step 0"},
                        {"worker": "b", "instruction": f"crash {k} step 1", "access": "none"},
                        {"worker": "a", "instruction": f"crash {k} step 2", "access": "all"},
                        {"worker": "b", "instruction": f"crash {k} step 3", "access": [2]}]}
        run_ids.append(anyio.run(functools.partial(engine.plan, "crash task", workflow=wf)).id)
    kills = {r: 0 for r in run_ids}
    for n in range(20):
        run_id = run_ids[n % 10]
        proc = subprocess.Popen([sys.executable, "-m", "conductor_mcp", "resume", run_id, "--json"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 5.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        kills[run_id] += 1
    server.set_latency(latency_s=0.0)
    interrupted = 0
    for run_id in run_ids:
        assert store.get_run(run_id).status in (RunStatus.INTERRUPTED, RunStatus.PLANNED, RunStatus.COMPLETED)
        run = anyio.run(resume, engine, run_id)
        assert run.status == RunStatus.COMPLETED
        calls = server.calls()
        for step in run.steps:
            marker = f"Your subtask:\n{step.instruction}"
            mine = [c for c in calls if marker in c.last_user]
            assert [a.status for a in step.attempts].count("ok") == 1
            assert sum(1 for c in mine if c.outcome == "ok") <= len(step.attempts)  # each call is an attempt
            assert step.ended_at is not None and all(c.t <= step.ended_at for c in mine)  # none after commit
            lost = sum(1 for a in step.attempts if a.status == "interrupted")
            assert lost <= kills[run_id]  # in flight at a kill: called at most once more
            interrupted += lost
    assert interrupted >= 1  # the kills did land mid-call
    store.close()
