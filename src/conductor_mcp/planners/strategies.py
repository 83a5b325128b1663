"""Baseline strategies as planners, so one engine and one trace format serve every comparison.

- `single:<worker>`: the whole task to one worker, as it is (the `direct` recipe on that worker).
- `moa`: Mixture-of-Agents (togethercomputer/MoA): proposers answer in parallel, unaware of each other,
  then an aggregator synthesises their responses; one proposer layer, so it fits a 5-step workflow.
- `recipe:<name>[:<worker>]`: a recipe (recipes.py), its model slots on the strongest model worker or on
  the one named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import WorkflowError
from ..models import PlanInfo, Prior, Recipe, RecipeUse, Step, WorkerSpec, Workflow
from ..runs.budget import BudgetGuard
from ..runs.recipes import SHIPPED, instantiate, parse_recipe_strategy
from .base import PlanResult, PlanSink, ReviewResult

# The aggregate-and-synthesize prompt of togethercomputer/MoA, as the aggregator's instruction.
MOA_AGGREGATE = (
    "You have been provided with a set of responses from various models to the task. Synthesize these "
    "responses into a single, high-quality response. Critically evaluate the information, recognizing that "
    "some of it may be biased or incorrect. Do not simply replicate the given answers; offer a refined, "
    "accurate and comprehensive reply to the task."
)


class FixedPlanner:
    """A strategy writes its workflow by rule: it never reviews (rounds are the conductor's)."""

    name: str

    def check(self, workers: Sequence[WorkerSpec], max_steps: int) -> None:
        """Raise WorkflowError when this strategy cannot plan over these workers and steps."""

    async def review(self, task: str, round_text: str, answer: str, workers: Sequence[WorkerSpec],
                     max_steps: int, allow_recursion: bool = False,
                     guard: BudgetGuard | None = None) -> ReviewResult:
        return ReviewResult(None, PlanInfo(source="strategy", planner=self.name, attempts=0))


class RecipePlanner(FixedPlanner):
    def __init__(self, strategy: str, book: Mapping[str, Recipe]) -> None:
        self.name = strategy
        self.book = book

    def use(self, workers: Sequence[WorkerSpec]) -> RecipeUse:
        return parse_recipe_strategy(self.name, self.book, workers)

    def check(self, workers: Sequence[WorkerSpec], max_steps: int) -> None:
        recipe = self.book[self.use(workers).name]
        if len(recipe.steps) > max_steps:
            raise WorkflowError(f"strategy: {self.name}: the recipe has {len(recipe.steps)} steps, more than "
                                f"max_steps={max_steps}")

    async def plan(self, task: str, workers: Sequence[WorkerSpec], max_steps: int,
                   allow_recursion: bool = False, prior: Prior | None = None,
                   guard: BudgetGuard | None = None, progress: PlanSink | None = None) -> PlanResult:
        self.check(workers, max_steps)
        use = self.use(workers)
        wf = instantiate(self.book[use.name], use, task)
        return PlanResult(wf, PlanInfo(source="strategy", planner=self.name, attempts=0, recipe=use))


class SinglePlanner(RecipePlanner):
    """`single:<worker>`: the shipped `direct` recipe on that worker, whatever the manifest's recipes say."""

    def __init__(self, worker: str) -> None:
        super().__init__(f"single:{worker}", SHIPPED)
        self.worker = worker

    def use(self, workers: Sequence[WorkerSpec]) -> RecipeUse:
        ids = [w.id for w in workers if w.kind == "model"]
        if self.worker not in ids:
            raise WorkflowError(f"strategy: single:{self.worker}: unknown or unavailable worker (a model worker); "
                                f"allowed: {', '.join(ids)}")
        return RecipeUse(name="direct", slots={"solver": self.worker})


class MoAPlanner(FixedPlanner):
    name = "moa"

    def __init__(self, proposers: int = 4) -> None:
        self.proposers = proposers  # distinct workers, as MoA's proposers are distinct models

    def check(self, workers: Sequence[WorkerSpec], max_steps: int) -> None:
        if max_steps < 2:
            raise WorkflowError("strategy: moa needs max_steps >= 2 (proposers plus an aggregator)")

    async def plan(self, task: str, workers: Sequence[WorkerSpec], max_steps: int,
                   allow_recursion: bool = False, prior: Prior | None = None,
                   guard: BudgetGuard | None = None, progress: PlanSink | None = None) -> PlanResult:
        self.check(workers, max_steps)
        ids = [w.id for w in workers if w.kind == "model"]  # a python worker proposes nothing
        k = min(self.proposers, max_steps - 1, len(ids))
        steps = [Step(worker=ids[i], instruction=task[:8000], access="none") for i in range(k)]
        steps.append(Step(worker=ids[0], instruction=MOA_AGGREGATE, access="all"))
        return PlanResult(Workflow(steps=steps), PlanInfo(source="strategy", planner=self.name, attempts=0))


def strategy_planner(strategy: str, book: Mapping[str, Recipe] | None = None
                     ) -> SinglePlanner | MoAPlanner | RecipePlanner | None:
    """The planner for a strategy name; None means the conductor. `book`: the registry's recipes."""
    if strategy == "conductor":
        return None
    if strategy == "moa":
        return MoAPlanner()
    if strategy.startswith("single:") and len(strategy) > len("single:"):
        return SinglePlanner(strategy.removeprefix("single:"))
    if strategy.startswith("recipe:") and len(strategy) > len("recipe:"):
        return RecipePlanner(strategy, SHIPPED if book is None else book)
    raise WorkflowError(f"strategy: {strategy!r}; allowed: conductor, moa, single:<worker id>, "
                        "recipe:<name>[:<worker id>]")
