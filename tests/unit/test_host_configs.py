"""The host configurations we ship parse and start the server the way the README says."""

from __future__ import annotations

import json
from pathlib import Path

HOSTS = Path(__file__).parents[2] / "manifests" / "hosts"


def test_stdio_host_configs_run_conductor_mcp_serve() -> None:
    for name in ("claude_desktop_config.json", "claude_code.mcp.json", "cursor.mcp.json", "vscode.mcp.json"):
        data = json.loads((HOSTS / name).read_text())
        servers = data.get("mcpServers") or data["servers"]
        entry = servers["conductor"]
        assert entry["command"].endswith("/.venv/bin/conductor-mcp") and entry["args"] == ["serve"], name


def test_http_host_config() -> None:
    entry = json.loads((HOSTS / "streamable_http.json").read_text())["mcpServers"]["conductor"]
    assert entry["url"].endswith("/mcp") and entry["headers"]["Authorization"].startswith("Bearer ")
