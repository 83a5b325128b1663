"""A corrective round's plan is the review that wrote it: every sum over the run tree (the OpenAI endpoint's usage,
MCP's tokens, `mcp-conductor usage`) counts that review once. The conductor is a remote planner on the scripted
server, so reviews and their token counts are scripted and exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from conductor_mcp.models import Budget, PlanInfo, RunStatus
from conductor_mcp.runs.run_manager import RunManager

from ..servers.openai_server import ScriptedServer
from .test_recursion_budgets import steps

pytestmark = pytest.mark.anyio


async def test_each_review_is_counted_once(server: ScriptedServer, tmp_path: Path) -> None:
    reviews = iter([steps(("b", "Fix the answer", "all")), '{"steps": []}'])
    server.script(model="conductor-model", contains="Review the answer", reply=lambda _m: next(reviews))
    server.script(model="scripted-b", contains="Your subtask:\nFix the answer", reply="FIXED")
    manifest = tmp_path / "workers.yaml"
    manifest.write_text(f"conductor: {{model: openai/conductor-model, api_base: {server.base_url}}}\nworkers:\n"
                        + "".join(f"  - {{id: {w}, model: openai/scripted-{w}, api_base: {server.base_url}}}\n"
                                  for w in ("a", "b")))
    manager = RunManager(manifest, tmp_path / "traces.db")  # the door every surface uses
    engine, store = manager.engine, manager.engine.store
    run = await engine.plan("round task", workflow={"steps": [{"worker": "a", "instruction": "First try"}]},
                            budget=Budget(max_rounds=3))
    run = await RunManager(engine=engine).drive(run.id)
    assert run.status == RunStatus.COMPLETED and run.answer == "FIXED"
    # what the provider counted, call by call: two worker steps and two reviews
    calls = server.calls()
    assert sorted(c.model for c in calls) == ["conductor-model", "conductor-model", "scripted-a", "scripted-b"]
    reviewed = [PlanInfo.model_validate(r["info"]).usage for r in store.options(run.id)["reviews"]]
    assert [u.calls for u in reviewed] == [1, 1]
    (round_id,) = store.children(run.id, rounds=True)
    assert store.get_run(round_id).plan.usage.calls == 0  # its plan is review 1, counted there
    total = store.tree_usage(run.id)
    assert total.calls == len(calls) == 4
    whole, conductor = manager.usage(run.id)
    assert (whole.prompt_tokens, whole.completion_tokens, whole.calls) == \
        (total.prompt_tokens, total.completion_tokens, total.calls)
    assert conductor.calls == 2
    assert conductor.total_tokens == sum(u.total_tokens for u in reviewed)
