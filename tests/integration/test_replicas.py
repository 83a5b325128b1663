"""Replicas as a load balancer runs them, with real server processes on one store, SQLite and PostgreSQL: the probes
(/healthz, /readyz, a 503 when the store is gone or lacks migrations); an MCP client, the openai SDK and /v1 through
nginx's round robin (deploy/nginx.conf) over two and three `--stateless` servers; SIGTERM (the runs handed back,
adopted at once by another server, the process gone within its grace period); and kill -9 with a step in flight
(the run adopted by a surviving server once its lease expires, no completed step paid again, and a client waiting
on another server sees it through)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import openai
import pytest
from mcp import Client

from conductor_mcp.models import PlanInfo, RunStatus, Workflow
from conductor_mcp.runs.engine import HANDED_BACK
from conductor_mcp.store import MIGRATIONS, open_store

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import WORKFLOW
from .test_mcp_transports import STRONG_TOKEN, exercise, free_port, start_http

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def probe(port: int, path: str, **kw: object) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10, **kw)  # type: ignore[arg-type]


def test_probes_answer_without_token_and_say_when_the_store_is_not_ready(
        env: dict[str, str], tmp_path: Path, stop: list[subprocess.Popen[bytes]]) -> None:
    # the server's look for orphaned runs comes often, and meets the store gone and unmigrated: it must outlive that
    env = {**env, "CONDUCTOR_TOKEN": STRONG_TOKEN, "CONDUCTOR_ADOPT_S": "0.1"}
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
    time.sleep(0.5)  # a few looks for orphaned runs on the missing store
    assert probe(port, "/healthz").status_code == 200  # alive all the while: restarting it would not help
    assert proc.poll() is None


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
    line = re.search(r"^( *)server replica1:8765(.*)$", conf, re.M)
    assert line is not None
    servers = "\n".join(f"{line[1]}server 127.0.0.1:{p}{line[2]}" for p in upstream_ports)
    conf = re.sub(r"(^ *server replica\d:8765.*\n)+", servers + "\n", conf, flags=re.M)
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


def start_replicas(env: dict[str, str], n: int, stop: list[subprocess.Popen[bytes]],
                   **extra: str) -> list[int]:
    """n stateless servers on env's store, each a different host as far as the store can tell (as containers
    are); their ports."""
    ports = []
    for i in range(n):
        proc, port = start_http({**env, "CONDUCTOR_HOST_ID": f"replica-{i}", **extra}, "http", "--stateless")
        stop.append(proc)
        ports.append(port)
    return ports


@pytest.mark.parametrize("backend,n", [("sqlite", 2), ("postgresql", 3)], indirect=["backend"])
async def test_mcp_client_and_openai_sdk_through_round_robin_over_stateless_replicas(
        env: dict[str, str], backend: str, n: int, tmp_path: Path, stop: list[subprocess.Popen[bytes]]) -> None:
    env = {**env, "CONDUCTOR_DB": backend}
    ports = start_replicas(env, n, stop)
    nginx, port, log = start_nginx(tmp_path, ports)
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
        r = await c.call_tool("solve", {"task": "Say hi.", "strategy": "single:fast", "wait_s": 30})
        assert r.structured_content is not None and r.structured_content["status"] == "completed"
    assert heard, "no progress notification came through the balancer"
    async with openai.AsyncOpenAI(base_url=f"http://localhost:{port}/v1", api_key="unused", max_retries=0) as sdk:
        for _ in range(n):
            done = await sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "Say hi."}])
            assert done.choices[0].message.content and done.choices[0].finish_reason == "stop"
        stream = await sdk.chat.completions.create(model="fast", stream=True,
                                                   messages=[{"role": "user", "content": "Say hi."}])
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        assert text
        models = await sdk.models.list()
        assert {"fast", "strong"} <= {m.id for m in models.data}
    lines = [line for line in log.read_text().splitlines() if "/mcp" in line or "/v1/" in line]
    upstreams = [line.rsplit("upstream=", 1)[1] for line in lines]
    assert all(" 20" in line for line in lines), lines  # every request answered
    posts = [u for line, u in zip(lines, upstreams, strict=True) if '"POST /mcp' in line]
    everyone = {f"127.0.0.1:{p}" for p in ports}
    assert len(posts) >= 8 and set(posts) == everyone
    # round robin: consecutive requests go to different servers
    assert sum(x != y for x, y in itertools.pairwise(posts)) >= len(posts) // 2, posts
    assert {u for line, u in zip(lines, upstreams, strict=True) if "/v1/" in line} == everyone


async def wait_for_step_in_flight(c: Client, run_id: str) -> None:
    """Until the run's first step is done and its second (20 s on the slow worker) is being called."""
    r = await c.call_tool("get_run", {"run_id": run_id})
    with anyio.fail_after(30):
        while r.structured_content is None or r.structured_content["steps"][0]["status"] != "completed":
            await anyio.sleep(0.1)
            r = await c.call_tool("get_run", {"run_id": run_id})
    assert r.structured_content["status"] == "running"
    assert r.structured_content["steps"][1]["status"] == "running"


async def start_run(port: int) -> str:
    async with Client(f"http://127.0.0.1:{port}/mcp") as c:
        r = await c.call_tool("plan_workflow", {"task": "handover", "workflow": WORKFLOW})
        assert r.structured_content is not None
        run_id = str(r.structured_content["run_id"])
        await c.call_tool("resume", {"run_id": run_id, "wait_s": 0.5})
        await wait_for_step_in_flight(c, run_id)
    return run_id


def assert_paid_once(server: ScriptedServer, trace: dict[str, object], owners: set[str]) -> None:
    """Step 0 was done before the replica went: never called again; step 1's call in flight ended with it."""
    assert server.ok_calls_for("Your subtask:\nDraft one") == 1
    assert server.ok_calls_for("Your subtask:\nMerge the drafts") == 1
    steps = trace["steps"]
    assert isinstance(steps, list)
    assert [a["status"] for a in steps[0]["attempts"]] == ["ok"]
    assert [a["status"] for a in steps[1]["attempts"]][-1] == "ok"
    assert trace["owner"] is None or str(trace["owner"]).split(":")[0] in owners


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_sigterm_hands_runs_back_and_another_server_adopts_them_at_once(
        env: dict[str, str], backend: str, server: ScriptedServer, stop: list[subprocess.Popen[bytes]]) -> None:
    """A and B share the store but not a host name, as two containers would: without the hand-back, B would wait
    for A's lease (30 s) to expire before adopting the run."""
    grace = 5.0
    env = {**env, "CONDUCTOR_DB": backend, "CONDUCTOR_ADOPT_S": "0.5"}
    server.set_latency(model_latency={"scripted-slow": 20.0})  # the slow step is in flight at the signal
    a, port_a = start_http({**env, "CONDUCTOR_HOST_ID": "replica-a", "CONDUCTOR_GRACE_S": str(grace)},
                           "http", "--stateless")
    stop.append(a)
    b, port_b = start_http({**env, "CONDUCTOR_HOST_ID": "replica-b"}, "http", "--stateless")
    stop.append(b)
    run_id = await start_run(port_a)
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "get_run", "arguments": {"run_id": run_id, "wait_s": 60}}}
    headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
    async with httpx.AsyncClient(timeout=30) as http, \
            http.stream("POST", f"http://127.0.0.1:{port_a}/mcp", json=call, headers=headers) as waiting:
        # a client waiting on the run where it runs when the signal comes (its answer's headers are here: A has it)
        assert waiting.status_code == 200
        started = time.monotonic()
        a.send_signal(signal.SIGTERM)
        server.set_latency(model_latency={})  # for B's call: A's is in flight already
        body = (await waiting.aread()).decode()
        await anyio.to_thread.run_sync(a.wait, grace + 2)  # TimeoutExpired: it outlived its grace
    answers = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]
    answer = next((m for m in answers if m.get("id") == 7), None)
    assert answer is not None, body
    # answered, not cut off: handed back, or already adopted by B
    assert answer["result"]["structuredContent"]["status"] in ("interrupted", "running", "completed"), answer
    took = time.monotonic() - started
    assert took < grace + 1, took
    stderr = a.stderr.read().decode()  # type: ignore[union-attr]
    assert "1 run(s) handed back" in stderr, stderr
    async with Client(f"http://127.0.0.1:{port_b}/mcp") as c:
        # nobody calls resume: B adopts the handed-back run by itself at its next look, not after a lease expires
        r = await c.call_tool("get_run", {"run_id": run_id, "wait_s": 30})
        assert r.structured_content is not None and r.structured_content["status"] == "completed", r
        trace = json.loads((await c.read_resource(f"conductor://runs/{run_id}")).contents[0].text)  # type: ignore[union-attr]
    assert time.monotonic() - started < grace + 3
    assert_paid_once(server, trace, {"replica-b"})
    assert [a["status"] for a in trace["steps"][1]["attempts"]] == ["cancelled", "ok"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_kill_9_with_a_step_in_flight_the_run_completes_on_another_replica(
        env: dict[str, str], backend: str, server: ScriptedServer, stop: list[subprocess.Popen[bytes]]) -> None:
    """Three replicas; the one running the run is killed with a worker call in flight. Its lease (3 s here)
    expires in the database's clock, the two survivors race to adopt the run, one wins and carries it on from the
    first unfinished step, and a client waiting on a survivor sees the run through to its end."""
    lease_s = 3.0
    env = {**env, "CONDUCTOR_DB": backend, "CONDUCTOR_STALE_AFTER_S": str(lease_s), "CONDUCTOR_ADOPT_S": "0.5"}
    server.set_latency(model_latency={"scripted-slow": 20.0})
    ports = start_replicas(env, 3, stop)
    victim = stop[0]
    run_id = await start_run(ports[0])
    heard: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append(message or "")

    async with Client(f"http://127.0.0.1:{ports[1]}/mcp") as c:
        async with anyio.create_task_group() as tg:
            result: dict[str, object] = {}

            async def waiting_call() -> None:
                r = await c.call_tool("get_run", {"run_id": run_id, "wait_s": 60}, progress_callback=on_progress)
                assert r.structured_content is not None
                result.update(r.structured_content)

            tg.start_soon(waiting_call)
            await anyio.sleep(0.5)
            victim.kill()
            killed = time.monotonic()
            server.set_latency(model_latency={})
        took = time.monotonic() - killed
        trace = json.loads((await c.read_resource(f"conductor://runs/{run_id}")).contents[0].text)  # type: ignore[union-attr]
    assert result["status"] == "completed", result
    assert lease_s < took < lease_s + 5, took  # not before the lease expired; within it plus a look or two
    assert_paid_once(server, trace, {"replica-1", "replica-2"})
    assert [a["status"] for a in trace["steps"][1]["attempts"]] == ["interrupted", "ok"]
    assert any("step 1" in m and "completed" in m for m in heard), heard  # the waiting call heard the adopter
    assert any("step 2" in m for m in heard), heard


RACER = """
import sys, time
from conductor_mcp.errors import RunStateError
from conductor_mcp.store import open_store
store = open_store(sys.argv[1])
while time.time() < float(sys.argv[3]):  # every racer claims at the same instant
    pass
try:
    print("won", store.claim(sys.argv[2])[0].epoch)
except RunStateError as exc:
    print("lost", exc)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_replicas_racing_to_adopt_one_run_one_wins(backend: str, tmp_path: Path) -> None:
    """Four processes, each a different host as far as the store can tell, claim a handed-back run at the same
    instant: the store lets exactly one have it; the others are told another live process runs it."""
    store = open_store(backend)
    try:
        run_id = store.create_run("race", Workflow.model_validate(WORKFLOW), PlanInfo(source="host", planner="host"))
        lease, _ = store.claim(run_id)
        store.finish_run(lease, RunStatus.RUNNING, error=HANDED_BACK)  # as a stopping server leaves it
        assert store.orphaned_runs() == [run_id]
        go = time.time() + 4  # after the racers' imports
        racers = [subprocess.Popen([sys.executable, "-c", RACER, backend, run_id, str(go)],
                                   env={**os.environ, "CONDUCTOR_HOST_ID": f"racer-{i}"},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
        outcomes = [r.communicate(timeout=60)[0].strip() for r in racers]
        assert sorted(o.split()[0] for o in outcomes) == ["lost", "lost", "lost", "won"], outcomes
        assert f"won {lease.epoch + 1}" in outcomes
        assert all("another live process" in o for o in outcomes if o.startswith("lost")), outcomes
        assert str(store.get_run(run_id).owner).startswith("racer-") and store.orphaned_runs() == []
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_heartbeats_keep_a_long_step_owned_and_stop_with_the_run(
        tmp_path: Path, backend: str, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step lasting four leases: the owner's heartbeat (a sixth of the lease) keeps renewing the lease, so no
    replica ever sees the run orphaned; once the run ends the heartbeat stops writing at once."""
    from conductor_mcp.runs.run_manager import RunManager

    from .mcp_helpers import write_manifest

    monkeypatch.setenv("CONDUCTOR_STALE_AFTER_S", "0.6")  # a heartbeat every 0.1 s
    server.set_latency(model_latency={"scripted-slow": 2.4})
    other = open_store(backend)  # another replica's view of the same database
    runs = RunManager(write_manifest(tmp_path, server.base_url), backend)
    seen: list[float] = []
    async with runs.running():
        handle = await runs.solve("a long step", workflow={"steps": [{"worker": "slow", "instruction": "think"}]})
        while not handle.done.is_set():
            await anyio.sleep(0.15)
            assert handle.run_id not in other.orphaned_runs()
            beat = other.get_run(handle.run_id).heartbeat_at if not handle.planning else None
            if beat is not None:
                seen.append(beat)
        ended = other.get_run(handle.run_id)
        await anyio.sleep(0.5)  # no heartbeat outlives its run
        assert ended.status == RunStatus.COMPLETED and other.get_run(handle.run_id).heartbeat_at == ended.heartbeat_at
    assert len(set(seen)) >= 10, seen  # renewed about every 0.1 s through the 2.4 s step
    other.close()
