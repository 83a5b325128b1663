"""Helpers shared by the MCP tests: a manifest on the scripted server, and the server's environment."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def write_manifest(tmp_path: Path, base_url: str, **extra: str) -> Path:
    path = tmp_path / "workers.yaml"
    lines = ["conductor: {gguf: bundled, max_steps: 3}", "workers:"]
    for wid, desc in (("strong", "strongest; final answers"), ("fast", "fast drafts"), ("slow", "slow expert")):
        lines += [f"  - id: {wid}", f"    model: openai/scripted-{wid}", f"    api_base: {base_url}",
                  f"    description: {desc}", "    timeout_s: 10"]
    path.write_text("\n".join(lines) + "\n")
    return path


def server_env(tmp_path: Path, manifest: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "OLLAMA_API_BASE"}
    env.update(CONDUCTOR_DB=str(tmp_path / "traces.db"), CONDUCTOR_WORKERS=str(manifest))
    return env


WORKFLOW = {"steps": [
    {"worker": "fast", "instruction": "Draft one", "access": "none"},
    {"worker": "slow", "instruction": "Draft two", "access": "none"},
    {"worker": "strong", "instruction": "Merge the drafts", "access": "all"},
]}


def stop_proc(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def require_npx(test: str) -> None:
    """`test` (the MCP Inspector CLI's, the conformance suite's) drives a third-party client through npx: a missing
    npx fails it (CI must run it), unless CONDUCTOR_SKIP_INSPECTOR=1 asks for a skip on purpose."""
    if os.environ.get("CONDUCTOR_SKIP_INSPECTOR") == "1":
        pytest.skip(f"CONDUCTOR_SKIP_INSPECTOR=1: {test} is skipped on request")
    if shutil.which("npx") is None:
        pytest.fail(f"npx (Node.js 20+ with npm) is missing, and {test} needs it: install Node.js and npm (`make "
                    "test` does so on a root machine with apt-get), or set CONDUCTOR_SKIP_INSPECTOR=1 to skip this "
                    "test on purpose", pytrace=False)
