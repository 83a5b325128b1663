"""The server as hosts run it: a subprocess over stdio, streamable HTTP and SSE on 127.0.0.1, the MCP
Inspector CLI, and a server killed with SIGKILL mid-solve, restarted and resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import WORKFLOW, server_env, write_manifest

pytestmark = pytest.mark.anyio
SERVE = [sys.executable, "-m", "conductor_mcp.cli", "serve"]


@pytest.fixture
def env(tmp_path: Path, server: ScriptedServer) -> dict[str, str]:
    return server_env(tmp_path, write_manifest(tmp_path, server.base_url))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_http(env: dict[str, str], transport: str, *extra: str, host: str = "127.0.0.1",
               port: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = port or free_port()
    proc = subprocess.Popen([*SERVE, "--transport", transport, "--host", host, "--port", str(port), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start")


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def exercise(c: Client) -> str:
    tools = {t.name for t in (await c.list_tools()).tools}
    assert tools == {"solve", "plan_workflow", "run_step", "resume", "get_run", "rate_run"}
    r = await c.call_tool("plan_workflow", {"task": "transport check", "workflow": WORKFLOW})
    assert r.structured_content is not None
    run_id = str(r.structured_content["run_id"])
    r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 30})
    assert r.structured_content is not None and r.structured_content["status"] == "completed"
    trace = json.loads((await c.read_resource(f"conductor://runs/{run_id}")).contents[0].text)  # type: ignore[union-attr]
    assert trace["status"] == "completed"
    return run_id


async def test_stdio(env: dict[str, str]) -> None:
    params = StdioServerParameters(command=SERVE[0], args=SERVE[1:], env=env)
    async with Client(params) as c:
        await exercise(c)


def test_stdio_stdout_is_protocol_only(env: dict[str, str], server: ScriptedServer) -> None:
    """A Client ignores junk on stdout; read the raw pipe: every line must be JSON-RPC. The run includes
    the real GGUF conductor (llama.cpp) and a failing litellm call (its banner would go to stdout)."""
    server.set_faults(fail_models={"scripted-fast": "500"})
    requests: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "solve", "arguments": {"task": "Say hi.\nREPLY: hi", "workers": ["strong"], "wait_s": 60}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "name": "solve", "arguments": {"task": "Say bye", "workers": ["fast"], "wait_s": 60}}},
    ]
    proc = subprocess.Popen(SERVE, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[str] = []
    try:
        for req in requests:
            proc.stdin.write((json.dumps(req) + "\n").encode())
            proc.stdin.flush()
            if "id" in req:
                while True:
                    line = proc.stdout.readline().decode()
                    assert line, f"server closed stdout; stderr: {proc.stderr.read().decode()}"  # type: ignore[union-attr]
                    lines.append(line)
                    if json.loads(line).get("id") == req["id"]:
                        break
    finally:
        proc.stdin.close()
        proc.wait(20)
    rest = proc.stdout.read().decode()
    for line in [*lines, *rest.splitlines()]:
        msg = json.loads(line)  # raises on anything that is not JSON
        assert msg["jsonrpc"] == "2.0"
    results = {json.loads(x)["id"]: json.loads(x) for x in lines if "id" in json.loads(x)}
    assert results[3]["result"]["structuredContent"]["status"] == "completed"
    assert results[4]["result"]["structuredContent"]["status"] == "failed"


async def test_streamable_http(env: dict[str, str], stop: list[subprocess.Popen[bytes]]) -> None:
    proc, port = start_http(env, "http")
    stop.append(proc)
    async with Client(f"http://127.0.0.1:{port}/mcp") as c:
        await exercise(c)


async def test_sse(env: dict[str, str], stop: list[subprocess.Popen[bytes]]) -> None:
    proc, port = start_http(env, "sse")
    stop.append(proc)
    async with Client(sse_client(f"http://127.0.0.1:{port}/sse")) as c:
        await exercise(c)


def test_dns_rebinding_and_token(env: dict[str, str], stop: list[subprocess.Popen[bytes]]) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    proc, port = start_http(env, "http")
    stop.append(proc)
    url = f"http://127.0.0.1:{port}/mcp"
    assert httpx.post(url, json=init, headers=headers).status_code == 200
    assert httpx.post(url, json=init, headers={**headers, "host": "evil.example:80"}).status_code == 421
    assert httpx.post(url, json=init, headers={**headers, "origin": "http://evil.example"}).status_code == 403
    # off loopback: refuses to start without a token
    bad = subprocess.run([*SERVE, "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port())],
                         env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "set CONDUCTOR_TOKEN" in bad.stderr
    # with a token: 401 without it, 200 with it; Host protection still on for the bind address
    proc2, port2 = start_http({**env, "CONDUCTOR_TOKEN": "s3cret"}, "http", "--allowed-host", "conductor.lan",
                              host="0.0.0.0")
    stop.append(proc2)
    url2 = f"http://127.0.0.1:{port2}/mcp"
    assert httpx.post(url2, json=init, headers=headers).status_code == 401
    auth = {**headers, "authorization": "Bearer s3cret"}
    assert httpx.post(url2, json=init, headers={**auth, "authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url2, json=init, headers=auth).status_code == 200
    assert httpx.post(url2, json=init, headers={**auth, "host": "conductor.lan"}).status_code == 200
    assert httpx.post(url2, json=init, headers={**auth, "host": "evil.example"}).status_code == 421


# 0.15.0 is the newest Inspector that runs on Node 20 (later ones need Node 22); pinned so that `npx`
# resolves the same release everywhere. It is driven the way hosts run us: the console script.
INSPECTOR = "@modelcontextprotocol/inspector@0.15.0"
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "conductor-mcp")


def inspector(env: dict[str, str], *args: str) -> Any:
    cmd = ["npx", "-y", INSPECTOR, "--cli", CONSOLE_SCRIPT, "serve", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.mark.skipif(shutil.which("npx") is None, reason="needs Node.js (npx) for the MCP Inspector CLI")
def test_inspector_cli(env: dict[str, str]) -> None:
    env = {**env, "npm_config_yes": "true", "NO_UPDATE_NOTIFIER": "1"}
    tools = inspector(env, "--method", "tools/list")
    names = {t["name"] for t in tools["tools"]}
    assert names == {"solve", "plan_workflow", "run_step", "resume", "get_run", "rate_run"}
    planned = inspector(env, "--method", "tools/call", "--tool-name", "plan_workflow",
                        "--tool-arg", "task=Say yes.\nREPLY: yes", "--tool-arg", "max_steps=2")
    assert planned["structuredContent"]["plan_source"] == "conductor"
    run_id = planned["structuredContent"]["run_id"]
    step = inspector(env, "--method", "tools/call", "--tool-name", "run_step", "--tool-arg", f"run_id={run_id}",
                     "--tool-arg", "step=0")
    assert step["structuredContent"]["status"] == "completed"
    done = inspector(env, "--method", "tools/call", "--tool-name", "resume", "--tool-arg", f"run_id={run_id}")
    assert done["structuredContent"]["status"] == "completed"
    got = inspector(env, "--method", "tools/call", "--tool-name", "get_run", "--tool-arg", f"run_id={run_id}")
    assert got["structuredContent"]["answer"] == done["structuredContent"]["answer"]
    solved = inspector(env, "--method", "tools/call", "--tool-name", "solve", "--tool-arg", "task=Say yes.\nREPLY: yes")
    assert solved["structuredContent"]["answer"] == "yes"
    listed = inspector(env, "--method", "resources/list")
    assert "conductor://workers" in {r["uri"] for r in listed["resources"]}
    trace = inspector(env, "--method", "resources/read", "--uri", f"conductor://runs/{run_id}")
    assert json.loads(trace["contents"][0]["text"])["id"] == run_id


async def test_sigkill_mid_solve_then_resume(env: dict[str, str], server: ScriptedServer,
                                             stop: list[subprocess.Popen[bytes]]) -> None:
    """Kill the server during a run, restart it on the same database, resume: every step completed
    before the kill is called exactly once overall."""
    server.set_latency(model_latency={"scripted-slow": 3.0})
    proc, port = start_http(env, "http")
    stop.append(proc)
    async with Client(f"http://127.0.0.1:{port}/mcp") as c:
        r = await c.call_tool("plan_workflow", {"task": "crash test", "workflow": WORKFLOW})
        assert r.structured_content is not None
        run_id = str(r.structured_content["run_id"])
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 0.5})
        assert r.structured_content is not None and r.structured_content["status"] == "running"
        with anyio.fail_after(30):  # kill once the quick step is committed and the slow one is in flight
            while r.structured_content["steps"][0]["status"] != "completed":
                await anyio.sleep(0.1)
                r = await c.call_tool("get_run", {"run_id": run_id})
                assert r.structured_content is not None
        assert r.structured_content["steps"][1]["status"] == "running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert server.ok_calls_for("Your subtask:\nDraft one") == 1
    proc2, port2 = start_http(env, "http")
    stop.append(proc2)
    async with Client(f"http://127.0.0.1:{port2}/mcp") as c:
        r = await c.call_tool("get_run", {"run_id": run_id})
        assert r.structured_content is not None and r.structured_content["status"] == "interrupted"
        server.set_latency(model_latency={})
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 30})
        assert r.structured_content is not None and r.structured_content["status"] == "completed"
        trace = json.loads((await c.read_resource(f"conductor://runs/{run_id}")).contents[0].text)  # type: ignore[union-attr]
    assert server.ok_calls_for("Your subtask:\nDraft one") == 1  # completed before the kill: never again
    assert server.ok_calls_for("Your subtask:\nMerge the drafts") == 1
    slow_attempts = [a["status"] for a in trace["steps"][1]["attempts"]]
    assert slow_attempts == ["interrupted", "ok"]  # in flight at the kill: called once more, and recorded
