"""What past rewards say about a new task: which worker should answer it, and whether more steps pay.

Every rewarded root run (an eval's grade, a host's `rate_run`, a user's `rate`) is an outcome: its
task, the worker of its final step, its number of steps, its tokens and cost, and its reward. For a
new task each outcome is weighted by how similar its task is (TF-IDF cosine over words, computed here
from the user's own store; nothing is fetched), after RouteLLM's similarity-weighted ranking: the most
similar past tasks weigh ten times the least similar, so the estimate leans on tasks like this one and
falls back to the worker's overall record. litellm's routers were not used: its auto router needs an
embedding model behind an API, and its adaptive router learns from live traffic without a task
similarity; neither runs offline in-process.

The result is a `Prior` the planner applies where a small model cannot go wrong: it constrains the
final step's worker in the grammar (or repairs a remote conductor's plan), caps the number of steps
when several steps have not paid, and decides the plan outright when one step on one worker is left.
With no outcomes there is no prior and planning is as before.

Shapes are judged the same way, one level up: every recipe with the workers in its slots (recipes.py; a
`single:` run is the `direct` recipe on its worker) and the conductor's own plans (`own`) get a
similarity-weighted record. Where one with evidence that it pays (at least MIN_OUTCOMES runs, better than a
coin flip) scores best, with `prefer` trading reward against tokens and a margin that more steps must
earn, it is planned as it is, with no conductor call. A shape without evidence is never preferred to one
with it, so a recipe that does not pay on a kind of task stops being chosen for it.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..models import Prefer, Prior, Recipe, RecipeUse, RunOptions, ShapeRecord, WorkerRecord, WorkerSpec
from ..store import Store
from .recipes import SHIPPED

MIN_OUTCOMES = 2  # per worker, before its record counts at all
NEUTRAL = 0.5  # the reward estimate of a worker with no outcomes
PSEUDO_COUNT = 1.0  # weight of the neutral estimate every worker starts from
# how much a worker's relative cost (0..1) takes off its estimated reward, and the margin by which
# several steps must beat one step before they are allowed
COST_WEIGHT: dict[str, float] = {"quality": 0.0, "balanced": 0.15, "cost": 0.5}
SHAPE_MARGIN: dict[str, float] = {"quality": 0.0, "balanced": 0.05, "cost": 0.15}
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class PastRun:
    task: str
    strategy: str
    final_worker: str
    steps: int
    tokens: int
    cost_usd: float | None
    reward: float
    recipe: RecipeUse | None = None
    tool_s: float = 0.0  # seconds its python steps ran
    model_steps: int | None = None  # steps that called a model (None: all of them)


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if len(w) > 1]


def similarities(query: str, docs: Sequence[str]) -> list[float]:
    """Cosine similarity of `query` to each doc over TF-IDF word vectors fitted on docs + query."""
    bags = [Counter(_words(d)) for d in docs]
    q = Counter(_words(query))
    df: Counter[str] = Counter()
    for bag in [*bags, q]:
        df.update(bag.keys())
    n = len(bags) + 1

    def vector(bag: Counter[str]) -> dict[str, float]:
        v = {w: (1 + math.log(c)) * math.log((1 + n) / (1 + df[w])) for w, c in bag.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    qv = vector(q)
    return [sum(x * qv.get(w, 0.0) for w, x in vector(b).items()) for b in bags]


def weights(sims: Sequence[float]) -> list[float]:
    """RouteLLM-style weighting: 10^(s / max s), so the closest tasks weigh 10x the unrelated ones."""
    top = max(sims, default=0.0)
    if top <= 0:
        return [1.0 for _ in sims]
    return [10 ** (max(s, 0.0) / top) for s in sims]


def _estimate(pairs: Sequence[tuple[float, float]]) -> float:
    """The similarity-weighted mean reward of n outcomes, pulled toward 0.5 by a pseudo-count so that
    two outcomes do not decide alone: (n * mean + k * 0.5) / (n + k)."""
    if not pairs:
        return NEUTRAL
    mean = sum(w * r for w, r in pairs) / sum(w for w, _ in pairs)
    n = len(pairs)
    return (n * mean + PSEUDO_COUNT * NEUTRAL) / (n + PSEUDO_COUNT)


Group = list[tuple[float, "PastRun"]]  # past runs of one worker or shape, each with its task's similarity weight


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _grouped(ws: Sequence[float], keyed: Sequence[tuple[str, PastRun]]) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for w, (key, p) in zip(ws, keyed, strict=True):
        groups.setdefault(key, []).append((w, p))
    return groups


def _judged(task: str, keyed: Sequence[tuple[str, PastRun]]) -> dict[str, Group]:
    """Past runs grouped by key, weighted by their tasks' similarity to `task`: the groups with enough outcomes."""
    groups = _grouped(weights(similarities(task, [p.task for _, p in keyed])), keyed)
    return {k: g for k, g in groups.items() if len(g) >= MIN_OUTCOMES}


def _records(judged: dict[str, Group], prefer: Prefer, *, weighted_cost: bool) -> dict[str, dict[str, Any]]:
    """Each group's reward estimate, mean tokens and cost, and its score: the reward less `prefer`'s share of its
    cost against the dearest group's (dollars where any run was priced, else tokens)."""
    use_usd = any((p.cost_usd or 0) > 0 for g in judged.values() for _, p in g)

    def cost(g: Group) -> float:
        values = [(p.cost_usd or 0.0) if use_usd else float(p.tokens) for _, p in g]
        if weighted_cost:
            return sum(w * v for (w, _), v in zip(g, values, strict=True)) / sum(w for w, _ in g)
        return _mean(values)

    top_cost = max(cost(g) for g in judged.values()) or 1.0
    records = {}
    for key, g in judged.items():
        reward = _estimate([(w, p.reward) for w, p in g])
        costs = [p.cost_usd for _, p in g]
        records[key] = {"reward": round(reward, 4), "outcomes": len(g),
                        "mean_tokens": round(_mean([p.tokens for _, p in g]), 1),
                        "mean_cost_usd": None if any(c is None for c in costs) else _mean([c or 0.0 for c in costs]),
                        "score": round(reward - COST_WEIGHT[prefer] * cost(g) / top_cost, 4)}
    return records


class Outcomes:
    def __init__(self, past: Sequence[PastRun]) -> None:
        self.past = list(past)

    @classmethod
    def from_store(cls, store: Store, before: float | None = None) -> Outcomes:
        """Rewarded root runs; `before` keeps only ratings older than that (an eval does not learn from
        the grades of its own runs while it measures)."""
        past = []
        for row in store.rated_runs(before=before):
            options = RunOptions.load(json.loads(row["options"] or "{}"))
            recipe = json.loads(row["plan"] or "{}").get("recipe")
            past.append(PastRun(task=row["task"], strategy=options.strategy,
                                final_worker=row["final_worker"] or "", steps=int(row["n_steps"] or 0),
                                tokens=int(row["tokens"] or 0), cost_usd=row["cost_usd"],
                                reward=float(row["reward"]),
                                recipe=RecipeUse.model_validate(recipe) if recipe else None,
                                tool_s=float(row["tool_s"] or 0.0), model_steps=int(row["model_steps"] or 0)))
        return cls(past)

    def prior(self, task: str, workers: Sequence[WorkerSpec], prefer: Prefer, max_steps: int,
              book: Mapping[str, Recipe] | None = None) -> Prior | None:
        """The prior for `task` over `workers` (`book`: the recipes; default the shipped ones); None when no
        worker and no shape has enough outcomes to judge."""
        models = [w for w in workers if w.kind == "model"]  # a python worker never answers a task alone
        prior = self._worker_prior(task, models, prefer, max_steps)
        return self._shape_prior(prior, task, workers, prefer, max_steps, SHIPPED if book is None else book)

    def _use(self, p: PastRun, book: Mapping[str, Recipe]) -> RecipeUse | None:
        if p.recipe is not None:
            return p.recipe
        if p.strategy.startswith("single:") and "direct" in book:  # stored before recipes were recorded
            return RecipeUse(name="direct", slots={"solver": p.strategy.removeprefix("single:")})
        return None

    def _shape_prior(self, prior: Prior | None, task: str, workers: Sequence[WorkerSpec], prefer: Prefer,
                     max_steps: int, book: Mapping[str, Recipe]) -> Prior | None:
        kinds = {w.id: w.kind for w in workers}
        keyed: list[tuple[str, PastRun, RecipeUse | None]] = []
        for p in self.past:
            use = self._use(p, book)
            if use is not None:
                recipe = book.get(use.name)
                if recipe is not None and len(recipe.steps) <= max_steps and all(
                        kinds.get(use.slots.get(slot, "")) == kind for slot, kind in recipe.slots.items()):
                    keyed.append((use.key, p, use))
            elif p.strategy == "conductor" and p.final_worker in kinds:
                keyed.append(("own", p, None))
        if not keyed:
            return prior
        uses = {use.key: use for _, _, use in keyed if use is not None}
        judged = _judged(task, [(key, p) for key, p, _ in keyed])
        if not judged:
            return prior
        # a shape's tokens are weighted like its rewards: on tasks like this one (maths and code differ)
        common = _records(judged, prefer, weighted_cost=True)
        records = {key: ShapeRecord(
            **common[key], steps=round(_mean([p.steps for _, p in g]), 2),
            tool_s=round(_mean([p.tool_s for _, p in g]), 3),
            model_steps=round(_mean([p.steps if p.model_steps is None else p.model_steps for _, p in g]), 2))
            for key, g in judged.items()}
        if prior is None:
            first = next(w.id for w in workers if w.kind == "model")
            prior = Prior(prefer=prefer, outcomes=len(keyed), workers={}, final=[first])
        prior.shapes = records
        sound = [k for k in records if records[k].reward >= NEUTRAL]
        if not sound:
            return prior

        def merit(key: str) -> tuple[float, float]:
            # more model calls must earn their place: such a shape wins only by the margin `prefer` sets (a python
            # step costs no tokens, and its seconds are small: its cost is in the score already)
            r = records[key]
            return r.score - (SHAPE_MARGIN[prefer] if r.model_steps > 1 else 0.0), -r.steps

        best = max(sound, key=merit)
        if best == "own":
            prior.changes.append(f"the conductor's own plans score best on similar tasks "
                                 f"(estimated reward {records[best].reward:.2f}): it plans")
            return prior
        prior.recipe = uses[best]
        prior.decided = True
        others = ", ".join(f"{k} {records[k].reward:.2f}" for k in sorted(records, key=merit, reverse=True)
                           if k != best)
        prior.changes.append(f"recipe {best} chosen by the outcomes: estimated reward {records[best].reward:.2f} "
                             f"at {records[best].mean_tokens:.0f} tokens a task (others: {others or 'none'}); "
                             "no conductor call")
        return prior

    def _worker_prior(self, task: str, workers: Sequence[WorkerSpec], prefer: Prefer,
                      max_steps: int) -> Prior | None:
        """Which model worker should answer the final step, and whether several steps pay."""
        ids = [w.id for w in workers]
        relevant = [p for p in self.past if p.final_worker in ids]
        if not relevant:
            return None
        ws = weights(similarities(task, [p.task for p in relevant]))
        by_worker = _grouped(ws, [(p.final_worker, p) for p in relevant])
        judged = {i: runs for i, runs in by_worker.items() if len(runs) >= MIN_OUTCOMES}
        if not judged:
            return None
        records = {i: WorkerRecord(**fields) for i, fields in _records(judged, prefer, weighted_cost=False).items()}

        def rank(i: str) -> tuple[float, int]:
            return records[i].score, -ids.index(i)

        # a worker that does worse than a coin flip answers only when nothing better is known: a cheaper one
        # under prefer=cost does not outrank a worker with a good record
        sound = [i for i in records if records[i].reward >= NEUTRAL]
        best = max(sound or records, key=rank)
        untried = [i for i in ids if i not in judged]
        # a record worse than knowing nothing loses to the workers whose few outcomes (none, or one) promise
        # more: else a worker rated 0 every time keeps the final step only because nothing else was rated
        explore = [i for i in untried if _estimate([(w, p.reward) for w, p in by_worker.get(i, [])])
                   > records[best].reward] if not sound else []
        final = explore or [best]
        prior = Prior(prefer=prefer, outcomes=len(relevant), workers=records, untried=untried, final=final)
        if explore:
            prior.changes.append(f"final step taken from {best} (estimated reward {records[best].reward:.2f}) "
                                 f"and left to {', '.join(explore)}, whose few outcomes promise more")
            return prior  # nothing is known of their shapes yet: the model plans, under that final-step rule
        # does a workflow of several steps pay, against one step on the chosen worker?
        one = [(w, p.reward) for w, p in judged[best] if p.steps == 1]
        several = [(w, p.reward) for w, p in zip(ws, relevant, strict=True) if p.steps > 1]
        if one:
            prior.one_step_reward = round(_estimate(one), 4)
        if len(several) >= MIN_OUTCOMES:
            prior.several_steps_reward = round(_estimate(several), 4)
        if (prior.one_step_reward is not None and prior.several_steps_reward is not None
                and prior.several_steps_reward <= prior.one_step_reward + SHAPE_MARGIN[prefer]):
            prior.max_steps = 1
        if prior.max_steps == 1 or max_steps == 1:
            prior.decided = True
        return prior
