"""The host configurations and the MCP Registry's server.json start the installed command the way the README says."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from conductor_mcp import __version__

ROOT = Path(__file__).parents[2]
HOSTS = ROOT / "manifests" / "hosts"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
COMMAND = "mcp-conductor"  # on PyPI, `conductor-mcp` is another project's distribution and command


def test_the_distribution_and_its_command_are_mcp_conductor() -> None:
    assert PROJECT["name"] == COMMAND and PROJECT["version"] == __version__
    # `uvx mcp-conductor` runs the script named like the package. No `conductor-mcp`: the other project's command,
    # which would make `uv tool install` refuse one of the two
    assert PROJECT["scripts"] == {COMMAND: "conductor_mcp.surfaces.cli:main"}


def test_stdio_host_configs_run_the_installed_command() -> None:
    for name in ("claude_desktop_config.json", "claude_code.mcp.json", "cursor.mcp.json", "vscode.mcp.json"):
        data = json.loads((HOSTS / name).read_text())
        servers = data.get("mcpServers") or data["servers"]
        entry = servers["conductor"]
        assert entry["command"] == COMMAND and entry["args"] == ["serve"], name
        assert ".venv" not in json.dumps(entry), name


def test_http_host_config() -> None:
    entry = json.loads((HOSTS / "streamable_http.json").read_text())["mcpServers"]["conductor"]
    assert entry["url"].endswith("/mcp") and entry["headers"]["Authorization"].startswith("Bearer ")


def test_server_json_for_the_mcp_registry() -> None:
    """The rules of the registry's schema (2025-12-11) that this file can break, and what the registry checks
    on publishing: the PyPI package's README carries `mcp-name: NAME`, and the versions are the package's."""
    server = json.loads((ROOT / "server.json").read_text())
    assert server["$schema"] == "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
    assert re.fullmatch(r"[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+", server["name"]) and 3 <= len(server["name"]) <= 200
    assert server["name"].startswith("io.github.") and server["name"].endswith(f"/{COMMAND}")
    assert 1 <= len(server["description"]) <= 100 and 1 <= len(server.get("title", "x")) <= 100
    assert server["version"] == __version__
    assert server["repository"]["source"] == "github" and server["repository"]["url"].startswith("https://github.com/")
    (package,) = server["packages"]
    assert package["registryType"] == "pypi" and package["registryBaseUrl"] == "https://pypi.org"
    assert package["identifier"] == PROJECT["name"] and package["version"] == __version__
    assert package["transport"] == {"type": "stdio"} and package["runtimeHint"] == "uvx"
    assert package["packageArguments"] == [{"type": "positional", "value": "serve"}]
    for var in package["environmentVariables"]:
        assert set(var) <= {"name", "description", "format", "isRequired", "isSecret"}, var
        assert var["name"].startswith("CONDUCTOR_") or (var["name"].endswith("_API_KEY") and var["isSecret"]), var
    readme = (ROOT / "README.md").read_text()
    assert f"<!-- mcp-name: {server['name']} -->" in readme
