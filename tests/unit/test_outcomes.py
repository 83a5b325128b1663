"""Which worker the outcomes let answer the final step: a record worse than a coin flip never keeps it when
something better is known, and workers with too few outcomes are tried before a record that bad."""

from __future__ import annotations

from conductor_mcp.models import RecipeUse, WorkerSpec
from conductor_mcp.runs.outcomes import Outcomes, PastRun

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


# -- shapes: recipes with their slots, and the conductor's own plans --------------------------------------------
TEAM = [*WORKERS, WorkerSpec(id="py", kind="python")]
PROGRAM = RecipeUse(name="program", slots={"solver": "a", "runner": "py"})
DRAFT = RecipeUse(name="draft-refine", slots={"drafter": "a", "solver": "a"})


def shaped(use: RecipeUse, reward: float, n: int, tokens: int, steps: int, model_steps: int,
           task: str = "Add the numbers {i} and {j}.") -> list[PastRun]:
    return [PastRun(task=task.format(i=i, j=i + 1), strategy=f"recipe:{use.name}", final_worker="a", steps=steps,
                    tokens=tokens, cost_usd=None, reward=reward, recipe=use, model_steps=model_steps)
            for i in range(n)]


def test_the_recipe_with_evidence_that_pays_is_chosen_and_decides_the_plan() -> None:
    past = rated("a", 0.5, 6, tokens=300) + shaped(PROGRAM, 1.0, 6, tokens=250, steps=2, model_steps=1)
    prior = Outcomes(past).prior(TASK, TEAM, "balanced", 5)
    assert prior is not None and prior.recipe == PROGRAM and prior.decided
    assert set(prior.shapes) == {"direct(solver=a)", "program(runner=py, solver=a)"}
    assert prior.shapes[PROGRAM.key].model_steps == 1 and prior.shapes[PROGRAM.key].steps == 2
    assert any("recipe program(runner=py, solver=a) chosen" in c for c in prior.changes)


def test_a_python_step_is_no_model_step_but_more_model_calls_must_earn_their_place() -> None:
    # the same reward: the program's tool step costs nothing, so the cheaper program wins; a draft and a
    # refinement cost two model calls and lose to one step unless they beat it by the margin
    same = rated("a", 1.0, 6, tokens=300)
    prior = Outcomes(same + shaped(PROGRAM, 1.0, 6, tokens=250, steps=2, model_steps=1)).prior(TASK, TEAM,
                                                                                              "balanced", 5)
    assert prior is not None and prior.recipe == PROGRAM
    prior = Outcomes(same + shaped(DRAFT, 1.0, 6, tokens=250, steps=2, model_steps=2)).prior(TASK, TEAM,
                                                                                            "balanced", 5)
    assert prior is not None and prior.recipe is not None and prior.recipe.name == "direct"


def test_a_shape_without_evidence_is_never_preferred() -> None:
    past = rated("a", 0.8, 6) + shaped(PROGRAM, 1.0, 1, tokens=10, steps=2, model_steps=1)  # one outcome only
    prior = Outcomes(past).prior(TASK, TEAM, "balanced", 5)
    assert prior is not None and prior.recipe is not None and prior.recipe.name == "direct"
    assert PROGRAM.key not in prior.shapes


def test_a_recipe_that_does_not_pay_on_a_kind_of_task_stops_being_chosen_for_it() -> None:
    # programs pay on sums and fail on prose; similarity decides per task
    sums = shaped(PROGRAM, 1.0, 6, 200, 2, 1, task="Add the numbers {i} and {j} and print the sum.")
    poems = shaped(PROGRAM, 0.0, 6, 200, 2, 1, task="Write a short poem about the colour {i} and mood {j}.")
    direct_sums = [PastRun(task=f"Add the numbers {i} and {i + 1} and print the sum.", strategy="single:a",
                           final_worker="a", steps=1, tokens=200, cost_usd=None, reward=0.0) for i in range(6)]
    direct_poems = [PastRun(task=f"Write a short poem about the colour {i} and mood {i + 1}.",
                            strategy="single:a", final_worker="a", steps=1, tokens=200, cost_usd=None, reward=1.0)
                    for i in range(6)]
    outcomes = Outcomes(sums + poems + direct_sums + direct_poems)
    on_sums = outcomes.prior("Add the numbers 40 and 2 and print the sum.", TEAM, "balanced", 5)
    on_poems = outcomes.prior("Write a short poem about the colour blue and a calm mood.", TEAM, "balanced", 5)
    assert on_sums is not None and on_sums.recipe == PROGRAM
    assert on_poems is not None and on_poems.recipe is not None and on_poems.recipe.name == "direct"


def test_a_recipe_whose_slot_worker_is_gone_is_not_planned() -> None:
    past = shaped(PROGRAM, 1.0, 6, tokens=250, steps=2, model_steps=1)
    prior = Outcomes(past).prior(TASK, WORKERS, "balanced", 5)  # no python worker in this pool
    assert prior is not None and prior.recipe is None and prior.shapes == {} and not prior.decided
