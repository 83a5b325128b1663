"""Which worker the outcomes let answer the final step: a record worse than a coin flip never keeps it when
something better is known, and workers with too few outcomes are tried before a record that bad."""

from __future__ import annotations

from conductor_mcp.models import WorkerSpec
from conductor_mcp.outcomes import Outcomes, PastRun

WORKERS = [WorkerSpec(id="a", model="openai/a"), WorkerSpec(id="b", model="openai/b")]
TASK = "Add the two numbers in the question."


def rated(worker: str, reward: float, n: int, tokens: int = 100) -> list[PastRun]:
    return [PastRun(task=f"Add the numbers {i} and {i + 1}.", strategy=f"single:{worker}", final_worker=worker,
                    steps=1, tokens=tokens, cost_usd=None, reward=reward) for i in range(n)]


def test_a_worker_rated_0_gives_way_to_an_untried_one() -> None:
    prior = Outcomes(rated("a", 0.0, 5)).prior(TASK, WORKERS, "balanced", 5)
    assert prior is not None and prior.final == ["b"] and prior.untried == ["b"]
    assert not prior.decided and prior.max_steps is None  # nothing is known of b's shapes: the model plans
    assert any("left to b" in c for c in prior.changes)


def test_a_single_poor_outcome_still_promises_more_than_five() -> None:
    prior = Outcomes(rated("a", 0.0, 5) + rated("b", 0.0, 1)).prior(TASK, WORKERS, "balanced", 5)
    assert prior is not None and prior.final == ["b"]  # 0.25 estimated against 0.08


def test_cheapness_does_not_outrank_a_sound_record() -> None:
    # under prefer=cost a cheap worker scoring 0.45 would win on score; the sound one answers instead
    past = rated("a", 0.45, 5, tokens=10) + rated("b", 0.9, 5, tokens=1000)
    prior = Outcomes(past).prior(TASK, WORKERS, "cost", 5)
    assert prior is not None and prior.final == ["b"]


def test_a_good_record_keeps_the_final_step_and_decides_one_step() -> None:
    prior = Outcomes(rated("a", 1.0, 5)).prior(TASK, WORKERS, "balanced", 1)
    assert prior is not None and prior.final == ["a"] and prior.untried == ["b"] and prior.decided
