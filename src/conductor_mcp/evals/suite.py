"""Run a suite under several strategies on one pool, grade every answer, and compare side by side.

Each graded answer is stored as its run's reward, so an eval also teaches the conductor (outcomes.py).
While an eval runs, the conductor learns only from rewards given before it started: its measured
accuracy never rests on the grades of the same eval's other runs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConductorError, WorkflowError
from ..models import MAX_STEPS_LIMIT, Prefer, RunStatus
from ..planners.strategies import strategy_planner
from ..runs.recipes import usable
from .grading import SuiteTask, grade_async

if TYPE_CHECKING:
    from ..runs.run_manager import RunManager


@dataclass
class TaskResult:
    task_id: str
    strategy: str
    run_id: str | None
    status: str
    score: float
    detail: str
    tokens: int
    calls: int
    cost_usd: float | None
    seconds: float
    steps: int
    final_worker: str | None
    tool_seconds: float = 0.0  # seconds its python steps ran (they count 0 tokens)


@dataclass
class StrategyReport:
    name: str
    results: list[TaskResult] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.results)

    @property
    def correct(self) -> int:
        return sum(1 for r in self.results if r.score >= 1.0)

    def mean(self, attr: str) -> float:
        values = [float(getattr(r, attr) or 0.0) for r in self.results]
        return sum(values) / len(values) if values else 0.0

    def summary(self) -> dict[str, Any]:
        costs = [r.cost_usd for r in self.results]
        return {
            "accuracy": round(self.correct / self.n, 4) if self.n else 0.0,
            "correct": self.correct, "n": self.n,
            "mean_reward": round(self.mean("score"), 4),
            "mean_tokens": round(self.mean("tokens"), 1),
            "mean_calls": round(self.mean("calls"), 2),
            "mean_cost_usd": None if any(c is None for c in costs) else round(self.mean("cost_usd"), 6),
            "mean_seconds": round(self.mean("seconds"), 2),
            "mean_steps": round(self.mean("steps"), 2),
            "mean_tool_seconds": round(self.mean("tool_seconds"), 3),
        }


Progress = Callable[[int, int, TaskResult], Awaitable[None]]


def _models(runs: RunManager) -> list[str]:
    registry = runs.registry
    return [i for i in registry.available_ids() if registry.spec(i).kind == "model"]


def _recipes(runs: RunManager) -> list[str]:
    """The recipes this pool can fill, other than `direct` (which `single:<worker>` runs per worker)."""
    registry = runs.registry
    specs = [registry.spec(i) for i in registry.available_ids()]
    return [f"recipe:{n}" for n in usable(registry.recipes, specs) if n != "direct"]


def parse_strategies(text: str | None, runs: RunManager) -> list[str]:
    """`conductor,moa,single:W,recipe:R` (default: the conductor, MoA, every model worker alone and every
    recipe the pool can fill)."""
    ids = _models(runs)
    if not text:
        return ["conductor", *(["moa"] if len(ids) > 1 else []), *[f"single:{i}" for i in ids], *_recipes(runs)]
    names = [s.strip() for s in text.split(",") if s.strip()]
    registry = runs.registry
    specs = [registry.spec(i) for i in registry.available_ids()]
    for name in names:
        if name in ("conductor", "moa"):
            continue
        try:
            planner = strategy_planner(name, registry.recipes)
            if planner is not None:
                planner.check(specs, MAX_STEPS_LIMIT)
        except WorkflowError as exc:
            raise ConductorError(f"--strategies: {name}: {exc}") from None
    return names


def calibration_strategies(runs: RunManager) -> list[str]:
    """Every model worker alone (the `direct` recipe), every other recipe the pool can fill, then the
    conductor's own plans: every shape a new pool may choose gets evidence from its first run."""
    return [*[f"single:{i}" for i in _models(runs)], *_recipes(runs), "conductor"]


async def run_one(runs: RunManager, task: SuiteTask, strategy: str, prefer: Prefer | None) -> TaskResult:
    started = time.perf_counter()
    run_id: str | None = None
    try:
        run = await runs.plan(task.task, strategy=strategy, prefer=prefer)
        run = await runs.drive(run.id)
        run_id = run.id
    except ConductorError as exc:  # a run that cannot even start counts as wrong
        return TaskResult(task.id, strategy, None, "failed", 0.0, f"not run: {exc}", 0, 0, 0.0,
                          time.perf_counter() - started, 0, None)
    seconds = time.perf_counter() - started
    answer = run.answer if run.status == RunStatus.COMPLETED else None
    grade = await grade_async(task.check, answer)
    detail = grade.detail if answer is not None else f"run {run.status.value}: {run.error or 'no answer'}"
    runs.rate(run.id, grade.score, note=f"eval {task.id}: {detail}"[:500], source="eval")
    usage = runs.tree_usage(run.id)
    tool_s = sum(s.latency_s or 0.0 for s in run.steps if s.code is not None)
    return TaskResult(task.id, strategy, run_id, run.status.value, grade.score, detail, usage.total_tokens,
                      usage.calls, usage.cost_usd, seconds, len(run.steps),
                      run.steps[-1].worker if run.steps else None, tool_s)


async def run_eval(runs: RunManager, tasks: Sequence[SuiteTask], strategies: Sequence[str],
                   prefer: Prefer | None = None, progress: Progress | None = None) -> dict[str, StrategyReport]:
    """Every task under every strategy, task by task (so a stopped eval still compares like with like)."""
    runs.learn_only_before(time.time())
    reports = {s: StrategyReport(s) for s in strategies}
    total, done = len(tasks) * len(strategies), 0
    for task in tasks:
        for strategy in strategies:
            result = await run_one(runs, task, strategy, prefer)
            reports[strategy].results.append(result)
            done += 1
            if progress is not None:
                await progress(done, total, result)
    return reports


def report_json(reports: dict[str, StrategyReport], suite: str) -> dict[str, Any]:
    return {
        "suite": suite,
        "strategies": {name: r.summary() for name, r in reports.items()},
        "runs": [{"task_id": t.task_id, "strategy": t.strategy, "run_id": t.run_id, "status": t.status,
                  "score": t.score, "detail": t.detail, "tokens": t.tokens, "steps": t.steps,
                  "final_worker": t.final_worker, "tool_seconds": round(t.tool_seconds, 3)}
                 for r in reports.values() for t in r.results],
    }


def report_table(reports: dict[str, StrategyReport]) -> str:
    width = max([len("strategy"), *(len(n) for n in reports)])
    rows = [f"{'strategy':<{width}}  {'correct':>9} {'accuracy':>8} {'tokens':>8} {'calls':>6} {'steps':>6} "
            f"{'cost':>10} {'secs':>7}"]
    for name, r in reports.items():
        s = r.summary()
        cost = "n/a" if s["mean_cost_usd"] is None else f"${s['mean_cost_usd']:.5f}"
        rows.append(f"{name:<{width}}  {f'{r.correct}/{r.n}':>9} {s['accuracy']:>8.0%} {s['mean_tokens']:>8.0f} "
                    f"{s['mean_calls']:>6.1f} {s['mean_steps']:>6.1f} {cost:>10} {s['mean_seconds']:>7.1f}")
    rows.append("(tokens, calls, steps, cost and seconds are means per task; tokens include the conductor's own)")
    return "\n".join(rows)
