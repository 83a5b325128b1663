"""Workers refused the way real providers refuse, over real HTTP and litellm: a 401 that echoes the key,
404 unknown model, context length exceeded, an exhausted quota, and a port where nothing listens.

Requests are counted on the server's side, so "not retried" means the provider saw one request.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

from conductor_mcp.models import Manifest, RunStatus, WorkerSpec
from conductor_mcp.planners.remote import RemotePlanner
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.resilience import RetryPolicy
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.surfaces.mcp_server import build_server
from conductor_mcp.workers.registry import build_registry

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import server_env

pytestmark = pytest.mark.anyio
POLICY = RetryPolicy(attempts_per_worker=3, base_delay_s=0.01, max_delay_s=0.05)
# a revoked key, shaped like a real one, in a variable whose name says nothing about keys
SECRET = "sk-proj-conductorTEST0123456789abcdefXYZ"
KEY_ENV = "CONDUCTOR_TEST_WORKER_AUTH"


def files_bytes(folder: Path) -> bytes:
    """Every byte of the store: the database, its WAL and shared-memory files."""
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


async def test_echoed_key_is_sent_but_never_kept(tmp_path: Path, server: ScriptedServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the provider expects another key and quotes the one it got: "Incorrect API key provided: Bearer sk-..."
    server.set_api_key("sk-the-key-the-provider-wants-000000")
    monkeypatch.setenv(KEY_ENV, SECRET)
    db = tmp_path / "db" / "traces.db"
    db.parent.mkdir()
    manifest = tmp_path / "workers.yaml"
    manifest.write_text(f"conductor: {{gguf: bundled, max_steps: 3}}\nworkers:\n  - id: keyed\n"
                        f"    model: openai/scripted-keyed\n    api_base: {server.base_url}\n"
                        f"    api_key_env: {KEY_ENV}\n    timeout_s: 10\n")
    seen: list[str] = []
    async with Client(build_server(manifest, db)) as c:
        r = await c.call_tool("solve", {"task": "use the key", "strategy": "single:keyed", "wait_s": 30})
        assert r.structured_content is not None
        run_id = str(r.structured_content["run_id"])
        assert r.structured_content["status"] == "failed"
        seen.append(json.dumps(r.structured_content) + repr(r.content))
        r = await c.call_tool("get_run", {"run_id": run_id})
        seen.append(json.dumps(r.structured_content) + repr(r.content))
        r = await c.call_tool("run_step", {"run_id": run_id, "step": 0})
        seen.append(json.dumps(r.structured_content) + repr(r.content))
        for uri in ("conductor://runs", f"conductor://runs/{run_id}", f"conductor://runs/{run_id}/steps/0"):
            seen.append(repr(await c.read_resource(uri)))
    env = {**server_env(tmp_path, manifest), "CONDUCTOR_DB": str(db), KEY_ENV: SECRET}
    for args in (["runs", "--json"], ["show", run_id, "--json"]):
        with anyio.fail_after(60):
            proc = await anyio.run_process([sys.executable, "-m", "conductor_mcp", *args], env=env, check=False)
        assert proc.returncode == 0, proc.stderr
        seen.append(proc.stdout.decode() + proc.stderr.decode())
    # the key was sent on every call, and the provider refused each once (a 401 is not retried)
    calls = server.calls()
    assert [c.authorization for c in calls] == [f"Bearer {SECRET}"] * 2
    assert [c.status for c in calls] == [401, 401]
    everything = "\n".join(seen)
    assert "AuthenticationError 401" in everything and "Bearer [REDACTED]" in everything
    assert SECRET not in everything
    assert SECRET.encode() not in files_bytes(db.parent)


async def test_conductor_error_with_echoed_key_is_redacted(server: ScriptedServer, store: Store,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    server.set_api_key("sk-the-key-the-provider-wants-000000")
    monkeypatch.setenv(KEY_ENV, SECRET)
    worker = WorkerSpec(id="a", model="openai/scripted-a", api_base=server.base_url, timeout_s=5)
    planner = RemotePlanner("openai/conductor-model", api_base=server.base_url, api_key_env=KEY_ENV)
    engine = Engine(build_registry(Manifest(workers=[worker]), "t"), store, planner=planner, policy=POLICY)
    run = await engine.plan("plan it")
    assert run.plan.source == "fallback" and len(run.plan.errors) == 2
    assert all("Bearer [REDACTED]" in e and SECRET not in e for e in run.plan.errors)
    assert all(c.authorization == f"Bearer {SECRET}" for c in server.calls())
    store.close()
    assert SECRET.encode() not in files_bytes(Path(store.location).parent)


@pytest.mark.parametrize(("kind", "expected"), [
    ("401", "AuthenticationError 401"),
    ("404", "NotFoundError 404"),
    ("context_length", "ContextWindowExceededError 400"),
    ("quota", "RateLimitError 429: insufficient_quota"),
])
async def test_permanent_refusal_is_not_retried_and_falls_back(server: ScriptedServer, store: Store, kind: str,
                                                                expected: str) -> None:
    server.set_faults(fail_models={"scripted-a": kind}, retry_after=0.01)
    workers = [WorkerSpec(id="a", model="openai/scripted-a", api_base=server.base_url, timeout_s=5, fallback="b"),
               WorkerSpec(id="b", model="openai/scripted-b", api_base=server.base_url, timeout_s=5)]
    engine = Engine(build_registry(Manifest(workers=workers), "t"), store, policy=POLICY)
    run = await engine.plan(f"refused {kind}", workflow={"steps": [{"worker": "a", "instruction": "go"}]})
    run = await RunManager(engine=engine).drive(run.id)
    assert run.status == RunStatus.COMPLETED
    attempts = run.steps[0].attempts
    assert [(a.worker, a.status) for a in attempts] == [("a", "error"), ("b", "ok")]
    assert expected in (attempts[0].error or "")
    # the provider saw one request for `a`: waiting cannot fix a bad key, a missing model, a long prompt
    # or an exhausted quota, so none of them was tried again
    assert server.stats()["by_model"] == {"scripted-a": 1, "scripted-b": 1}


async def test_connection_refused_is_named_and_retried(store: Store) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}/v1"
    spec = WorkerSpec(id="a", model="openai/scripted-a", api_base=base, timeout_s=5)
    engine = Engine(build_registry(Manifest(workers=[spec]), "t"), store, policy=POLICY)
    run = await engine.plan("nobody home", workflow={"steps": [{"worker": "a", "instruction": "go"}]})
    run = await RunManager(engine=engine).drive(run.id)
    assert run.status == RunStatus.FAILED
    errors = [a.error for a in run.steps[0].attempts]
    assert errors == [f"a: connection refused at {base}"] * 3  # not "InternalServerError 500"; retried

