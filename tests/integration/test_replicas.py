"""Replicas as a load balancer runs them, with real server processes: the probes (/healthz, /readyz, a 503 when the
store is gone or lacks migrations), an MCP client and /v1 through nginx's round robin (deploy/nginx.conf) over two
`--stateless` servers on one store, and SIGTERM: the runs handed back, resumed at once by the other server (a
different host as far as the store can tell), and the process gone within its grace period."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client

from conductor_mcp.store import MIGRATIONS

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import WORKFLOW, server_env, write_manifest
from .test_mcp_transports import STRONG_TOKEN, exercise, free_port, start_http

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path, server: ScriptedServer) -> dict[str, str]:
    return server_env(tmp_path, write_manifest(tmp_path, server.base_url))


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def probe(port: int, path: str, **kw: object) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10, **kw)  # type: ignore[arg-type]


def test_probes_answer_without_token_and_say_when_the_store_is_not_ready(
        env: dict[str, str], tmp_path: Path, stop: list[subprocess.Popen[bytes]]) -> None:
    env = {**env, "CONDUCTOR_TOKEN": STRONG_TOKEN}
    proc, port = start_http(env, "http")
    stop.append(proc)
    # a kubelet sends the pod's address as Host and no token: both probes answer, and nothing else does
    foreign = {"host": "10.1.2.3:8765"}
    r = probe(port, "/healthz", headers=foreign)
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = probe(port, "/readyz", headers=foreign)
    assert (r.status_code, r.json()) == (200, {"status": "ready"})
    assert httpx.head(f"http://127.0.0.1:{port}/readyz").status_code == 200
    assert httpx.post(f"http://127.0.0.1:{port}/readyz").status_code == 405
    assert probe(port, "/mcp").status_code == 401  # the probes opened nothing else
    assert probe(port, "/v1/models").status_code == 401

    db = Path(env["CONDUCTOR_DB"])
    # the store restored from an older backup under the running server: its newest migration is not applied
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(db) as old:
        old.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        old.executemany("INSERT INTO _migrations VALUES (?, 0)", [(name,) for name, _ in MIGRATIONS[:-1]])
    r = probe(port, "/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "not ready",
                        "reason": f"the trace store lacks 1 of this version's {len(MIGRATIONS)} migrations"}
    # the store's file removed (a volume gone): it does not answer; the reason names no path
    db.unlink()
    r = probe(port, "/readyz")
    assert (r.status_code, r.json()) == (503, {"status": "not ready", "reason": "the trace store does not answer"})
    assert str(tmp_path) not in r.text
    assert probe(port, "/healthz").status_code == 200  # alive all the while: restarting it would not help


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if found is None:
        if os.environ.get("CONDUCTOR_SKIP_NGINX") == "1":
            pytest.skip("CONDUCTOR_SKIP_NGINX=1")
        raise AssertionError("nginx is not installed (apt-get install nginx; `make test` installs it on a root "
                             "machine with apt-get): the round-robin test needs a real balancer")
    return found


def start_nginx(tmp_path: Path, upstream_ports: list[int]) -> tuple[subprocess.Popen[bytes], int, Path]:
    """deploy/nginx.conf with the replicas' and its own ports replaced; its access log names each request's
    upstream."""
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    port = free_port()
    names = iter(upstream_ports)
    conf = re.sub(r"server replica\d:8765", lambda _: f"server 127.0.0.1:{next(names)}", conf)
    conf = re.sub(r"listen 8080;", f"listen 127.0.0.1:{port};", conf)
    log = tmp_path / "access.log"
    conf = conf.replace("access_log /dev/stdout", f"access_log {log}").replace(
        "error_log /dev/stderr", f"error_log {tmp_path / 'error.log'}")
    (tmp_path / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([nginx_binary(), "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                             "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            return proc, port, log
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("nginx did not start")


async def test_mcp_client_and_v1_through_round_robin_over_stateless_replicas(
        env: dict[str, str], tmp_path: Path, stop: list[subprocess.Popen[bytes]]) -> None:
    a, port_a = start_http(env, "http", "--stateless")
    stop.append(a)
    b, port_b = start_http(env, "http", "--stateless")
    stop.append(b)
    nginx, port, log = start_nginx(tmp_path, [port_a, port_b])
    stop.append(nginx)
    log.write_text("")  # only the client's requests from here on
    heard: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append(message or "")

    async with Client(f"http://localhost:{port}/mcp") as c:
        run_id = await exercise(c)  # tools, plan, resume to completion, read the trace: request after request
        r = await c.call_tool("get_run", {"run_id": run_id})
        assert r.structured_content is not None and r.structured_content["status"] == "completed"
        # progress still streams on the request's own answer
        r = await c.call_tool("plan_workflow", {"task": "progress", "workflow": WORKFLOW})
        assert r.structured_content is not None
        r = await c.call_tool("resume", {"run_id": r.structured_content["run_id"], "wait_s": 30},
                              progress_callback=on_progress)
        assert r.structured_content is not None and r.structured_content["status"] == "completed"
    assert heard, "no progress notification came through the balancer"
    async with httpx.AsyncClient(base_url=f"http://localhost:{port}/v1", timeout=60) as http:
        for _ in range(2):
            resp = await http.post("/chat/completions", json={"model": "fast", "messages": [
                {"role": "user", "content": "Say hi."}]})
            assert resp.status_code == 200, resp.text
    lines = [line for line in log.read_text().splitlines() if "/mcp" in line or "/v1/" in line]
    upstreams = [line.rsplit("upstream=", 1)[1] for line in lines]
    assert all(" 20" in line for line in lines if '"POST /mcp' in line), lines  # every MCP request answered
    posts = [u for line, u in zip(lines, upstreams, strict=True) if '"POST /mcp' in line]
    assert len(posts) >= 8 and set(posts) == {f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"}
    # round robin: consecutive requests alternate between the two servers
    assert sum(x != y for x, y in itertools.pairwise(posts)) >= len(posts) // 2, posts
    assert {u for line, u in zip(lines, upstreams, strict=True) if "/v1/" in line} == set(posts)


async def test_sigterm_hands_runs_back_for_another_server_and_exits_within_grace(
        env: dict[str, str], server: ScriptedServer, stop: list[subprocess.Popen[bytes]]) -> None:
    """A and B share the store but not a host name, as two containers would: without the hand-back, B would
    refuse the run as another live process's until A's heartbeat is 30 s stale."""
    grace = 5.0
    server.set_latency(model_latency={"scripted-slow": 20.0})  # the slow step is in flight at the signal
    a, port_a = start_http({**env, "CONDUCTOR_HOST_ID": "replica-a", "CONDUCTOR_GRACE_S": str(grace)},
                           "http", "--stateless")
    stop.append(a)
    b, port_b = start_http({**env, "CONDUCTOR_HOST_ID": "replica-b"}, "http", "--stateless")
    stop.append(b)
    async with Client(f"http://127.0.0.1:{port_a}/mcp") as c:
        r = await c.call_tool("plan_workflow", {"task": "handover", "workflow": WORKFLOW})
        assert r.structured_content is not None
        run_id = str(r.structured_content["run_id"])
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 0.5})
        with anyio.fail_after(30):
            while r.structured_content is None or r.structured_content["steps"][0]["status"] != "completed":
                await anyio.sleep(0.1)
                r = await c.call_tool("get_run", {"run_id": run_id})
        assert r.structured_content["status"] == "running"
        assert r.structured_content["steps"][1]["status"] == "running"

        async def waiting_call() -> None:  # a client waiting on the run when the signal comes
            r = await c.call_tool("get_run", {"run_id": run_id, "wait_s": 60})
            assert r.structured_content is not None
            assert r.structured_content["status"] == "interrupted", r.structured_content

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting_call)
            await anyio.sleep(0.5)
            started = time.monotonic()
            a.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(a.wait, grace + 2)  # TimeoutExpired: it outlived its grace
    took = time.monotonic() - started
    assert took < grace + 1, took
    stderr = a.stderr.read().decode()  # type: ignore[union-attr]
    assert "1 run(s) handed back" in stderr, stderr
    server.set_latency(model_latency={})
    async with Client(f"http://127.0.0.1:{port_b}/mcp") as c:
        r = await c.call_tool("get_run", {"run_id": run_id})
        assert r.structured_content is not None and r.structured_content["status"] == "interrupted"
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 30})  # at once: no stale heartbeat to wait for
        assert r.structured_content is not None and r.structured_content["status"] == "completed", r
        trace = json.loads((await c.read_resource(f"conductor://runs/{run_id}")).contents[0].text)  # type: ignore[union-attr]
    assert server.ok_calls_for("Your subtask:\nDraft one") == 1  # done before the signal: never again
    assert [a["status"] for a in trace["steps"][1]["attempts"]] == ["cancelled", "ok"]
