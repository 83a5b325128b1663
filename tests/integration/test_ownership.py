"""Two real processes on one trace database: a paused owner is never re-bought or overwritten.

Process A (`mcp-conductor resume`) runs a four-step chain against the scripted worker server and is
stopped with SIGSTOP mid-call. Process B tries to take the run over. On one host, A's pid and start
time say it lives, so B is refused however old A's heartbeat is. Across hosts only the heartbeat can
tell, so B takes over; when A is continued, every write it tries is fenced by the lease and it makes
no further worker call. The worker server counts the calls per step.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from conductor_mcp.models import Manifest, RunStatus, StepStatus, WorkerSpec
from conductor_mcp.runs.engine import Engine
from conductor_mcp.store import Store
from conductor_mcp.workers.registry import build_registry

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import server_env

STEPS = 4
LATENCY_S = 1.0


def chain(server: ScriptedServer, tmp_path: Path, tag: str) -> tuple[dict[str, str], Store, str]:
    """A planned four-step chain (each step sees the one before) and the environment of a CLI process."""
    manifest = tmp_path / "w.yaml"
    manifest.write_text(f"workers:\n  - {{id: a, model: openai/scripted-a, api_base: '{server.base_url}',"
                        " timeout_s: 30}\n")
    env = server_env(tmp_path, manifest)
    store = Store(env["CONDUCTOR_DB"])
    spec = WorkerSpec(id="a", model="openai/scripted-a", api_base=server.base_url, timeout_s=30)
    engine = Engine(build_registry(Manifest(workers=[spec]), "own"), store)
    wf: dict[str, Any] = {"steps": [{"worker": "a", "instruction": f"{tag} step {i}",
                                     "access": [i - 1] if i else "none"} for i in range(STEPS)]}
    run_id = anyio.run(functools.partial(engine.plan, f"{tag} task", workflow=wf)).id
    return env, store, run_id


def start(env: dict[str, str], run_id: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "conductor_mcp", "resume", run_id, "--json"],
                            env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_after_first_step(proc: subprocess.Popen[str], store: Store, run_id: str,
                          server: ScriptedServer) -> None:
    """SIGSTOP the owner once step 0 is committed and step 1's request has reached the server."""
    deadline = time.monotonic() + 60
    while (store.get_run(run_id).steps[0].status != StepStatus.COMPLETED
           or server.stats(include_calls=False)["in_flight"] == 0):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "step 0 never completed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGSTOP)


def calls_per_step(server: ScriptedServer, tag: str) -> list[int]:
    return [server.ok_calls_for(f"Your subtask:\n{tag} step {i}") for i in range(STEPS)]


def test_a_paused_owner_on_this_host_is_not_taken_over(tmp_path: Path, server: ScriptedServer) -> None:
    server.set_latency(latency_s=LATENCY_S)
    env, store, run_id = chain(server, tmp_path, "pause")
    fast_stale = {"CONDUCTOR_STALE_AFTER_S": "1"}  # a heartbeat is stale after 1 s: only the pid can tell
    a = start(env, run_id, **fast_stale)
    try:
        stop_after_first_step(a, store, run_id, server)
        time.sleep(2.5)  # A's heartbeat is now well past stale
        assert time.time() - (store.get_run(run_id).heartbeat_at or 0) > 1
        b = start(env, run_id, **fast_stale)
        _, err = b.communicate(timeout=60)
        assert b.returncode != 0 and "is running in another" in err, err
        assert store.get_run(run_id).status == RunStatus.RUNNING  # still A's
    finally:
        os.kill(a.pid, signal.SIGCONT)
    _, err = a.communicate(timeout=60)
    assert a.returncode == 0, err
    run = store.get_run(run_id)
    assert run.status == RunStatus.COMPLETED
    assert calls_per_step(server, "pause") == [1] * STEPS  # nothing bought twice
    store.close()


def test_an_owner_taken_over_across_hosts_is_fenced(tmp_path: Path, server: ScriptedServer) -> None:
    server.set_latency(latency_s=LATENCY_S)
    env, store, run_id = chain(server, tmp_path, "fence")
    stale = {"CONDUCTOR_STALE_AFTER_S": "2"}
    a = start(env, run_id, CONDUCTOR_HOST_ID="host-a", **stale)
    try:
        stop_after_first_step(a, store, run_id, server)
        time.sleep(3.0)  # past stale: from another host, A looks gone
        b = start(env, run_id, CONDUCTOR_HOST_ID="host-b", **stale)
        _, err_b = b.communicate(timeout=60)
        assert b.returncode == 0, err_b
        after_b = store.get_run(run_id)
        assert after_b.status == RunStatus.COMPLETED
    finally:
        os.kill(a.pid, signal.SIGCONT)
    _, err_a = a.communicate(timeout=60)
    assert a.returncode != 0 and "taken over" in err_a  # A found out, and stopped
    run = store.get_run(run_id)
    assert run.status == RunStatus.COMPLETED and run.answer == after_b.answer  # B's result stands
    assert [s.output for s in run.steps] == [s.output for s in after_b.steps]
    calls = calls_per_step(server, "fence")
    # step 0 was done before the pause; step 1 was in A's hands when it stopped, so B had to call it
    # again; nothing after that was called by A
    assert calls == [1, 2, 1, 1], calls
    assert [[a.status for a in s.attempts].count("ok") for s in run.steps] == [1] * STEPS
    store.close()
