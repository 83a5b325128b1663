"""Recipes learned from outcomes: the real bundled conductor, a worker reached by litellm over HTTP, and the
python worker running real programs in its sandbox.

Two pools of one model worker and one python worker. In the first, the model answers sums wrongly in prose
but writes correct programs when asked for one; in the second, its programs are wrong and its prose right.
Before any outcome the conductor writes its own plans; after `calibrate` on 20 tasks the outcomes choose, on
new tasks, the recipe that pays in each pool.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conductor_mcp.evals.grading import grade_async
from conductor_mcp.evals.suite import calibration_strategies, run_eval
from conductor_mcp.models import Manifest, WorkerSpec
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.workers.registry import build_registry

from ..servers.openai_server import ScriptedServer
from .test_learning import sums

# 20 plans by the bundled conductor each: about 3 minutes alone on 2 cores, and more than the suite's 300 s per test
# when the machine is shared; the cap is there to catch a hang, not to time the model
pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(900)]


def _numbers(messages: list[dict[str, Any]]) -> tuple[int, int]:
    text = messages[-1]["content"]
    task = text.split("Overall task:\n", 1)[-1].split("\n\n", 1)[0]
    a, b = (int(x) for x in re.findall(r"\d+", task)[:2])
    return a, b


def model(program_right: bool) -> Any:
    """A scripted model: programs right or wrong, prose the other way round; it states what a program printed
    when it sees one run."""

    def reply(messages: list[dict[str, Any]]) -> str:
        text = messages[-1]["content"]
        a, b = _numbers(messages)
        printed = re.search(r"Step 1 response:\n(-?\d+)", text)
        if printed and "Your subtask:" in text and "program" in text.split("Your subtask:")[-1]:
            return f"The program printed {printed[1]}.\n#### {printed[1]}"
        if "Python program" in text or "```python block" in text:
            return f"Here is the program.\n```python\nprint({a} + {b}{'' if program_right else ' + 1'})\n```\n"
        total = a + b + 1 if program_right else a + b
        return f"{a} + {b} = {total}.\n#### {total}"

    return reply


def engine_for(server: ScriptedServer, store: Store, name: str, program_right: bool) -> Engine:
    server.script(model=f"scripted-{name}", reply=model(program_right))
    workers = [WorkerSpec(id="coder", model=f"openai/scripted-{name}", api_base=server.base_url, timeout_s=5,
                          description="a coder model: writes programs, fair at maths"),
               WorkerSpec(id="py", kind="python", timeout_s=5)]
    return Engine(build_registry(Manifest(workers=workers), "test manifest"), store)


async def chosen(engine: Engine, seed: int) -> tuple[Counter[str], list[Any]]:
    runs = [await engine.plan(t.task) for t in sums(20, seed=seed)]
    return Counter(r.plan.recipe.name if r.plan.recipe else "own plan" for r in runs), runs


@pytest.mark.parametrize(("program_right", "pays"), [(True, "program"), (False, "direct")])
async def test_calibration_teaches_the_recipe_that_pays(server: ScriptedServer, tmp_path: Path,
                                                        program_right: bool, pays: str) -> None:
    store = Store(tmp_path / "traces.db")
    engine = engine_for(server, store, "coder-a" if program_right else "coder-b", program_right)
    runs = RunManager(engine=engine)
    before, _ = await chosen(engine, seed=5)
    assert before == Counter({"own plan": 20})  # no outcomes: the conductor writes its own workflows

    strategies = calibration_strategies(runs)
    assert strategies == ["single:coder", "recipe:program", "recipe:program-check", "recipe:test-and-fix",
                          "recipe:draft-refine", "conductor"]
    reports = await run_eval(runs, sums(20, seed=1), strategies)
    program, direct = reports["recipe:program"], reports["single:coder"]
    assert (program.correct, direct.correct) == ((20, 0) if program_right else (0, 20))
    engine.learn_before = None  # the calibration is over: learn from all of it

    after, plans = await chosen(engine, seed=5)
    assert after[pays] >= 18, f"before calibration {dict(before)}, after {dict(after)}"
    for run in plans:
        prior = run.plan.prior
        assert prior is not None and run.plan.source == "prior" and prior.recipe == run.plan.recipe
        best = prior.shapes[run.plan.recipe.key]
        assert best.reward > 0.9 and best.outcomes == 20
    # the chosen plans answer rightly when run, the python steps' programs kept in the trace
    tasks = {t.task: t for t in sums(20, seed=5)}
    right = 0
    for run in plans:
        done = await runs.drive(run.id)
        grade = await grade_async(tasks[done.task].check, done.answer)
        right += grade.score >= 1.0
        if pays == "program":
            assert done.steps[1].code is not None and done.steps[1].usage.total_tokens == 0
    assert right >= 18
    print(f"\nrecipes chosen before calibration: {dict(before)}; after: {dict(after)}")
    store.close()
