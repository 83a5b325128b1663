"""The SDK's `Mcp-Param-*` header check, answered from headed_only: the same verdict as the SDK's own lookup for
every tool, with the schema walked once a tool instead of on every call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcp.shared.inbound import validate_mcp_param_headers

from conductor_mcp.surfaces.mcp_server import ConductorServer, build_server, headed_only

HEADED: dict[str, Any] = {"type": "object", "properties": {
    "region": {"type": "string", "x-mcp-header": "Region"}, "task": {"type": "string"}}}
BARE: dict[str, Any] = {"type": "object", "properties": {"task": {"type": "string"}}}
# annotations the SDK finds invalid (off the properties chain, on an object): it checks no header against them
INVALID: list[dict[str, Any]] = [
    {"type": "object", "anyOf": [{"properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}]},
    {"type": "object", "properties": {"where": {"type": "object", "x-mcp-header": "Where"}}}]
HEADERS = [{}, {"mcp-param-region": "eu"}, {"mcp-param-task": "x", "mcp-param-workers": "strong"}]
ARGS = [{}, {"task": "t"}, {"task": "t", "region": "us"}, {"region": "eu"}]


def verdict(schema: Any, args: dict[str, Any], headers: dict[str, str]) -> str | None:
    rejection = None if schema is None else validate_mcp_param_headers(schema, args, headers)
    return None if rejection is None else rejection.message


def test_verdicts_match_the_sdks_for_every_tool_of_ours(tmp_path: Path) -> None:
    server = build_server(db=tmp_path / "t.db")
    assert isinstance(server, ConductorServer)
    ours = server._lowlevel_server.get_tool_input_schema
    assert ours is not None
    for tool in server._tool_manager.list_tools():
        sdk_schema = server._tool_input_schema(tool.name)
        assert sdk_schema is not None
        assert ours(tool.name) is None  # none of ours declares a header: nothing to check
        for args in ARGS:
            for headers in HEADERS:
                assert verdict(sdk_schema, args, headers) is None  # what the SDK's own check would have said


def test_a_headed_schema_is_still_checked() -> None:
    schemas = {"headed": HEADED, "bare": BARE}
    lookup = headed_only(schemas.get)
    assert lookup("headed") is HEADED and lookup("bare") is None and lookup("missing") is None
    assert verdict(lookup("headed"), {"region": "us"}, {"mcp-param-region": "eu"}) is not None  # mismatch refused
    assert verdict(lookup("headed"), {"region": "eu"}, {"mcp-param-region": "eu"}) is None
    schemas["bare"] = HEADED  # a tool added again under its name is looked at again
    assert lookup("bare") is HEADED
    for schema in INVALID:  # the SDK checks no header against these, whether headed_only passes them on or not
        ours = headed_only({"t": schema}.get)("t")
        for args in ARGS:
            for headers in HEADERS:
                assert verdict(ours, args, headers) == verdict(schema, args, headers) is None
