"""render.mermaid on runs from a real SQLite store: labels that stay text, and how child runs are named."""

from __future__ import annotations

from conductor_mcp.models import PlanInfo, RunOptions, RunStatus, Workflow
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.surfaces.render import mermaid
from conductor_mcp.surfaces.web.app import _read_view
from conductor_mcp.surfaces.web.pages import diagram_source

from ..conftest import http_registry

PLAN = PlanInfo(source="host", planner="host")
DIRECTIVE = "%%{init: {'themeCSS': 'rect{fill:red}'}}%% do"


def wf(*instructions: str) -> Workflow:
    return Workflow.model_validate({"steps": [{"worker": "a", "instruction": i, "access": "all"}
                                              for i in instructions]})


def test_a_directive_in_a_task_or_instruction_stays_text(store: Store) -> None:
    """Mermaid takes `%%{...}%%` for a directive anywhere in its source, labels too: every `%` in a label goes
    out as the entity `#37;`, in the CLI's and the resource's diagram and in the web view's."""
    run_id = store.create_run(f"x {DIRECTIVE}", wf(DIRECTIVE, "50% more"), PLAN)
    lease, _ = store.claim(run_id)
    store.create_run("a round", wf(DIRECTIVE), PLAN, RunOptions(round=2), parent=lease)
    run = store.get_run(run_id)
    children = [store.get_run(c) for c in store.children(run_id)]
    manager = RunManager(engine=Engine(http_registry("http://127.0.0.1:9"), store))
    for text in (mermaid(run, children), diagram_source(_read_view(manager, run_id))):
        assert "%" not in text, text
        assert "task: x #37;#37;{init: {'themeCSS': 'rect{fill:re...\"" in text  # cut at 40 characters
        assert "<br/>50#37; more<br/>" in text
        assert text.count("<br/>#37;#37;{init: {'themeCSS'") == 2  # the run's step and the round's step


def test_review_rounds_are_numbered_among_rounds(store: Store) -> None:
    """A recursion child before a round does not shift the round's number: the run is round 1, its first
    correction round 2, the next 3."""
    run_id = store.create_run("t", wf("first try", "hard part"), PLAN)
    lease, _ = store.claim(run_id)
    store.create_run("hard part", wf("child step"), PLAN, parent=lease, parent_step=1)
    store.create_run("t", wf("fix it"), PLAN, RunOptions(round=2), parent=lease)
    store.create_run("t", wf("fix it again"), PLAN, RunOptions(round=3), parent=lease)
    store.finish_run(lease, RunStatus.COMPLETED, answer="done")
    children = [store.get_run(c) for c in store.children(run_id)]
    text = mermaid(store.get_run(run_id), children)
    subgraphs = [line.strip() for line in text.splitlines() if line.strip().startswith("subgraph")]
    assert subgraphs == ['subgraph c0["child of step 1: planned"]', 'subgraph c1["round 2: planned"]',
                         'subgraph c2["round 3: planned"]'], text
