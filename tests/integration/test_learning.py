"""Learning from outcomes with the real bundled conductor and workers reached by litellm over HTTP.

The scripted server makes `bad` (listed first, described as the strongest) answer every sum wrongly
and `good` (listed second, described as small) answer rightly. Before any reward the conductor
follows the descriptions; after a calibration its final step goes to the worker that earned it.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from conductor_mcp.evals.grading import NumberCheck, SuiteTask
from conductor_mcp.evals.suite import run_eval
from conductor_mcp.models import Manifest, WorkerSpec
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.workers.registry import build_registry

from ..servers.openai_server import ScriptedServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TEMPLATES = (
    "Tom has {a} apples and buys {b} more. How many apples does Tom have now?",
    "A shelf holds {a} books and a second shelf holds {b} books. How many books are there in all?",
    "Mia ran {a} metres in the morning and {b} metres in the evening. How far did she run that day?",
    "A farm has {a} sheep and {b} goats. How many animals does the farm have?",
    "A baker made {a} rolls on Monday and {b} rolls on Tuesday. How many rolls did the baker make?",
)


def sums(n: int, seed: int) -> list[SuiteTask]:
    tasks = []
    for i in range(n):
        a, b = 11 + (seed * 7 + i * 13) % 80, 5 + (seed * 3 + i * 29) % 60
        text = TEMPLATES[(i + seed) % len(TEMPLATES)].format(a=a, b=b)
        tasks.append(SuiteTask(id=f"s{seed}-{i}", task=text, check=NumberCheck(type="number", answer=a + b)))
    return tasks


def _numbers(messages: list[dict[str, Any]]) -> tuple[int, int]:
    text = messages[-1]["content"]
    task = text.split("Overall task:\n", 1)[-1].split("\n\n", 1)[0]
    a, b = (int(x) for x in re.findall(r"\d+", task)[:2])
    return a, b


def right(messages: list[dict[str, Any]]) -> str:
    a, b = _numbers(messages)
    return f"{a} + {b} = {a + b}.\n#### {a + b}"


def wrong(messages: list[dict[str, Any]]) -> str:
    a, b = _numbers(messages)
    return f"{a} + {b} = {a + b + 1}.\n#### {a + b + 1}"


@pytest.fixture
def engine(server: ScriptedServer, store: Store) -> Engine:
    server.script(model="scripted-bad", reply=wrong)
    server.script(model="scripted-good", reply=right)
    workers = [
        WorkerSpec(id="bad", model="openai/scripted-bad", api_base=server.base_url, timeout_s=5,
                   description="the strongest model here: best at maths, use it for final answers"),
        WorkerSpec(id="good", model="openai/scripted-good", api_base=server.base_url, timeout_s=5,
                   description="a small model: fast, weak at reasoning"),
    ]
    return Engine(build_registry(Manifest(workers=workers), "test manifest"), store)


async def final_workers(engine: Engine, tasks: list[SuiteTask]) -> tuple[Counter[str], list[Any]]:
    runs = [await engine.plan(t.task) for t in tasks]
    return Counter(r.workflow.steps[-1].worker for r in runs), runs


async def test_calibration_moves_the_final_step_to_the_worker_that_earns_it(engine: Engine) -> None:
    new = sums(20, seed=5)
    before, runs = await final_workers(engine, new)
    assert all(r.plan.prior is None for r in runs)  # no outcomes: planning as before

    reports = await run_eval(RunManager(engine=engine), sums(20, seed=1), ["single:bad", "single:good"])
    assert reports["single:good"].correct == 20 and reports["single:bad"].correct == 0
    engine.learn_before = None  # the eval is over: learn from all of it

    after, runs = await final_workers(engine, new)
    assert after["good"] >= 18, f"before calibration {dict(before)}, after {dict(after)}"
    for run in runs:
        prior = run.plan.prior
        assert prior is not None and prior.final == ["good"]
        assert prior.workers["bad"].reward < 0.1 < 0.9 < prior.workers["good"].reward
        # each worker alone is the `direct` recipe on it: the one with evidence that it pays is planned as it
        # is, the task handed to `good` unwrapped, with no conductor call
        assert run.plan.source == "prior" and prior.decided and run.plan.recipe is not None
        assert run.plan.recipe.key == "direct(solver=good)" and run.workflow.steps[0].instruction == run.task
    print(f"\nfinal step before calibration: {dict(before)}; after: {dict(after)}")


async def test_the_same_outcomes_reversed_give_the_final_step_to_the_other_worker(
        engine: Engine, server: ScriptedServer) -> None:
    # a control: left to itself the bundled model may favour either id; here `bad` earns the rewards
    server.clear_scripts()
    server.script(model="scripted-bad", reply=right)
    server.script(model="scripted-good", reply=wrong)
    await run_eval(RunManager(engine=engine), sums(20, seed=1), ["single:bad", "single:good"])
    engine.learn_before = None
    after, _ = await final_workers(engine, sums(10, seed=7))
    assert after["bad"] >= 9, dict(after)


async def test_outcomes_decide_one_step_when_more_steps_do_not_pay(engine: Engine) -> None:
    await run_eval(RunManager(engine=engine), sums(6, seed=2), ["single:bad", "single:good"])
    for t in sums(4, seed=6):  # two-step workflows that earned half marks on similar tasks
        run = await engine.plan(t.task, workflow={"steps": [
            {"worker": "good", "instruction": "Solve the task.", "access": "none"},
            {"worker": "good", "instruction": "Check the answer above and give the final one.", "access": "all"}]})
        run = await RunManager(engine=engine).drive(run.id)  # only a finished run is rated
        engine.store.rate(run.id, 0.5, source="user")
    engine.learn_before = None
    run = await engine.plan(sums(1, seed=9)[0].task)
    prior = run.plan.prior
    assert prior is not None and prior.final == ["good"]
    assert prior.several_steps_reward is not None and prior.one_step_reward is not None
    assert prior.several_steps_reward < prior.one_step_reward and prior.max_steps == 1
    # one step on one worker is all that is left: the plan is decided without calling the model
    assert prior.decided and run.plan.source == "prior" and run.plan.usage.calls == 0
    assert [s.worker for s in run.workflow.steps] == ["good"]
    assert any("no conductor call" in c for c in prior.changes)
    # prefer=quality allows any shape that is not worse, but the answerer stays `good`
    quality = engine.prior(sums(1, seed=9)[0].task, ["bad", "good"], "quality")
    assert quality is not None and quality.final == ["good"]


async def test_prefer_cost_picks_the_cheaper_of_two_equal_workers(engine: Engine, server: ScriptedServer) -> None:
    server.clear_scripts()
    server.script(model="scripted-bad", reply=right)  # both right now; `good` pads its answers
    server.script(model="scripted-good", reply=lambda m: right(m) + " " + "padding " * 200)
    await run_eval(RunManager(engine=engine), sums(6, seed=3), ["single:bad", "single:good"])
    engine.learn_before = None
    task = sums(1, seed=4)[0].task
    cheap = engine.prior(task, ["bad", "good"], "cost")
    assert cheap is not None and cheap.final == ["bad"]
    assert cheap.workers["good"].mean_tokens > cheap.workers["bad"].mean_tokens


async def test_a_worker_rated_0_loses_the_final_step_to_an_untried_one(engine: Engine) -> None:
    # no calibration: a host rates only the runs it saw, and every one was answered by `bad` (listed
    # first, described as the strongest). A record worse than knowing nothing must not keep the final step.
    runs = RunManager(engine=engine)
    for t in sums(5, seed=8):
        run = await runs.plan(t.task, strategy="single:bad")
        await runs.drive(run.id)
        runs.rate(run.id, 0.0, note="wrong")
    after, planned = await final_workers(engine, sums(10, seed=11))
    assert after["good"] == 10, dict(after)
    for run in planned:
        prior = run.plan.prior
        assert prior is not None and prior.untried == ["good"] and prior.final == ["good"]
        assert prior.workers["bad"].reward < 0.5 and not prior.decided
        assert any("left to good" in c for c in prior.changes), prior.changes
