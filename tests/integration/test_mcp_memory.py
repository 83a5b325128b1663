"""The MCP server through the SDK's own Client, in memory: tools, progress, waiting, cancelling, resources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server import MCPServer

from conductor_mcp.surfaces.mcp_server import build_server

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import WORKFLOW, write_manifest

pytestmark = pytest.mark.anyio


@pytest.fixture
def mcp_server(tmp_path: Path, server: ScriptedServer) -> MCPServer[Any]:
    return build_server(write_manifest(tmp_path, server.base_url), tmp_path / "traces.db")


async def plan(c: Client, task: str = "Two drafts and a merge", workflow: Any = WORKFLOW) -> str:
    r = await c.call_tool("plan_workflow", {"task": task, "workflow": workflow})
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return str(r.structured_content["run_id"])


def undescribed(schema: dict[str, Any], where: str) -> list[str]:
    """Every property, at any depth, that has no description."""
    missing = []
    for name, prop in (schema.get("properties") or {}).items():
        if not prop.get("description"):
            missing.append(f"{where}.{name}")
        for inner in (prop, prop.get("items") or {}):
            missing += undescribed(inner, f"{where}.{name}")
    return missing


async def test_tools_list_is_small_and_complete(mcp_server: MCPServer[Any]) -> None:
    async with Client(mcp_server, mode="legacy") as c:
        tools = (await c.list_tools()).tools
        assert {t.name for t in tools} == {"solve", "plan_workflow", "run_step", "resume", "get_run", "rate_run"}
        size = len(json.dumps([t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]))
        assert size < 8000, size
        assert all(t.output_schema and t.description and t.title for t in tools)
        assert [m for t in tools for m in undescribed(t.input_schema, t.name)] == []
        by_name = {t.name: t for t in tools}
        # hints that differ from the protocol's defaults are stated
        assert by_name["get_run"].annotations.read_only_hint is True  # type: ignore[union-attr]
        assert by_name["plan_workflow"].annotations.open_world_hint is False  # type: ignore[union-attr]
        solve = by_name["solve"]
        assert "minutes" in (solve.description or "") and "money" in (solve.description or "")
        props = solve.input_schema["properties"]
        assert "moa" in props["strategy"]["description"]
        assert {"max_total_tokens", "max_usd", "prefer"} <= {k for k, v in props.items() if v.get("description")}
        # the live worker ids, wherever a host writes one: no resource needs reading first
        ids = ["strong", "fast", "slow"]
        assert props["workers"]["items"]["enum"] == ids
        assert props["strategy"]["enum"] == ["conductor", "moa", "single:strong", "single:fast", "single:slow",
                                    "recipe:draft-refine"]
        assert by_name["plan_workflow"].input_schema["properties"]["workers"]["items"]["enum"] == ids
        step = by_name["plan_workflow"].input_schema["properties"]["workflow"]["properties"]["steps"]["items"]
        assert step["properties"]["worker"]["enum"] == ids and "0-based" in step["properties"]["access"]["description"]
        assert by_name["run_step"].input_schema["properties"]["worker"]["enum"] == ids
        listed = (await c.list_resources()).resources
        templates = (await c.list_resource_templates()).resource_templates
        assert len(listed) + len(templates) == 6
        assert all(r.title and r.description for r in listed) and all(t.title and t.description for t in templates)


async def test_solve_plans_with_the_bundled_conductor(mcp_server: MCPServer[Any], server: ScriptedServer) -> None:
    messages: list[str] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with Client(mcp_server) as c:
        r = await c.call_tool("solve", {"task": "What is 6 times 7?\nREPLY: 42", "wait_s": 600},
                              progress_callback=progress)
        assert not r.is_error, r.content
        out = r.structured_content
        assert out is not None and out["status"] == "completed" and out["answer"] == "42"
        assert out["calls"] == len(out["steps"]) + 1 and out["trace_uri"] == f"conductor://runs/{out['run_id']}"
        links = [b for b in r.content if b.type == "resource_link"]
        assert links and str(links[0].uri) == out["trace_uri"]
        n = len(out["steps"])
        planned = next(i for i, m in enumerate(messages) if m.startswith(f"planned {n} step(s)"))
        assert messages[0].startswith("planning with gguf:") and planned > 0
        steps = messages[planned + 1:]
        assert len(steps) == 2 * n and steps[0].startswith(f"step 0 of 0..{n - 1} ")
        assert steps[-1].endswith("[completed]")


async def test_plan_workflow_tells_progress_while_the_conductor_plans(mcp_server: MCPServer[Any]) -> None:
    """plan_workflow is the call that outlasted hosts' timeouts: it reports progress from the start of planning
    (a host that resets its timeout on progress waits), then ticks as the conductor writes."""
    messages: list[str] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with Client(mcp_server) as c:
        await c.call_tool("plan_workflow", {"task": "Say hello."})  # the model loads: what follows is planning
        r = await c.call_tool("plan_workflow", {"task": "Write a Python function that reverses a linked list."},
                              progress_callback=progress)
        assert not r.is_error, r.content
        out = r.structured_content
        assert out is not None and out["plan_source"] in ("conductor", "retry", "fallback")
        trace = json.loads((await c.read_resource(out["trace_uri"])).contents[0].text)  # type: ignore[union-attr]
    assert messages and messages[0].startswith("planning with gguf:"), messages
    if trace["plan"]["latency_s"] > 2.0:  # a tick a second while it writes: "N of at most M tokens, S s"
        assert any(" tokens, " in m for m in messages[1:]), messages


async def test_wait_s_returns_running_then_get_run_finishes(mcp_server: MCPServer[Any],
                                                            server: ScriptedServer) -> None:
    server.set_latency(model_latency={"scripted-slow": 1.5})
    async with Client(mcp_server) as c:
        run_id = await plan(c)
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 0.2})
        assert r.structured_content is not None and r.structured_content["status"] == "running"
        r = await c.call_tool("get_run", {"run_id": run_id, "wait_s": 20})
        out = r.structured_content
        assert out is not None and out["status"] == "completed" and out["answer"]
        assert [s["status"] for s in out["steps"]] == ["completed"] * 3


async def test_cancel_mid_run_keeps_completed_steps(mcp_server: MCPServer[Any], server: ScriptedServer) -> None:
    server.set_latency(model_latency={"scripted-slow": 30})
    async with Client(mcp_server) as c:
        run_id = await plan(c)
        with anyio.move_on_after(1.5):
            await c.call_tool("resume", {"run_id": run_id, "wait_s": 60})
        r = await c.call_tool("get_run", {"run_id": run_id, "wait_s": 5})
        out = r.structured_content
        assert out is not None and out["status"] == "cancelled"
        assert [s["status"] for s in out["steps"]] == ["completed", "pending", "pending"]
        trace = json.loads((await c.read_resource(f"conductor://runs/{run_id}")).contents[0].text)  # type: ignore[union-attr]
        assert trace["steps"][1]["attempts"][0]["status"] == "cancelled"
        server.set_latency(model_latency={})
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 20})
        assert r.structured_content is not None and r.structured_content["status"] == "completed"
    assert server.ok_calls_for("Your subtask:\nDraft one") == 1  # the completed step was not re-bought


async def test_only_the_call_that_started_a_run_cancels_it(mcp_server: MCPServer[Any], server: ScriptedServer) -> None:
    """A wait that runs out leaves the run running, and so does a get_run that is cancelled while it waits."""
    server.set_latency(model_latency={"scripted-slow": 2})
    async with Client(mcp_server) as c:
        run_id = await plan(c)
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 0})
        assert r.structured_content is not None and r.structured_content["status"] == "running"
        with anyio.move_on_after(0.5):
            await c.call_tool("get_run", {"run_id": run_id, "wait_s": 60})
        r = await c.call_tool("get_run", {"run_id": run_id, "wait_s": 30})
        assert r.structured_content is not None and r.structured_content["status"] == "completed"


async def test_run_step_and_host_workflow(mcp_server: MCPServer[Any], server: ScriptedServer) -> None:
    async with Client(mcp_server) as c:
        run_id = await plan(c)
        r = await c.call_tool("run_step", {"run_id": run_id, "step": 2})
        assert r.is_error and "step 2 sees step(s) [0, 1], which are not completed" in r.content[0].text  # type: ignore[union-attr]
        r = await c.call_tool("run_step", {"run_id": run_id, "step": 0, "instruction": "Draft one, shorter"})
        out = r.structured_content
        assert out is not None and out["status"] == "completed" and out["runnable"] == [1]
        r = await c.call_tool("run_step", {"run_id": run_id, "step": 1, "worker": "strong"})
        assert r.structured_content is not None and r.structured_content["runnable"] == [2]
        r = await c.call_tool("run_step", {"run_id": run_id, "step": 2})
        assert r.structured_content is not None and r.structured_content["run_status"] == "completed"
        trace = json.loads((await c.read_resource(f"conductor://runs/{run_id}")).contents[0].text)  # type: ignore[union-attr]
        assert trace["steps"][0]["edited"] and trace["steps"][0]["instruction"] == "Draft one, shorter"
        assert trace["workflow"]["steps"][1]["worker"] == "strong" and trace["plan"]["source"] == "host"


async def test_steps_are_numbered_from_0_everywhere(mcp_server: MCPServer[Any]) -> None:
    # one index names one step in progress, run_step, the trace, the step resource and errors
    messages: list[str] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with Client(mcp_server) as c:
        run_id = await plan(c)
        r = await c.call_tool("run_step", {"run_id": run_id, "step": 0})
        assert r.structured_content is not None and r.structured_content["step"] == 0
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 20}, progress_callback=progress)
        assert r.structured_content is not None and r.structured_content["status"] == "completed"
        assert [s["index"] for s in r.structured_content["steps"]] == [0, 1, 2]
        trace = json.loads((await c.read_resource(f"conductor://runs/{run_id}")).contents[0].text)  # type: ignore[union-attr]
        for i, step in enumerate(WORKFLOW["steps"]):
            assert trace["steps"][i]["index"] == i and trace["steps"][i]["worker"] == step["worker"]
            one = json.loads((await c.read_resource(f"conductor://runs/{run_id}/steps/{i}")).contents[0].text)  # type: ignore[union-attr]
            assert one["index"] == i and one["instruction"] == step["instruction"]
        # step 0 ran by hand: resume reports steps 1 and 2, each by its own index and worker
        assert [m.split(":")[0] for m in messages] == ["step 1 of 0..2 slow", "step 1 of 0..2 slow",
                                                       "step 2 of 0..2 strong", "step 2 of 0..2 strong"]
        r = await c.call_tool("run_step", {"run_id": run_id, "step": 0})
        assert r.is_error and "step 0 is already completed" in r.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize(("tool", "args", "message"), [
    ("solve", {"task": "x", "strategy": "single:evil"}, "single:evil: unknown or unavailable worker"),
    ("solve", {"task": "x", "strategy": "moa", "max_steps": 1}, "moa needs max_steps >= 2"),
    ("get_run", {"run_id": "nope"}, "no run 'nope'"),
    ("resume", {"run_id": "nope"}, "no run 'nope'"),
    ("solve", {"task": "x", "workers": ["evil"]},
     "workers: unknown id(s) ['evil']; allowed: ['strong', 'fast', 'slow']"),
    ("plan_workflow", {"task": "x", "workflow": {"steps": [{"worker": "ghost", "instruction": "x"}]}},
     "steps[0].worker: unknown worker 'ghost'"),
    ("plan_workflow", {"task": "x", "workflow": {"steps": [{"worker": "fast", "instruction": "x", "access": [3]}]}},
     "steps[0].access refers to step(s) [3]"),
    ("solve", {"task": "   "}, "task: empty"),
    ("solve", {"task": "x" * 100_001}, "at most 100000 characters"),
    ("solve", {"task": "x", "max_steps": 9}, "less than or equal to 5"),
    ("solve", {"task": "half a pair \ud83d here"}, "task: not valid Unicode text: a lone surrogate U+D83D"),
    ("get_run", {"run_id": "\udfff"}, "run_id: not valid Unicode text"),
    ("plan_workflow", {"task": "x", "workflow": {"steps": [{"worker": "fast", "instruction": "x",
                                                            "access": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]
                                                                        ]]]]]]]]]]]]]]]]]]]]]]]]]}]}},
     "nested deeper than 32 levels"),
])
async def test_bad_input_is_a_clear_tool_error(mcp_server: MCPServer[Any], tool: str, args: dict[str, Any],
                                               message: str) -> None:
    async with Client(mcp_server) as c:
        r = await c.call_tool(tool, args)
        assert r.is_error
        assert message in r.content[0].text  # type: ignore[union-attr]


async def test_run_step_out_of_range(mcp_server: MCPServer[Any]) -> None:
    async with Client(mcp_server) as c:
        run_id = await plan(c)
        r = await c.call_tool("run_step", {"run_id": run_id, "step": 5})
        assert r.is_error and "step: 5 is out of range; this run has steps 0..2" in r.content[0].text  # type: ignore[union-attr]


async def test_worker_failure_is_a_failed_run_not_a_protocol_error(mcp_server: MCPServer[Any],
                                                                   server: ScriptedServer) -> None:
    server.set_faults(fail_models={"scripted-fast": "500"})
    async with Client(mcp_server) as c:
        run_id = await plan(c)
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 30})
        out = r.structured_content
        assert not r.is_error and out is not None and out["status"] == "failed"
        assert "step 0 failed" in out["error"] and "500" in out["error"]


async def test_resources(mcp_server: MCPServer[Any]) -> None:
    async with Client(mcp_server) as c:
        run_id = await plan(c)
        await c.call_tool("resume", {"run_id": run_id, "wait_s": 20})
        listed = {str(r.uri) for r in (await c.list_resources()).resources}
        assert {"conductor://workers", "conductor://runs"} <= listed
        templates = {t.uri_template for t in (await c.list_resource_templates()).resource_templates}
        assert templates == {"conductor://runs/{run_id}", "conductor://runs/{run_id}/steps/{index}",
                             "conductor://runs/{run_id}/diagram", "conductor://runs{?limit,cursor}"}

        async def read(uri: str) -> str:
            return (await c.read_resource(uri)).contents[0].text  # type: ignore[union-attr]

        workers = json.loads(await read("conductor://workers"))
        assert [w["id"] for w in workers["workers"]] == ["strong", "fast", "slow"]
        assert json.loads(await read("conductor://runs"))["runs"][0]["run_id"] == run_id
        trace = json.loads(await read(f"conductor://runs/{run_id}"))
        assert trace["status"] == "completed" and trace["steps"][2]["output"] == trace["answer"]
        assert {"worker", "instruction", "access", "status", "output", "error", "usage", "attempts",
                "started_at", "ended_at", "latency_s"} <= trace["steps"][0].keys()
        step = json.loads(await read(f"conductor://runs/{run_id}/steps/1"))
        assert step["index"] == 1 and step["worker"] == "slow"
        diagram = await read(f"conductor://runs/{run_id}/diagram")
        assert diagram.startswith("flowchart TD") and "s0 --> s2" in diagram and "s1 --> s2" in diagram
        assert ":::completed" in diagram
        for bad in (f"conductor://runs/{run_id}/steps/9", "conductor://runs/nope", "conductor://runs/nope/diagram"):
            with pytest.raises(Exception) as err:
                await read(bad)
            assert "nope" in str(err.value) or "is not a step" in str(err.value)


async def test_rate_run_reaches_the_store_and_every_view(mcp_server: MCPServer[Any]) -> None:
    async with Client(mcp_server) as c:
        run_id = await plan(c)
        r = await c.call_tool("rate_run", {"run_id": run_id, "score": 1})  # planned: nothing to judge yet
        assert r.is_error and f"run {run_id} is planned, not finished" in str(r.content), r.content
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 20})
        assert r.structured_content is not None and r.structured_content["status"] == "completed"
        r = await c.call_tool("rate_run", {"run_id": run_id, "score": 0.5, "note": "right form, wrong number"})
        assert not r.is_error, r.content
        assert r.structured_content == {"run_id": run_id, "reward": 0.5, "note": "right form, wrong number"}
        got = await c.call_tool("get_run", {"run_id": run_id})
        assert got.structured_content is not None and got.structured_content["reward"] == 0.5
        trace = json.loads((await c.read_resource(f"conductor://runs/{run_id}")).contents[0].text)  # type: ignore[union-attr]
        assert trace["reward"] == 0.5 and trace["reward_source"] == "host"
        assert trace["reward_note"] == "right form, wrong number"
        listed = json.loads((await c.read_resource("conductor://runs")).contents[0].text)  # type: ignore[union-attr]
        assert listed["runs"][0]["reward"] == 0.5
        for bad, field in (({"run_id": run_id, "score": 1.5}, "score"), ({"run_id": "nope", "score": 1}, "nope")):
            r = await c.call_tool("rate_run", bad)
            assert r.is_error and field in str(r.content)
