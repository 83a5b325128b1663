"""OpenTelemetry export as a user turns it on: the real CLI and MCP server, with OTEL_EXPORTER_OTLP_ENDPOINT
pointing at a real OTLP/HTTP receiver on 127.0.0.1 that decodes what arrives (opentelemetry-proto), workers
reached through litellm over HTTP, and a real SQLite store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from ..servers.openai_server import ScriptedServer
from ..servers.otlp_receiver import OTLPReceiver, Span

SECRET = "sk-otel-test-9c8b7a6d5e4f3a2b1c0d9e8f7a6b"
TASK = "Compare the orbital periods of Mars and Venus"
CHILD_MARK = "Your subtask:\nWork out"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "conductor_mcp", *args], capture_output=True, text=True,
                          env=env, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    return proc


def steps(*items: tuple[str, str, Any]) -> str:
    return json.dumps({"steps": [{"worker": w, "instruction": i, "access": a} for w, i, a in items]})


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as r:
        yield r


@pytest.fixture
def env(tmp_path: Path, server: ScriptedServer, receiver: OTLPReceiver) -> dict[str, str]:
    server.set_api_key(SECRET)  # the key is really sent: it must still never be exported
    manifest = tmp_path / "workers.yaml"
    manifest.write_text(f"""
conductor: {{model: openai/conductor-model, api_base: {server.base_url}, api_key_env: OTEL_TEST_API_KEY, max_steps: 3}}
workers:
  - {{id: flaky, model: openai/scripted-flaky, api_base: {server.base_url}, api_key_env: OTEL_TEST_API_KEY,
     fallback: steady, timeout_s: 5}}
  - {{id: steady, model: openai/scripted-steady, api_base: {server.base_url}, api_key_env: OTEL_TEST_API_KEY,
     timeout_s: 5, price: {{input_per_mtok: 3.0, output_per_mtok: 15.0}}}}
""")
    base = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("OTEL_")
            and k not in ("OLLAMA_API_BASE", "CONDUCTOR_OTEL")}
    return {**base, "CONDUCTOR_DB": str(tmp_path / "t.db"), "CONDUCTOR_WORKERS": str(manifest),
            "OTEL_TEST_API_KEY": SECRET, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}


def ours(spans: list[Span]) -> list[Span]:
    return [s for s in spans if s.scope == "conductor_mcp"]


def run_span(spans: list[Span], run_id: str) -> Span:
    found = [s for s in spans if s.name == "invoke_agent conductor" and s.attributes.get("conductor.run.id") == run_id]
    assert len(found) == 1, [(s.name, s.attributes) for s in spans]
    return found[0]


def named(parent: Span, name: str) -> list[Span]:
    return [c for c in parent.children if c.name == name]


def exported(receiver: OTLPReceiver) -> bytes:
    return b"".join(receiver.bodies)


def test_solve_exports_the_run_tree(env: dict[str, str], server: ScriptedServer, receiver: OTLPReceiver) -> None:
    server.script(model="conductor-model", contains=CHILD_MARK, reply=steps(
        ("steady", "Give the orbital period of Mars in days", "none")))
    server.script(model="conductor-model", contains=TASK, reply=steps(
        ("flaky", "Draft the orbital periods of Mars and Venus", "none"),
        ("conductor", "Work out the orbital periods of Mars and Venus in days", "all"),
        ("steady", "Write the final answer comparing the orbital periods of Mars and Venus", "all")))
    server.set_faults(fail_models={"scripted-flaky": "500"})  # three tries, then its fallback

    result = json.loads(cli("solve", TASK, "--json", env=env).stdout)
    assert result["status"] == "completed"
    spans = receiver.spans()  # the CLI flushed before it exited
    root = run_span(spans, result["run_id"])
    assert root.parent_id == "" and len({s.trace_id for s in ours(spans)}) == 1  # one trace for the whole run
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.agent.name"] == "conductor"
    assert root.attributes["conductor.run.status"] == "completed" and root.attributes["conductor.run.kind"] == "root"
    assert root.resource["service.name"] == "conductor-mcp"
    assert [c.name for c in root.children] == ["plan", "step 0", "step 1", "step 2"]

    (plan,) = named(root, "plan")
    assert plan.attributes["gen_ai.operation.name"] == "chat"
    assert plan.attributes["gen_ai.request.model"] == "conductor-model"
    assert plan.attributes["gen_ai.provider.name"] == "openai" == plan.attributes["gen_ai.system"]
    assert plan.attributes["conductor.plan.source"] == "conductor" and plan.attributes["gen_ai.usage.input_tokens"] > 0
    assert plan.attributes["conductor.plan.workers"] == ["flaky", "conductor", "steady"]

    (step0,) = named(root, "step 0")
    calls = step0.children
    assert [c.name for c in calls] == ["chat scripted-flaky"] * 3 + ["chat scripted-steady"]
    assert [c.status_code for c in calls] == [2, 2, 2, 0]  # ERROR three times, then unset (fine)
    assert all(c.attributes["error.type"] == "WorkerError" for c in calls[:3])
    assert "500" in calls[0].status_message
    assert step0.event_names() == ["retry", "retry", "fallback"]
    assert step0.events[2][1]["conductor.worker.id"] == "steady" and "500" in step0.events[2][1]["conductor.reason"]
    answered = calls[3].attributes
    assert answered["gen_ai.request.model"] == "scripted-steady" and answered["conductor.worker.id"] == "steady"
    assert answered["server.address"] == "127.0.0.1" and answered["gen_ai.usage.output_tokens"] > 0
    assert answered["gen_ai.request.max_tokens"] == 4096 and calls[3].kind == 3  # SPAN_KIND_CLIENT
    # a priced worker's call carries its cost, from its manifest price and the tokens it used
    assert answered["gen_ai.usage.cost"] == pytest.approx(
        (answered["gen_ai.usage.input_tokens"] * 3.0 + answered["gen_ai.usage.output_tokens"] * 15.0) / 1e6)
    assert all("gen_ai.usage.cost" not in c.attributes for c in calls[:3])  # failed calls cost nothing known

    # the conductor step: the child's plan, then the child run, nested under the step
    (step1,) = named(root, "step 1")
    assert [c.name for c in step1.children] == ["plan", "invoke_agent conductor"]
    child = step1.children[1]
    assert child.attributes["conductor.run.kind"] == "recursion"
    assert child.attributes["conductor.run.parent_id"] == result["run_id"]
    assert [c.name for c in child.children] == ["step 0"]
    assert [c.name for c in child.children[0].children] == ["chat scripted-steady"]

    # every model call's tokens are in the trace once: they add up to the run tree's usage
    models = [s for s in ours(spans) if "gen_ai.usage.input_tokens" in s.attributes]
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in models) == result["usage"]["prompt_tokens"]
    assert sum(s.attributes["gen_ai.usage.output_tokens"] for s in models) == result["usage"]["completion_tokens"]

    # no key, and no content without the opt-in
    body = exported(receiver)
    assert SECRET.encode() not in body and b"[REDACTED]" not in body
    assert b"orbital" not in body and result["answer"].encode() not in body
    assert not any("gen_ai.input.messages" in s.attributes for s in spans)


def test_content_only_with_the_opt_in(env: dict[str, str], server: ScriptedServer, receiver: OTLPReceiver) -> None:
    env["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "true"
    result = json.loads(cli("solve", f"{TASK}; key {SECRET}?", "--json", "--strategy", "single:steady",
                            env=env).stdout)
    spans = receiver.spans()
    root = run_span(spans, result["run_id"])
    (task_message,) = json.loads(root.attributes["gen_ai.input.messages"])
    assert task_message["role"] == "user" and task_message["parts"][0]["content"].startswith(TASK)
    assert "[REDACTED]" in task_message["parts"][0]["content"]  # a key in the task is masked all the same
    assert json.loads(root.attributes["gen_ai.output.messages"])[0]["parts"][0]["content"] == result["answer"]
    (plan,) = named(root, "plan")
    assert "gen_ai.operation.name" not in plan.attributes  # a fixed strategy calls no model
    (call,) = named(named(root, "step 0")[0], "chat scripted-steady")
    sent = json.loads(call.attributes["gen_ai.input.messages"])
    # one worker alone gets the task as it is, with no team prompt around it
    assert [m["role"] for m in sent] == ["user"] and sent[0]["parts"][0]["content"].startswith(TASK)
    assert SECRET.encode() not in exported(receiver)


def test_resume_in_another_process_links_to_the_plan(env: dict[str, str], receiver: OTLPReceiver) -> None:
    planned = json.loads(cli("plan", TASK, "--json", "--strategy", "single:steady", env=env).stdout)
    first = run_span(receiver.spans(), planned["run_id"])
    assert first.attributes["conductor.run.status"] == "planned" and named(first, "plan")
    receiver.clear()
    done = json.loads(cli("resume", planned["run_id"], "--json", env=env).stdout)
    assert done["status"] == "completed"
    second = run_span(receiver.spans(), planned["run_id"])
    assert second.trace_id != first.trace_id  # a new trace, linked to the one that planned the run
    assert [(t, s) for t, s, _ in second.links] == [(first.trace_id, first.span_id)]
    assert second.attributes["conductor.run.status"] == "completed" and named(second, "step 0")


def test_off_switch_and_a_dead_collector(env: dict[str, str], receiver: OTLPReceiver) -> None:
    cli("plan", TASK, "--strategy", "single:steady", env={**env, "CONDUCTOR_OTEL": "0"})
    assert receiver.requests == 0
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    proc = cli("solve", TASK, "--json", "--strategy", "single:steady", env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": dead})
    result = json.loads(proc.stdout)
    assert result["status"] == "completed" and result["answer"]  # export failing never fails or holds a run
    assert "the collector did not take the last spans" in proc.stderr  # and exit says so, once


@pytest.mark.anyio
async def test_mcp_tool_call_spans_hold_the_run(env: dict[str, str], receiver: OTLPReceiver) -> None:
    params = StdioServerParameters(command=sys.executable, args=["-m", "conductor_mcp", "serve"], env=env)
    async with Client(params) as client:
        result = await client.call_tool("solve", {"task": TASK, "strategy": "single:steady", "wait_s": 60})
        assert not result.is_error, result.content
        run_id = (result.structured_content or {})["run_id"]
    # the server flushed at shutdown; its exporter sends from a thread, so wait for what it sent
    spans = receiver.wait_for(lambda ss: any(s.name == "tools/call solve" for s in ss)
                              and any(s.attributes.get("conductor.run.status") for s in ss))
    (call,) = [s for s in spans if s.name == "tools/call solve"]
    assert call.scope == "mcp-python-sdk" and call.attributes["gen_ai.tool.name"] == "solve"
    run = run_span(spans, run_id)
    assert run.parent_id == call.span_id and run.trace_id == call.trace_id  # the run nests under the MCP call
    assert run.attributes["conductor.run.status"] == "completed"
    assert SECRET.encode() not in exported(receiver)


@pytest.mark.anyio
async def test_a_plan_held_past_its_time_is_not_reused(env: dict[str, str], receiver: OTLPReceiver) -> None:
    """A server that plans nothing more: the planned run's span ends as planned once held past HOLD_S, and a
    resume after that is a new trace linked to it, not the old span reopened hours later."""
    env = {**env, "CONDUCTOR_OTEL_HOLD_S": "1"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "conductor_mcp", "serve"], env=env)
    async with Client(params) as client:
        workflow = {"steps": [{"worker": "steady", "instruction": "Answer the task", "access": "none"}]}
        planned = await client.call_tool("plan_workflow", {"task": TASK, "workflow": workflow})
        run_id = (planned.structured_content or {})["run_id"]
        await anyio.sleep(1.5)
        done = await client.call_tool("resume", {"run_id": run_id, "wait_s": 60})
        assert (done.structured_content or {})["status"] == "completed", done.content
    spans = receiver.wait_for(lambda ss: sum(s.name == "invoke_agent conductor" for s in ss) >= 2)
    runs = [s for s in spans if s.name == "invoke_agent conductor" and s.attributes.get("conductor.run.id") == run_id]
    assert sorted(str(s.attributes["conductor.run.status"]) for s in runs) == ["completed", "planned"]
    first, second = sorted(runs, key=lambda s: s.attributes["conductor.run.status"] != "planned")
    assert [(t, i) for t, i, _ in second.links] == [(first.trace_id, first.span_id)]


def start_ui(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """`mcp-conductor ui --port 0`, and the address it prints first (http://127.0.0.1:PORT/ui/)."""
    proc = subprocess.Popen([sys.executable, "-m", "conductor_mcp", "ui", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode().strip()


@pytest.mark.anyio
async def test_the_ui_command_exports_too(env: dict[str, str], receiver: OTLPReceiver) -> None:
    """`mcp-conductor ui` is the HTTP server with the web view: a run it makes is exported like one of `serve`'s,
    while the server is still up (the exporter sends within about a second)."""
    proc, address = start_ui(env)
    try:
        assert address.endswith("/ui/"), address
        port = int(address.rsplit(":", 1)[1].split("/")[0])
        for _ in range(600):  # the address is printed before the server listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "the server exited"
                await anyio.sleep(0.1)
        async with Client(address.removesuffix("ui/") + "mcp") as client:
            result = await client.call_tool("solve", {"task": TASK, "strategy": "single:steady", "wait_s": 60})
            assert not result.is_error, result.content
            run_id = (result.structured_content or {})["run_id"]
        spans = receiver.wait_for(lambda ss: any(s.attributes.get("conductor.run.id") == run_id
                                                 and s.attributes.get("conductor.run.status") == "completed"
                                                 for s in ss))
        assert run_span(spans, run_id).attributes["conductor.run.status"] == "completed"
        assert SECRET.encode() not in exported(receiver)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_review_and_its_correction_round_nest_under_the_run(env: dict[str, str], server: ScriptedServer,
                                                              receiver: OTLPReceiver) -> None:
    """With --max-rounds 2 the conductor reviews round 1 and writes a correction: a `review` span under the run,
    then the round's own run span under the same run, in the same trace."""
    server.script(model="conductor-model", contains="Review the answer", reply=steps(
        ("steady", "Check the orbital periods of Mars and Venus and correct the comparison", "all")))
    server.script(model="conductor-model", contains=TASK, reply=steps(
        ("steady", "Compare the orbital periods of Mars and Venus", "none")))
    result = json.loads(cli("solve", TASK, "--json", "--max-rounds", "2", env={**env, "CONDUCTOR_OTEL": "1"}).stdout)
    assert result["status"] == "completed"
    spans = receiver.spans()
    root = run_span(spans, result["run_id"])
    names = [c.name for c in root.children]
    assert names[:2] == ["plan", "step 0"] and "review" in names, names
    (review,) = named(root, "review")
    assert review.attributes["conductor.review.accepted"] is False
    assert review.attributes["gen_ai.request.model"] == "conductor-model"
    rounds = [c for c in root.children if c.name == "invoke_agent conductor"]
    assert len(rounds) == 1 and rounds[0].attributes["conductor.run.kind"] == "round"
    assert rounds[0].attributes["conductor.run.round"] == 2 and rounds[0].trace_id == root.trace_id
    assert [c.name for c in rounds[0].children] == ["step 0"]
