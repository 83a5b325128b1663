"""The live worker ids in tools/list, as a host sees it over stdio, and a registry too large to name them
everywhere within the 8,000-character cap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from conductor_mcp.surfaces.mcp_server import build_server

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import server_env, write_manifest
from .test_mcp_transports import SERVE

pytestmark = pytest.mark.anyio


def size(tools: list[Any]) -> int:
    return len(json.dumps([t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]))


async def test_a_host_sees_the_worker_ids_in_tools_list(tmp_path: Path, server: ScriptedServer) -> None:
    env = server_env(tmp_path, write_manifest(tmp_path, server.base_url))
    async with Client(StdioServerParameters(command=SERVE[0], args=SERVE[1:], env=env), mode="legacy") as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert size(list(tools.values())) < 8000
        strategy = tools["solve"].input_schema["properties"]["strategy"]
        assert strategy["enum"] == ["conductor", "moa", "single:strong", "single:fast", "single:slow",
                                    "recipe:draft-refine"]
        # an id the schema offers is one the server takes
        r = await c.call_tool("plan_workflow", {"task": "Say hi", "workers": ["slow"], "workflow": {"steps": [
            {"worker": tools["run_step"].input_schema["properties"]["worker"]["enum"][2], "instruction": "Say hi"}]}})
        assert not r.is_error and r.structured_content is not None
        assert r.structured_content["workflow"]["steps"][0]["worker"] == "slow"


def many_workers(tmp_path: Path, base_url: str, n: int) -> Path:
    path = tmp_path / "many.yaml"
    lines = ["workers:"]
    for i in range(n):
        lines += [f"  - id: provider-{i}-model-name-v{i}", f"    model: openai/scripted-{i}",
                  f"    api_base: {base_url}"]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_a_large_registry_keeps_the_cap_and_names_its_ids_in_workers(tmp_path: Path,
                                                                         server: ScriptedServer) -> None:
    ids = [f"provider-{i}-model-name-v{i}" for i in range(8)]
    async with Client(build_server(many_workers(tmp_path, server.base_url, 8), tmp_path / "t.db"), mode="legacy") as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert size(list(tools.values())) < 8000
        assert tools["solve"].input_schema["properties"]["workers"]["items"]["enum"] == ids
        assert "enum" not in tools["solve"].input_schema["properties"]["strategy"]  # left out to fit
        assert "enum" not in tools["run_step"].input_schema["properties"]["worker"]
