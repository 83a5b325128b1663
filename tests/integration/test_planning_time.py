"""Planning that outlasts a host's patience, with the real bundled GGUF: progress while the conductor writes,
`wait_s` counting planning, a bound on plan time with a fallback the trace explains, cancelling a plan
(the model's thread stops at its next token), and the default thread count."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from conductor_mcp.errors import RunStateError
from conductor_mcp.planners.base import PlanEvent
from conductor_mcp.planners.gguf import GGUFPlanner
from conductor_mcp.runs.run_manager import Progress, RunManager
from conductor_mcp.surfaces.mcp_server import build_server
from conductor_mcp.workers.local_model import LocalModel, default_threads, usable_cores
from conductor_mcp.workers.registry import bundled_gguf_path

from ..conftest import root_run_ids
from ..servers.openai_server import ScriptedServer
from .mcp_helpers import server_env, write_manifest
from .test_mcp_transports import SERVE
from .test_planner import odd_workers

pytestmark = pytest.mark.anyio
TASK = "What is 6 times 7?\nREPLY: 42"


def bounded_manifest(tmp_path: Path, base_url: str, plan_timeout_s: float) -> Path:
    path = write_manifest(tmp_path, base_url)
    text = path.read_text().replace("conductor: {gguf: bundled, max_steps: 3}",
                                    f"conductor: {{gguf: bundled, max_steps: 3, plan_timeout_s: {plan_timeout_s}}}")
    path.write_text(text)
    return path


async def test_the_planner_ticks_with_the_tokens_it_has_written() -> None:
    planner = GGUFPlanner(bundled_gguf_path())
    planner.progress_every_s = 0.01  # a plan takes seconds: many ticks, whatever the machine's load
    events: list[PlanEvent] = []

    async def hear(event: PlanEvent) -> None:
        events.append(event)

    result = await planner.plan("Write a Python function that reverses a linked list.", odd_workers(), 3,
                                progress=hear)
    assert events[0].phase == "start" and events[0].message == f"planning with {planner.name}"
    ticks = [e for e in events if e.phase == "writing"]
    assert ticks and all(e.max_tokens and e.max_tokens > 0 for e in ticks)
    for attempt in {e.attempt for e in ticks}:  # a retry counts its own tokens from 0
        counts = [e.tokens for e in ticks if e.attempt == attempt]
        assert counts == sorted(counts), counts
    assert max(e.tokens for e in ticks) > 0  # the token hook counts as the model writes
    assert max(e.tokens for e in ticks) <= result.info.usage.completion_tokens
    assert f"of at most {ticks[-1].max_tokens} tokens" in ticks[-1].message


async def test_a_plan_waiting_for_a_busy_model_is_bounded_and_tells_progress() -> None:
    """plan_timeout_s counts from the call, not from when the model is free: a plan queued behind another
    use of the model (here the model's own lock, held by a thread as a concurrent plan holds it) hears
    progress at once, ticks while it waits, and falls back at the bound with the reason in the trace."""
    planner = GGUFPlanner(bundled_gguf_path())
    planner.plan_timeout_s = 1.0
    planner.progress_every_s = 0.1
    planner.model.load()
    events: list[PlanEvent] = []

    async def hear(event: PlanEvent) -> None:
        events.append(event)

    held, release = threading.Event(), threading.Event()

    def busy() -> None:
        with planner.model._lock:
            held.set()
            release.wait(60)

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        held.wait(10)
        began = time.perf_counter()
        result = await planner.plan("Write a Python function that reverses a linked list.", odd_workers(), 3,
                                    progress=hear)
        waited = time.perf_counter() - began
    finally:
        release.set()
        thread.join()
    assert waited < 30  # bounded: the model stayed busy for up to 60 s
    assert result.info.source == "fallback" and len(result.workflow.steps) == 1
    assert any("the model was not ready" in n for n in result.info.notes), result.info.notes
    assert events[0].phase == "start"
    assert any(e.phase == "waiting" and "waiting for the model" in e.message for e in events), events


async def test_a_cancelled_call_stops_at_its_next_token() -> None:
    model = LocalModel(bundled_gguf_path(), n_ctx=1024)
    model.load()
    seen: list[int] = []
    writing = threading.Event()

    def on_token(n: int) -> None:  # on the model's thread
        seen.append(n)
        if n >= 5:
            writing.set()

    messages = [{"role": "user", "content": "Tell me a long story about a robot who learns to paint."}]
    # EOS suppressed: uncancelled, this call would write all 2000 tokens
    params: dict[str, Any] = {"max_tokens": 2000, "temperature": 0.0, "logit_bias": {model._llama.token_eos(): -100.0}}
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: model.chat(messages, on_token=on_token, **params))
            await anyio.to_thread.run_sync(writing.wait)
            scope.cancel()
    # the model has one thread: this call runs only once the cancelled one has ended
    reply = await model.chat(messages, max_tokens=4, temperature=0.0)
    assert reply.usage.completion_tokens == 4
    assert 5 <= max(seen) < 2000, max(seen)


async def test_plan_timeout_falls_back_and_the_trace_says_why(tmp_path: Path, server: ScriptedServer) -> None:
    # 0.05 s: no plan fits, not even the prompt's evaluation; over stdio, as a host runs the server
    env = server_env(tmp_path, bounded_manifest(tmp_path, server.base_url, 0.05))
    async with Client(StdioServerParameters(command=SERVE[0], args=SERVE[1:], env=env)) as c:
        r = await c.call_tool("plan_workflow", {"task": TASK})
        assert not r.is_error, r.content
        out = r.structured_content
        assert out is not None and out["plan_source"] == "fallback"
        assert out["workflow"]["steps"] == [{"worker": "strong", "instruction": TASK, "access": "none"}]
        trace = json.loads((await c.read_resource(out["trace_uri"])).contents[0].text)  # type: ignore[union-attr]
        note = "no plan within plan_timeout_s=0.05 s (conductor.plan_timeout_s)"
        assert any(note in n and n.endswith("planned the whole task as one step instead")
                   for n in trace["plan"]["notes"]), trace["plan"]
        # the model was stopped, not left writing: the same server plans again, and the run completes
        r = await c.call_tool("solve", {"task": TASK, "wait_s": 600})
        assert r.structured_content is not None and r.structured_content["status"] == "completed"


async def test_wait_s_covers_planning(tmp_path: Path, server: ScriptedServer) -> None:
    mcp_server = build_server(write_manifest(tmp_path, server.base_url), tmp_path / "traces.db")
    messages: list[str] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with Client(mcp_server) as c:
        r = await c.call_tool("solve", {"task": TASK, "wait_s": 0})  # the conductor has not even started
        out = r.structured_content
        assert out is not None and out["status"] == "running" and out["steps"] == [], out
        assert "still planning" in r.content[0].text  # type: ignore[union-attr]
        run_id = out["run_id"]
        r = await c.call_tool("get_run", {"run_id": run_id, "wait_s": 600}, progress_callback=progress)
        out = r.structured_content
        assert out is not None and out["status"] == "completed" and out["answer"] == "42"
        assert any(m.startswith("planned ") for m in messages), messages
        assert messages[-1].endswith("[completed]")


async def test_a_plan_cancelled_mid_way_stores_nothing_and_frees_the_model(tmp_path: Path,
                                                                            server: ScriptedServer) -> None:
    runs = RunManager(write_manifest(tmp_path, server.base_url), tmp_path / "traces.db")
    started = anyio.Event()

    async def hear(event: Progress) -> None:
        if isinstance(event, PlanEvent) and event.phase == "start":
            started.set()

    async with runs.running():
        handle = await runs.solve(TASK, listener=hear)
        await started.wait()
        assert handle.planning
        await runs.cancel(handle)
        assert handle.error is not None and "cancelled while the conductor was planning" in handle.error
        with pytest.raises(RunStateError, match="cancelled while the conductor was planning"):
            runs.get(handle.run_id)
        assert root_run_ids(runs.store_path()) == []
        again = await runs.solve(TASK)
        assert await runs.wait(again, 600)
        assert runs.get(again.run_id).status == "completed"
        # an ended run's handle is let go (its waiters hold it), or a long-lived server would fill with them;
        # why the unstored one ended is kept apart
        assert runs.handles == {} and again.final is not None
        with pytest.raises(RunStateError, match="cancelled while the conductor was planning"):
            runs.get(handle.run_id)


def test_default_threads_leave_cores_free() -> None:
    model = LocalModel(bundled_gguf_path())
    assert model.n_threads == default_threads() >= 1
    assert model.n_threads < usable_cores() or usable_cores() == 1
