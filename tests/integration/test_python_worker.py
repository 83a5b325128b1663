"""The python worker in workflows: real programs in the sandbox, through the engine and through MCP.

A scripted model on the OpenAI-compatible test server writes the programs; the python worker runs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from conductor_mcp.errors import ConfigError, WorkflowError
from conductor_mcp.models import Manifest, StepStatus, WorkerSpec
from conductor_mcp.planners.prompts import planner_messages
from conductor_mcp.runs.engine import Engine
from conductor_mcp.store import Store
from conductor_mcp.surfaces.mcp_server import build_server
from conductor_mcp.surfaces.render import mermaid, run_text
from conductor_mcp.workers.registry import build_registry, load_manifest

from ..conftest import solve
from ..servers.openai_server import ScriptedServer

pytestmark = pytest.mark.anyio

PROGRAM = "Here it is:\n```python\nimport math\nprint(math.factorial(5) + 2)\n```\n"


def manifest(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    path = tmp_path / "workers.yaml"
    path.write_text(f"""conductor: {{gguf: bundled, max_steps: 3}}
workers:
  - id: coder
    model: openai/scripted-coder
    api_base: {base_url}
    description: writes programs
    timeout_s: 10
  - id: py
    kind: python
    timeout_s: 5
{extra}""")
    return path


def engine(tmp_path: Path, server: ScriptedServer, store: Store) -> Engine:
    return Engine(load_manifest(manifest(tmp_path, server.base_url)), store)


async def test_a_workflow_through_mcp_runs_step_0s_program_in_step_1(tmp_path: Path, server: ScriptedServer) -> None:
    server.script(model="scripted-coder", reply=PROGRAM)
    mcp = build_server(manifest(tmp_path, server.base_url), tmp_path / "traces.db")
    workflow = {"steps": [
        {"worker": "coder", "instruction": "Write a program that prints 5! + 2.", "access": "none"},
        {"worker": "py", "instruction": "Run the program of step 0.", "access": [0]}]}
    async with Client(mcp) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        worker_field = tools["plan_workflow"].input_schema["properties"]["workflow"]["properties"]["steps"]
        assert "python worker" in json.dumps(worker_field)  # a host writing its own workflow is told
        r = await c.call_tool("plan_workflow", {"task": "What is 5! + 2?", "workflow": workflow})
        run_id = r.structured_content["run_id"]
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 30})
        out: Any = r.structured_content
        assert out["status"] == "completed" and out["answer"].strip() == "122"
        step = json.loads((await c.read_resource(f"conductor://runs/{run_id}/steps/1")).contents[0].text)  # type: ignore[union-attr]
        assert step["code"].strip() == "import math\nprint(math.factorial(5) + 2)"
        assert step["output"].strip() == "122" and step["usage"]["prompt_tokens"] == 0
        assert step["usage"]["cost_usd"] == 0.0
        diagram = (await c.read_resource(f"conductor://runs/{run_id}/diagram")).contents[0].text  # type: ignore[union-attr]
        assert "printed: 122" in diagram and "ran 2 line(s): import math" in diagram
        workers = json.loads((await c.read_resource("conductor://workers")).contents[0].text)  # type: ignore[union-attr]
        assert {"id": "py", "backend": "python"}.items() <= next(w for w in workers["workers"]
                                                                   if w["id"] == "py").items()


async def test_a_failing_program_is_an_output_the_next_step_can_fix(tmp_path: Path, server: ScriptedServer,
                                                                    store: Store) -> None:
    server.script(model="scripted-coder", contains="Your subtask:\nWrite",
                  reply="```python\nprint(1 / 0)\n```")
    server.script(model="scripted-coder", reply="The program failed with ZeroDivisionError; the answer is 7.")
    e = engine(tmp_path, server, store)
    run = await solve(e, "Compute seven.", workflow={"steps": [
        {"worker": "coder", "instruction": "Write a program that computes the answer.", "access": "none"},
        {"worker": "py", "instruction": "Run it.", "access": [0]},
        {"worker": "coder", "instruction": "Give the final answer, fixing what failed.", "access": [0, 1]}]})
    assert run.status.value == "completed" and run.answer is not None and "7" in run.answer
    ran = run.steps[1]
    assert ran.status == StepStatus.COMPLETED and "ZeroDivisionError" in (ran.output or "")
    assert (ran.output or "").rstrip().endswith("[exit status 1]")
    # the fixing step saw what the program printed
    last = [c for c in server.calls() if c.model == "scripted-coder"][-1]
    assert "ZeroDivisionError" in last.last_user and "Step 1 response" in last.last_user
    text = run_text(run)
    assert "program:" in text and "print(1 / 0)" in text and "printed:" in text


async def test_no_program_is_said_as_the_steps_output(tmp_path: Path, server: ScriptedServer, store: Store) -> None:
    server.script(model="scripted-coder", reply="I would rather explain it in words.")
    run = await solve(engine(tmp_path, server, store), "Compute seven.", workflow={"steps": [
        {"worker": "coder", "instruction": "Write a program that computes the answer.", "access": "none"},
        {"worker": "py", "instruction": "Run it.", "access": [0]}]})
    assert run.status.value == "completed" and run.steps[1].code is None
    assert run.answer == "[no program to run: no ```python block in the outputs of steps [0] or its instruction]"
    # a host can hand the python worker code directly, in the step's instruction
    run = await solve(engine(tmp_path, server, store), "Print a sum.", workflow={"steps": [
        {"worker": "py", "instruction": "```python\nprint(sum(range(10)))\n```", "access": "none"}]})
    assert run.answer is not None and run.answer.strip() == "45"


async def test_the_program_recipe_records_its_slots_and_the_direct_task_goes_as_it_is(
        tmp_path: Path, server: ScriptedServer, store: Store) -> None:
    server.script(model="scripted-coder", reply=PROGRAM)
    e = engine(tmp_path, server, store)
    run = await solve(e, "What is 5! + 2?", strategy="recipe:program")
    assert run.answer is not None and run.answer.strip() == "122"
    assert run.plan.recipe is not None and run.plan.recipe.key == "program(runner=py, solver=coder)"
    assert [s.worker for s in run.steps] == ["coder", "py"] and run.steps[1].code is not None
    assert "recipe program(runner=py, solver=coder)" in run_text(run) and "printed: 122" in mermaid(run)
    server.reset_stats()
    run = await solve(e, "What is 5! + 2?", strategy="single:coder")
    assert run.plan.recipe is not None and run.plan.recipe.key == "direct(solver=coder)"
    assert [c.last_user for c in server.calls()] == ["What is 5! + 2?"]  # not wrapped in the team prompt
    with pytest.raises(WorkflowError, match=r"single:py: unknown or unavailable worker \(a model worker\)"):
        await e.plan("What is 5! + 2?", strategy="single:py")
    with pytest.raises(WorkflowError, match="no recipe 'nope'"):
        await e.plan("What is 5! + 2?", strategy="recipe:nope")


async def test_manifest_recipes_and_python_workers_are_checked(tmp_path: Path, server: ScriptedServer) -> None:
    extra = """recipes:
  program-check: null
  twice:
    description: two programs, the second checks the first
    slots: {writer: model, runner: python}
    steps:
      - {slot: writer, instruction: "{task}"}
      - {slot: runner, instruction: "Run it.", access: [0]}
"""
    registry = load_manifest(manifest(tmp_path, server.base_url, extra))
    assert "twice" in registry.recipes and "program-check" not in registry.recipes
    assert "recipe:twice" in registry.strategies() and "single:py" not in registry.strategies()
    bad = [({"id": "py", "kind": "python", "model": "openai/x"}, "python worker runs code, not a model"),
           ({"id": "m", "model": "openai/x", "network": "allow"}, "applies to a python worker only")]
    for spec, message in bad:
        with pytest.raises(ValueError, match=message):
            WorkerSpec.model_validate(spec)
    with pytest.raises(ConfigError, match="no model worker"):
        build_registry(Manifest(workers=[WorkerSpec(id="py", kind="python")]), "test")
    (tmp_path / "bad.yaml").write_text("workers:\n  - {id: m, model: openai/x}\nrecipes:\n  r:\n"
                                       "    slots: {a: model}\n    steps: [{slot: b, instruction: x}]\n")
    with pytest.raises(ConfigError, match=r"recipes.*slot: 'b' is not one of the slots"):
        load_manifest(tmp_path / "bad.yaml")


def test_the_conductor_is_told_what_the_python_worker_does() -> None:
    workers = [WorkerSpec(id="coder", model="openai/x"), WorkerSpec(id="py", kind="python")]
    system = planner_messages("What is 5! + 2?", workers, 3, "json")[0]["content"]
    assert "A python worker computes exactly" in system
    assert "- py: runs the Python program of the steps it sees" in system
    assert '"worker":"py","instruction":"Run the program of step 0."' in system  # the program example


async def test_the_web_views_step_card_shows_the_program_and_what_it_printed(
        tmp_path: Path, server: ScriptedServer, store: Store) -> None:
    from conductor_mcp.surfaces.web.pages import step_card

    server.script(model="scripted-coder", reply="```python\nprint('<b>' if 2 < 3 else '')\n```")
    run = await solve(engine(tmp_path, server, store), "Print a tag.", strategy="recipe:program")
    card = step_card(run, run.steps[1], [])
    assert "Program it ran" in card and "What it printed" in card
    assert "print(&#x27;&lt;b&gt;&#x27; if 2 &lt; 3 else &#x27;&#x27;)" in card and "&lt;b&gt;" in card
    assert "<b>" not in card  # escaped, never markup
