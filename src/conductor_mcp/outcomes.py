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
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .models import Prefer, Prior, RunOptions, WorkerRecord, WorkerSpec
from .store import Store

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
            past.append(PastRun(task=row["task"], strategy=options.strategy,
                                final_worker=row["final_worker"] or "", steps=int(row["n_steps"] or 0),
                                tokens=int(row["tokens"] or 0), cost_usd=row["cost_usd"],
                                reward=float(row["reward"])))
        return cls(past)

    def prior(self, task: str, workers: Sequence[WorkerSpec], prefer: Prefer, max_steps: int) -> Prior | None:
        """The prior for `task` over `workers`; None when no worker has enough outcomes to judge."""
        ids = [w.id for w in workers]
        relevant = [p for p in self.past if p.final_worker in ids]
        if not relevant:
            return None
        ws = weights(similarities(task, [p.task for p in relevant]))
        by_worker: dict[str, list[tuple[float, PastRun]]] = {}
        for w, p in zip(ws, relevant, strict=True):
            by_worker.setdefault(p.final_worker, []).append((w, p))
        judged = {i: runs for i, runs in by_worker.items() if len(runs) >= MIN_OUTCOMES}
        if not judged:
            return None
        use_usd = any((p.cost_usd or 0) > 0 for runs in judged.values() for _, p in runs)

        def mean_cost(runs: list[tuple[float, PastRun]]) -> float:
            values = [(p.cost_usd or 0.0) if use_usd else float(p.tokens) for _, p in runs]
            return sum(values) / len(values)

        top_cost = max(mean_cost(r) for r in judged.values()) or 1.0
        records = {}
        for i, runs in judged.items():
            reward = _estimate([(w, p.reward) for w, p in runs])
            costs = [p.cost_usd for _, p in runs]
            records[i] = WorkerRecord(
                reward=round(reward, 4), outcomes=len(runs),
                mean_tokens=round(sum(p.tokens for _, p in runs) / len(runs), 1),
                mean_cost_usd=None if any(c is None for c in costs) else sum(c or 0.0 for c in costs) / len(costs),
                score=round(reward - COST_WEIGHT[prefer] * mean_cost(runs) / top_cost, 4))
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
