"""Tasks in any script: CJK, emoji, right-to-left and combining marks survive planning by the real bundled
conductor, the worker round trip over HTTP, the store, the CLI's JSON and the MCP tools, byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from conductor_mcp.surfaces.mcp_server import build_server

from ..servers.openai_server import ScriptedServer

# Chinese, Japanese, Korean, an emoji with a skin-tone modifier and a ZWJ family, Arabic, a combining
# accent (e + U+0301) and a character outside the Basic Multilingual Plane
ANSWER = "答えは四十二です 정답 👍🏽 👨‍👩‍👧 الجواب e\u0301 𝔸"
TASK = f"请计算六乘以七，并用日语回答。\nREPLY: {ANSWER}"


@pytest.fixture
def env(tmp_path: Path, server: ScriptedServer) -> dict[str, str]:
    manifest = tmp_path / "workers.yaml"
    manifest.write_text(f"""
conductor: {{gguf: bundled, max_steps: 2}}
workers:
  - id: multi
    model: openai/scripted-multi
    api_base: {server.base_url}
    description: 会说多种语言的模型 (speaks many languages)
""", encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "OLLAMA_API_BASE"}
    return {**base, "CONDUCTOR_DB": str(tmp_path / "t.db"), "CONDUCTOR_WORKERS": str(manifest),
            "PYTHONIOENCODING": "utf-8"}


def cli(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "conductor_mcp", *args], capture_output=True, env=env,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    return proc.stdout.decode("utf-8")  # strict: any mangled byte fails here


def test_cjk_task_through_cli_and_store(env: dict[str, str], server: ScriptedServer) -> None:
    solved = json.loads(cli("solve", TASK, "--json", env=env))
    assert solved["status"] == "completed" and solved["answer"] == ANSWER
    assert {s["worker"] for s in solved["workflow"]["steps"]} == {"multi"}
    trace = json.loads(cli("show", solved["run_id"], "--json", env=env))
    assert trace["task"] == TASK.strip() and trace["steps"][-1]["output"] == ANSWER
    assert ANSWER in cli("show", solved["run_id"], env=env)
    # what the worker was sent: the whole task, unmangled
    calls = server.calls()
    assert calls and all(TASK.strip() in c.last_user for c in calls)


@pytest.mark.anyio
async def test_cjk_task_over_mcp(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("CONDUCTOR_DB", "CONDUCTOR_WORKERS"):
        monkeypatch.setenv(key, env[key])
    async with Client(build_server()) as client:
        result = await client.call_tool("solve", {"task": TASK, "wait_s": 120})
        assert not result.is_error, result.content
        out = result.structured_content
        assert out is not None and out["status"] == "completed" and out["answer"] == ANSWER
        got = await client.call_tool("get_run", {"run_id": out["run_id"]})
        assert got.structured_content is not None and got.structured_content["answer"] == ANSWER
        resource = await client.read_resource(out["trace_uri"])
        trace = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
        assert trace["task"] == TASK.strip() and trace["steps"][-1]["output"] == ANSWER
