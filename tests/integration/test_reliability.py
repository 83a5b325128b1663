"""Issue 12 (5-8) through the SDK's own Client in memory, on real SQLite files and the real bundled conductor:
long tasks, unexpected errors, read-only stores, capped worker output, the paged runs list, child runs,
strict host workflows, clear argument and resource errors, and a worker removed from the manifest."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server import MCPServer
from mcp.shared.exceptions import MCPError

from conductor_mcp.models import PlanInfo, RunOptions, RunStatus, WorkerSpec, Workflow
from conductor_mcp.planners.gguf import GGUFPlanner
from conductor_mcp.planners.prompts import planner_messages
from conductor_mcp.planners.schema import max_plan_tokens
from conductor_mcp.store import Store
from conductor_mcp.surfaces.mcp_server import build_server
from conductor_mcp.workers.registry import bundled_gguf_path

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import WORKFLOW, write_manifest

pytestmark = pytest.mark.anyio


def manifest(tmp_path: Path, base_url: str, conductor: str = "{gguf: bundled, max_steps: 3}",
             ids: tuple[str, ...] = ("strong", "fast", "slow"), extra: str = "") -> Path:
    path = tmp_path / f"workers-{len(ids)}.yaml"
    lines = [f"conductor: {conductor}", "workers:"]
    for wid in ids:
        lines += [f"  - id: {wid}", f"    model: openai/scripted-{wid}", f"    api_base: {base_url}",
                  f"    description: worker {wid}", "    timeout_s: 10", *([extra] if extra else [])]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def mcp_server(tmp_path: Path, server: ScriptedServer) -> MCPServer[Any]:
    return build_server(write_manifest(tmp_path, server.base_url), tmp_path / "traces.db")


def text(result: Any) -> str:
    return str(result.content[0].text)


async def plan(c: Client, task: str = "Two drafts and a merge", workflow: Any = WORKFLOW) -> str:
    r = await c.call_tool("plan_workflow", {"task": task, "workflow": workflow})
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return str(r.structured_content["run_id"])


async def read(c: Client, uri: str) -> Any:
    return json.loads((await c.read_resource(uri)).contents[0].text)  # type: ignore[union-attr]


# -- (5) long tasks and unexpected errors ------------------------------------------------------------------

async def test_a_task_longer_than_the_conductors_context_is_planned_from_a_view(tmp_path: Path,
                                                                               server: ScriptedServer) -> None:
    """Was `Error executing tool solve` (llama.cpp: requested tokens exceed the context window)."""
    path = manifest(tmp_path, server.base_url, "{gguf: bundled, max_steps: 1, n_ctx: 1024}")  # 1 step: quick
    middle = "MIDDLE-OF-THE-TASK-7f3a"
    task = ("Summarise the report below in one line.\n" + "The quarterly figures rose again. " * 200 + middle
            + " The costs fell. " * 200 + "\nREPLY: summary done")
    async with Client(build_server(path, tmp_path / "t.db")) as c:
        r = await c.call_tool("solve", {"task": task, "wait_s": 120})
        assert not r.is_error, r.content
        out = r.structured_content
        assert out is not None and out["status"] == "completed" and out["answer"] == "summary done"
        trace = await read(c, out["trace_uri"])
    notes = trace["plan"]["notes"]
    assert len(notes) == 1 and "the workers get the whole task" in notes[0] and "1024-token context" in notes[0]
    assert trace["task"] == task
    worker_prompts = [call.last_user for call in server.calls() if call.outcome == "ok"]
    assert worker_prompts and all(task in p for p in worker_prompts)  # the whole task, middle included


async def test_fit_keeps_a_100000_character_task_inside_the_default_context() -> None:
    planner = GGUFPlanner(bundled_gguf_path())  # n_ctx 4096, as the bundled conductor runs by default
    workers = [WorkerSpec(id=i, model=f"openai/{i}", description=f"worker {i}") for i in ("a", "b", "c")]
    task = "START-" + "lorem ipsum dolor sit amet, " * 3570 + "-END"
    assert len(task) > 99_000

    def build(view: str) -> list[dict[str, str]]:
        return planner_messages(view, workers, 5, "json")

    assert await planner.model.prompt_tokens(build(task)) > 4096
    messages, notes = await planner.fit(task, build, 5)
    assert messages is not None
    assert await planner.model.prompt_tokens(messages) <= 4096 - max_plan_tokens(5)
    view = messages[-1]["content"]
    assert "START-lorem" in view and view.endswith("-END\nWorkflow:")
    assert "characters of the task left out here" in view and "the workers get the whole task" in notes[0]
    short, none = await planner.fit("What is 6 times 7?", build, 5)
    assert none == [] and short == build("What is 6 times 7?")


async def test_an_unexpected_exception_is_a_short_tool_error(mcp_server: MCPServer[Any], tmp_path: Path) -> None:
    """A run row whose workflow is damaged: was the bare `Error executing tool get_run`."""
    async with Client(mcp_server) as c:
        run_id = await plan(c)
        with sqlite3.connect(tmp_path / "traces.db") as db:
            db.execute("UPDATE runs SET workflow='{\"steps\": 7}' WHERE id=?", (run_id,))
        r = await c.call_tool("get_run", {"run_id": run_id})
        assert r.is_error
        assert text(r).startswith("Error executing tool get_run: internal error: ValidationError: ")
        assert "the server's log has the traceback" in text(r)
        with pytest.raises(MCPError) as err:
            await c.read_resource(f"conductor://runs/{run_id}")
        assert "internal error: ValidationError" in str(err.value)


# -- (6) a read-only store ---------------------------------------------------------------------------------

@pytest.fixture
def read_only_db(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    path = tmp_path / "ro.db"
    store = Store(path)
    run_id = store.create_run("an old task", Workflow.model_validate(WORKFLOW), PlanInfo(source="host",
                                                                                         planner="host"))
    store.close()
    os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # 0444 (root included: the mode is the intent)
    yield path, run_id
    os.chmod(path, 0o644)


async def test_a_read_only_store_serves_reads_and_refuses_writes(tmp_path: Path, server: ScriptedServer,
                                                                 read_only_db: tuple[Path, str]) -> None:
    path, run_id = read_only_db
    async with Client(build_server(write_manifest(tmp_path, server.base_url), path)) as c:
        r = await c.call_tool("get_run", {"run_id": run_id})
        assert not r.is_error and r.structured_content is not None
        assert r.structured_content["status"] == "planned"
        assert (await read(c, "conductor://runs"))["runs"][0]["run_id"] == run_id
        assert (await read(c, f"conductor://runs/{run_id}"))["task"] == "an old task"
        for tool, args in (("plan_workflow", {"task": "x", "workflow": WORKFLOW}),
                           ("rate_run", {"run_id": run_id, "score": 1}),
                           ("resume", {"run_id": run_id})):
            r = await c.call_tool(tool, args)
            assert r.is_error and f"trace store {path} is read-only" in text(r), (tool, r.content)
            assert "internal error" not in text(r)
    assert server.stats()["requests"] == 0


# -- (7) capped output, the runs list as summaries with a cursor -------------------------------------------

async def test_a_workers_output_is_capped_with_a_marker(tmp_path: Path, server: ScriptedServer) -> None:
    path = manifest(tmp_path, server.base_url, extra="    max_output_chars: 1000")
    server.script(contains="Draft one", reply="y" * 5000)
    async with Client(build_server(path, tmp_path / "t.db")) as c:
        run_id = await plan(c)
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 30})
        assert r.structured_content is not None and r.structured_content["status"] == "completed"
        step = await read(c, f"conductor://runs/{run_id}/steps/0")
    assert step["output"].startswith("y" * 1000) and "y" * 1001 not in step["output"]
    assert step["output"].endswith("[... output truncated: 5000 characters, the first 1000 kept "
                                   "(max_output_chars of worker fast)]")
    merge = [call.last_user for call in server.calls() if "Merge the drafts" in call.last_user]
    assert merge and "y" * 1001 not in merge[0]  # the next step saw the capped text


async def test_the_default_output_cap_holds_a_huge_reply(tmp_path: Path, server: ScriptedServer) -> None:
    """A worker with no max_output_chars that answers 2 MB: 200,000 characters are kept, and neither the trace
    nor the runs list carries the rest."""
    from conductor_mcp.models import DEFAULT_MAX_OUTPUT_CHARS

    path = manifest(tmp_path, server.base_url)
    server.script(contains="Draft one", reply="z" * 2_000_000)
    async with Client(build_server(path, tmp_path / "t.db")) as c:
        run_id = await plan(c)
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 60})
        assert r.structured_content is not None and r.structured_content["status"] == "completed"
        step = await read(c, f"conductor://runs/{run_id}/steps/0")
        runs = await c.read_resource("conductor://runs")
    assert DEFAULT_MAX_OUTPUT_CHARS == 200_000
    assert step["output"].startswith("z" * DEFAULT_MAX_OUTPUT_CHARS)
    assert "z" * (DEFAULT_MAX_OUTPUT_CHARS + 1) not in step["output"]
    assert "2000000 characters, the first 200000 kept (max_output_chars of worker fast)" in step["output"]
    assert sum(len(getattr(part, "text", "")) for part in runs.contents) < 10_000  # summaries, not outputs


async def test_the_runs_list_is_summaries_paged_by_a_cursor(mcp_server: MCPServer[Any],
                                                            server: ScriptedServer) -> None:
    server.script(contains="Merge the drafts", reply="a long answer " * 2000)
    async with Client(mcp_server) as c:
        ids = [await plan(c, task=f"task {i} " + "x" * 500) for i in range(5)]
        r = await c.call_tool("resume", {"run_id": ids[0], "wait_s": 30})
        assert r.structured_content is not None and r.structured_content["status"] == "completed"
        tokens = r.structured_content["tokens"]
        first = await read(c, "conductor://runs?limit=2")
        assert [s["run_id"] for s in first["runs"]] == ids[::-1][:2]
        assert set(first["runs"][0]) == {"run_id", "status", "strategy", "task", "task_chars", "tokens",
                                         "created_at", "reward", "trace_uri"}
        assert len(first["runs"][0]["task"]) == 203 and first["runs"][0]["task_chars"] == 507
        seen, page = [], first
        while True:
            seen += [s["run_id"] for s in page["runs"]]
            if page["next_uri"] is None:
                break
            page = await read(c, page["next_uri"])
        assert seen == ids[::-1]
        whole = await read(c, "conductor://runs")
        assert [s["run_id"] for s in whole["runs"]] == ids[::-1] and whole["next_cursor"] is None
        done = next(s for s in whole["runs"] if s["run_id"] == ids[0])
        assert done["status"] == "completed" and done["tokens"] == tokens > 0
        assert "a long answer" not in json.dumps(whole)
        templates = {t.uri_template for t in (await c.list_resource_templates()).resource_templates}
        assert "conductor://runs{?limit,cursor}" in templates
        for bad, message in (("conductor://runs?cursor=nope", "cursor: 'nope'"),
                             ("conductor://runs?limit=0", "limit: '0'"), ("conductor://runs?limit=x", "limit")):
            with pytest.raises(MCPError) as err:
                await read(c, bad)
            assert message in str(err.value)


# -- (8) child runs, strict host workflows, clear errors, a removed worker --------------------------------

@pytest.fixture
def with_child(tmp_path: Path) -> tuple[Path, str, str]:
    """A root run and a child run of its step 0, written by the store as the engine writes them."""
    path = tmp_path / "traces.db"
    store = Store(path)
    wf = Workflow.model_validate({"steps": [{"worker": "fast", "instruction": "Draft"}]})
    root = store.create_run("root task", wf, PlanInfo(source="host", planner="host"), RunOptions(kind="root"))
    lease, _ = store.claim(root)
    child = store.create_run("sub task", wf, PlanInfo(source="host", planner="host"), RunOptions(kind="recursion"),
                             parent=lease, parent_step=0)
    store.finish_run(lease, RunStatus.CANCELLED, error="stopped")
    store.close()
    return path, root, child


async def test_a_child_run_cannot_be_resumed_or_stepped(tmp_path: Path, server: ScriptedServer,
                                                        with_child: tuple[Path, str, str]) -> None:
    """resume answered success and ran nothing; run_step called the child's worker."""
    path, root, child = with_child
    async with Client(build_server(write_manifest(tmp_path, server.base_url), path)) as c:
        r = await c.call_tool("resume", {"run_id": child, "wait_s": 5})
        assert r.is_error and f"run {child} is part of run {root}; resume that one" in text(r)
        r = await c.call_tool("run_step", {"run_id": child, "step": 0})
        assert r.is_error and f"run {child} is part of run {root}" in text(r)
    assert server.stats()["requests"] == 0


async def test_a_host_workflow_with_an_unknown_key_is_refused(mcp_server: MCPServer[Any]) -> None:
    async with Client(mcp_server) as c:
        steps = [{"worker": "fast", "instruction": "Draft", "acess": "all"}]
        r = await c.call_tool("plan_workflow", {"task": "x", "workflow": {"steps": steps}})
        assert r.is_error
        assert text(r) == ("Error executing tool plan_workflow: invalid arguments: "
                           "workflow.steps[0].acess: Extra inputs are not permitted")
        r = await c.call_tool("plan_workflow", {"task": "x", "workflow": {"steps": steps[:0], "extra": 1}})
        assert r.is_error and "workflow.extra: Extra inputs are not permitted" in text(r)


@pytest.mark.parametrize(("tool", "args", "expected"), [
    ("solve", {"task": "x", "max_steps": 9}, "max_steps: Input should be less than or equal to 5"),
    ("solve", {"task": "x" * 100_001}, "task: String should have at most 100000 characters"),
    ("run_step", {"run_id": "r", "step": -1}, "step: Input should be greater than or equal to 0"),
    ("get_run", {}, "run_id: Field required"),
    ("rate_run", {"run_id": "r", "score": "high"}, "score: Input should be a valid number"),
])
async def test_argument_errors_name_the_field_without_pydantic_dumps(mcp_server: MCPServer[Any], tool: str,
                                                                    args: dict[str, Any], expected: str) -> None:
    async with Client(mcp_server) as c:
        r = await c.call_tool(tool, args)
    assert r.is_error and text(r).startswith(f"Error executing tool {tool}: invalid arguments: {expected}")
    assert "pydantic.dev" not in text(r) and "input_value" not in text(r)


async def test_step_zero_seeing_itself_is_worded_without_a_negative_range(mcp_server: MCPServer[Any]) -> None:
    async with Client(mcp_server) as c:
        r = await c.call_tool("plan_workflow", {"task": "x", "workflow": {
            "steps": [{"worker": "fast", "instruction": "x", "access": [0]}]}})
    assert r.is_error and "steps[0].access refers to step(s) [0]" in text(r)
    assert "0..-1" not in text(r) and 'the first step sees none: use "none"' in text(r)


async def test_a_step_resource_with_a_non_ascii_digit_is_not_found(mcp_server: MCPServer[Any]) -> None:
    """`conductor://runs/ID/steps/²` was an internal error: "²".isdigit() but int("²") fails."""
    async with Client(mcp_server) as c:
        run_id = await plan(c)
        for index in ("²", "٣", "-1", "3"):
            with pytest.raises(MCPError) as err:
                await read(c, f"conductor://runs/{run_id}/steps/{index}")
            assert f"index: {index!r} is not a step of run {run_id} (steps 0..2)" in str(err.value)
            assert "internal" not in str(err.value).lower()


async def test_resuming_a_run_whose_worker_was_removed_says_which_and_how_to_go_on(
        tmp_path: Path, server: ScriptedServer) -> None:
    db = tmp_path / "t.db"
    async with Client(build_server(manifest(tmp_path, server.base_url), db)) as c:
        run_id = await plan(c)
    fewer = manifest(tmp_path, server.base_url, ids=("strong", "fast"))  # `slow` is gone
    async with Client(build_server(fewer, db)) as c:
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 10})
        assert r.is_error and "internal error" not in text(r)
        assert f"step 1: worker 'slow' is not in the workers of {fewer} any more (they are strong, fast)" in text(r)
        assert f"run_step(run_id={run_id!r}, step=1, worker=...)" in text(r)
        r = await c.call_tool("run_step", {"run_id": run_id, "step": 1})
        assert r.is_error and "worker 'slow' is not in the workers" in text(r)
        r = await c.call_tool("run_step", {"run_id": run_id, "step": 1, "worker": "fast"})
        assert not r.is_error and r.structured_content is not None
        assert r.structured_content["status"] == "completed"
        r = await c.call_tool("get_run", {"run_id": run_id})
        assert r.structured_content is not None and r.structured_content["status"] == "planned"
    assert server.stats()["requests"] == 1
