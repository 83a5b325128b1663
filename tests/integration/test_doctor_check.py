"""`doctor --check` as a user runs it: the real CLI calling workers over real HTTP (and the bundled GGUF)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from ..servers.openai_server import ScriptedServer

RIGHT_KEY = "sk-right-4f1d2c3b5a69788796a5b4c3"
WRONG_KEY = "sk-wrong-0a9b8c7d6e5f4a3b2c1d0e9f"


def doctor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conductor_mcp", "doctor", *args], capture_output=True,
                          text=True, env=env, timeout=240)


def closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(tmp_path: Path, manifest: str) -> dict[str, str]:
    path = tmp_path / "workers.yaml"
    path.write_text(manifest)
    base = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "OLLAMA_API_BASE"}
    return {**base, "CONDUCTOR_DB": str(tmp_path / "t.db"), "CONDUCTOR_WORKERS": str(path),
            "GOOD_KEY": RIGHT_KEY, "BAD_KEY": WRONG_KEY}


def test_check_reports_a_wrong_key_and_a_dead_server(tmp_path: Path, server: ScriptedServer) -> None:
    server.set_api_key(RIGHT_KEY)  # a wrong key gets a 401 that quotes the header it was sent
    env = environment(tmp_path, f"""
conductor: {{model: openai/scripted-planner, api_base: {server.base_url}, api_key_env: GOOD_KEY}}
workers:
  - {{id: good, model: openai/scripted-good, api_base: {server.base_url}, api_key_env: GOOD_KEY,
     params: {{max_tokens: 2048}}}}
  - {{id: wrong-key, model: openai/scripted-wrong, api_base: {server.base_url}, api_key_env: BAD_KEY}}
  - {{id: dead, model: openai/scripted-dead, api_base: "http://127.0.0.1:{closed_port()}/v1",
     api_key_env: GOOD_KEY}}
  - {{id: no-key, model: openai/scripted-nokey, api_base: {server.base_url}, api_key_env: CONDUCTOR_TEST_UNSET}}
""")
    proc = doctor("--check", "--json", env=env)
    assert proc.returncode == 1, proc.stderr
    checks = {c["id"]: c for c in json.loads(proc.stdout)["checks"]}
    assert {k: c["status"] for k, c in checks.items()} == {
        "good": "ok", "wrong-key": "failed", "dead": "failed", "no-key": "skipped", "conductor": "ok"}
    assert "401" in checks["wrong-key"]["detail"] and "AuthenticationError" in checks["wrong-key"]["detail"]
    assert "connection refused" in checks["dead"]["detail"]
    assert "CONDUCTOR_TEST_UNSET is not set" in checks["no-key"]["detail"]
    # the server saw the wrong key (and echoed it back): none of it reaches the user
    assert any(c.authorization == f"Bearer {WRONG_KEY}" for c in server.calls())
    assert WRONG_KEY not in proc.stdout + proc.stderr and RIGHT_KEY not in proc.stdout + proc.stderr
    # one call per worker that reaches the server, each capped at one token whatever the worker's params say
    calls = server.calls()
    assert sorted(c.model for c in calls) == ["scripted-good", "scripted-planner", "scripted-wrong"]
    assert {c.max_tokens for c in calls} == {1}

    text = doctor("--check", env=env)
    assert text.returncode == 1
    assert "2 failed: wrong-key, dead" in text.stdout and WRONG_KEY not in text.stdout + text.stderr


def test_check_passes_when_every_worker_answers(tmp_path: Path, server: ScriptedServer) -> None:
    env = environment(tmp_path, f"""
workers:
  - {{id: remote, model: openai/scripted-remote, api_base: {server.base_url}}}
  - {{id: local, gguf: bundled}}
  - {{id: no-key, model: openai/scripted-nokey, api_key_env: CONDUCTOR_TEST_UNSET}}
""")
    proc = doctor("--check", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.split("checks (")[1].splitlines()[1:]}
    assert rows == {"remote": "ok", "local": "ok", "no-key": "skipped"}  # an unset key is no failure
    assert [c.model for c in server.calls()] == ["scripted-remote"]
    # without --check nothing is called
    server.reset_stats()
    assert doctor(env=env).returncode == 0 and server.calls() == []


def test_check_runs_a_program_on_each_python_worker(tmp_path: Path, server: ScriptedServer) -> None:
    env = environment(tmp_path, f"""
workers:
  - {{id: remote, model: openai/scripted-remote, api_base: {server.base_url}}}
  - {{id: py, kind: python, timeout_s: 5}}
""")
    proc = doctor("--check", "--json", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    checks = {c["id"]: c for c in report["checks"]}
    assert checks["py"]["status"] == "ok" and "ran a program in its sandbox" in checks["py"]["detail"]
    assert "network: deny" in checks["py"]["detail"]
    py = next(w for w in report["workers"] if w["id"] == "py")
    assert py["backend"] == "python sandbox, network deny" and py["available"]
