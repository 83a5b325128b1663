"""Recipes: named workflow shapes with worker slots, shipped here and definable in a manifest (`recipes:`).

A recipe gives a model what it lacks rather than choosing among models: `program` has a model write a
program that the python worker runs exactly (program-aided reasoning), `test-and-fix` runs a solution
against asserts drawn from the task's own examples and has it corrected by what failed (self-debugging).
The outcomes (outcomes.py) choose between recipes where they have evidence; `calibrate` runs each one so
that they do. Planning a recipe fills its slots with workers of the slot's kind: by default the strongest
model worker (the manifest's first) and the first python worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import WorkflowError
from ..models import RECIPE_TASK, Recipe, RecipeStep, RecipeUse, Step, WorkerSpec, Workflow

PROGRAM_INSTRUCTION = (
    "Write a Python program that computes the answer to the task and prints it: the final answer alone on the "
    "last line. Reply with the whole program in one ```python block.")

SHIPPED: dict[str, Recipe] = {
    "direct": Recipe(
        description="one step: the task handed to the worker as it is",
        slots={"solver": "model"},
        steps=[RecipeStep(slot="solver", instruction=RECIPE_TASK)]),
    "program": Recipe(
        description="a worker writes a program that prints the answer; the python worker runs it; what it "
                    "printed is the answer",
        slots={"solver": "model", "runner": "python"},
        steps=[RecipeStep(slot="solver", instruction=PROGRAM_INSTRUCTION),
               RecipeStep(slot="runner", instruction="Run the program of step 0.", access=[0])]),
    "program-check": Recipe(
        description="as program, then the worker states the final answer from what the program printed, or "
                    "solves the task itself when the program failed",
        slots={"solver": "model", "runner": "python"},
        steps=[RecipeStep(slot="solver", instruction=PROGRAM_INSTRUCTION),
               RecipeStep(slot="runner", instruction="Run the program of step 0.", access=[0]),
               RecipeStep(slot="solver", access=[0, 1], instruction=(
                   "Give the final answer to the task. If the program of step 0 ran and printed a result, state "
                   "that result; if it failed, solve the task yourself step by step."))]),
    "test-and-fix": Recipe(
        description="a worker writes the solution with asserts from the task's examples; the python worker "
                    "runs them; the worker returns the solution corrected by what failed",
        slots={"solver": "model", "runner": "python"},
        steps=[RecipeStep(slot="solver", instruction=(
                   "Write the solution to the task in one ```python block, followed by assert statements that "
                   "check it against the examples given in the task and print('all tests passed') at the end.")),
               RecipeStep(slot="runner", instruction="Run the code of step 0.", access=[0]),
               RecipeStep(slot="solver", access=[0, 1], instruction=(
                   "Return the final solution to the task in one ```python block, without the asserts: the "
                   "solution of step 0, corrected wherever the run in step 1 shows a failure."))]),
    "draft-refine": Recipe(
        description="one worker drafts a solution; a worker writes the final answer, improving the draft",
        slots={"drafter": "model", "solver": "model"},
        steps=[RecipeStep(slot="drafter", instruction="Draft a solution to the task."),
               RecipeStep(slot="solver", access=[0],
                          instruction="Write the final answer to the task, fixing any error in the draft of "
                                      "step 0.")]),
}


def recipe_book(manifest_recipes: Mapping[str, Recipe | None]) -> dict[str, Recipe]:
    """The shipped recipes, with the manifest's added or replacing them (null removes one)."""
    book = dict(SHIPPED)
    for name, recipe in manifest_recipes.items():
        if recipe is None:
            book.pop(name, None)
        else:
            book[name] = recipe
    return book


def default_slots(recipe: Recipe, workers: Sequence[WorkerSpec], model: str | None = None) -> dict[str, str] | None:
    """Each slot filled: model slots with `model` (default the first model worker), python slots with the first
    python worker. None when these workers lack a kind the recipe needs."""
    models = [w.id for w in workers if w.kind == "model"]
    pythons = [w.id for w in workers if w.kind == "python"]
    pick = {"model": model or (models[0] if models else None), "python": pythons[0] if pythons else None}
    slots = {slot: pick[kind] for slot, kind in recipe.slots.items()}
    if any(w is None for w in slots.values()):
        return None
    return {s: w for s, w in slots.items() if w is not None}


def instantiate(recipe: Recipe, use: RecipeUse, task: str) -> Workflow:
    """The recipe's workflow with its slots filled as `use` says; {task} becomes the task as it is."""
    steps = [Step(worker=use.slots[s.slot], access=s.access,
                  instruction=task[:8000] if s.instruction.strip() == RECIPE_TASK else s.instruction)
             for s in recipe.steps]
    return Workflow(steps=steps)


def check_use(book: Mapping[str, Recipe], use: RecipeUse, workers: Sequence[WorkerSpec]) -> Recipe:
    """The recipe `use` names, if its slots are filled with workers of the right kinds from `workers`."""
    recipe = book.get(use.name)
    if recipe is None:
        raise WorkflowError(f"recipe: {use.name!r} is not a recipe here; known: {', '.join(sorted(book))}")
    kinds = {w.id: w.kind for w in workers}
    for slot, kind in recipe.slots.items():
        worker = use.slots.get(slot)
        if worker not in kinds:
            raise WorkflowError(f"recipe {use.name}: slot {slot!r}: {worker!r} is not an available worker")
        if kinds[worker] != kind:
            raise WorkflowError(f"recipe {use.name}: slot {slot!r} needs a {kind} worker; {worker!r} is a "
                                f"{kinds[worker]} worker")
    return recipe


def parse_recipe_strategy(strategy: str, book: Mapping[str, Recipe], workers: Sequence[WorkerSpec]) -> RecipeUse:
    """`recipe:NAME` (model slots on the strongest model worker) or `recipe:NAME:WORKER`, checked."""
    _, _, rest = strategy.partition(":")
    name, _, model = rest.partition(":")
    recipe = book.get(name)
    if recipe is None:
        raise WorkflowError(f"strategy: {strategy!r}: no recipe {name!r}; known: {', '.join(sorted(book))}")
    if model and model not in [w.id for w in workers if w.kind == "model"]:
        raise WorkflowError(f"strategy: {strategy!r}: {model!r} is not an available model worker")
    slots = default_slots(recipe, workers, model or None)
    if slots is None:
        needs = sorted(set(recipe.slots.values()))
        raise WorkflowError(f"strategy: {strategy!r}: recipe {name} needs {' and '.join(needs)} worker(s); "
                            "a python worker is declared in the manifest with `kind: python`")
    use = RecipeUse(name=name, slots=slots)
    check_use(book, use, workers)
    return use


def usable(book: Mapping[str, Recipe], workers: Sequence[WorkerSpec]) -> list[str]:
    """The recipes these workers can fill, in the book's order."""
    return [name for name, r in book.items() if default_slots(r, workers) is not None]
