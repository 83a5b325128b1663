"""The console script as a user runs it: real processes, a real manifest, the real bundled conductor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..servers.openai_server import ScriptedServer


def cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "conductor_mcp", *args], capture_output=True, text=True,
                          env=env, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


@pytest.fixture
def env(tmp_path: Path, server: ScriptedServer) -> dict[str, str]:
    manifest = tmp_path / "workers.yaml"
    manifest.write_text(f"""
conductor: {{gguf: bundled, max_steps: 3}}
workers:
  - id: strong
    model: openai/scripted-strong
    api_base: {server.base_url}
    description: strongest; final answers
  - id: keyed
    model: openai/scripted-keyed
    api_base: {server.base_url}
    api_key_env: CONDUCTOR_TEST_UNSET_KEY
""")
    base = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "OLLAMA_API_BASE"}
    return {**base, "CONDUCTOR_DB": str(tmp_path / "t.db"), "CONDUCTOR_WORKERS": str(manifest)}


def test_solve_json_runs_show_resume(env: dict[str, str]) -> None:
    out = cli("solve", "What is 2 + 2?\nREPLY: 4", "--json", env=env)
    result: dict[str, Any] = json.loads(out.stdout)  # one JSON object, nothing else on stdout
    assert {"run_id", "status", "answer", "workflow", "usage"} <= result.keys()
    assert result["status"] == "completed" and result["answer"] == "4"
    assert all(s["worker"] == "strong" for s in result["workflow"]["steps"])  # `keyed` is unavailable
    assert result["usage"]["calls"] == len(result["workflow"]["steps"]) + 1
    runs = cli("runs", env=env).stdout
    assert result["run_id"] in runs and "completed" in runs
    trace = json.loads(cli("show", result["run_id"], "--json", env=env).stdout)
    assert trace["steps"][0]["attempts"][0]["status"] == "ok" and trace["task"].startswith("What is 2 + 2?")
    assert "answer:\n4" in cli("show", result["run_id"], env=env).stdout
    again = json.loads(cli("resume", result["run_id"], "--json", env=env).stdout)
    assert again["status"] == "completed" and again["usage"] == result["usage"]  # nothing re-bought


def test_plan_then_resume(env: dict[str, str], server: ScriptedServer) -> None:
    planned = json.loads(cli("plan", "Say hello.\nREPLY: hello", "--json", env=env).stdout)
    assert planned["status"] == "planned" and server.stats()["ok"] == 0
    done = json.loads(cli("resume", planned["run_id"], "--json", env=env).stdout)
    assert done["status"] == "completed" and done["answer"] == "hello"


def test_doctor(env: dict[str, str]) -> None:
    text = cli("doctor", env=env).stdout
    assert "strong" in text and "unavailable: CONDUCTOR_TEST_UNSET_KEY is not set" in text
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in text and "GPU backend" in text and "t.db" in text
    report = json.loads(cli("doctor", "--json", env=env).stdout)
    assert report["llama_cpp_gpu_backend"] in (True, False)
    assert [w["available"] for w in report["workers"]] == [True, False]


def test_errors_are_clear(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers:\n  - {id: a, model: openai/x, fallback: ghost}\n")
    proc = cli("doctor", "--workers", str(bad), env=env, check=False)
    assert proc.returncode == 1 and proc.stdout == ""  # a runtime error: the command line itself is right
    assert f"{bad}: worker 'a' (workers[0]): field 'fallback'" in proc.stderr
    proc = cli("show", "no-such-run", env=env, check=False)
    assert proc.returncode == 2 and "no run 'no-such-run'" in proc.stderr
    proc = cli("solve", "   ", env=env, check=False)
    assert proc.returncode == 2 and "task: empty" in proc.stderr


def test_embedded_default_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and k not in ("OLLAMA_API_BASE", "CONDUCTOR_WORKERS")}
    env["CONDUCTOR_DB"] = str(tmp_path / "d.db")
    result = json.loads(cli("solve", "Name a colour of the sky.", "--json", "--max-steps", "2", env=env).stdout)
    assert result["status"] == "completed" and result["answer"].strip()
    assert {s["worker"] for s in result["workflow"]["steps"]} == {"smollm2-135m"}
    assert result["usage"]["cost_usd"] == 0.0


def test_solve_shows_planning_progress(env: dict[str, str]) -> None:
    # a plan on a busy CPU can take a minute: the CLI says it is planning, and how far, before any step
    err = cli("solve", "Say hi.\nREPLY: hi", env=env).stderr
    lines = err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("planning with "))
    planned = next(i for i, line in enumerate(lines) if line.startswith("run ") and ": planned " in line)
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step 0"))
    assert start < planned < first_step, err
