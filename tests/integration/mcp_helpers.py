"""Helpers shared by the MCP tests: a manifest on the scripted server, and the server's environment."""

from __future__ import annotations

import os
from pathlib import Path


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
