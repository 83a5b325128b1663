"""One function checks a request for every surface: each bad argument is refused with the parameter it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conductor_mcp.models import Budget
from conductor_mcp.runs.request import MAX_TASK_CHARS, RequestError, check_request
from conductor_mcp.workers.registry import Registry, load_manifest

MANIFEST = """\
workers:
  - {id: fast, model: openai/fast, api_base: "http://127.0.0.1:9/v1"}
  - {id: slow, model: openai/slow, api_base: "http://127.0.0.1:9/v1"}
  - {id: py, kind: python}
"""


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    path = tmp_path / "workers.yaml"
    path.write_text(MANIFEST)
    return load_manifest(path, {})


def test_a_good_request_is_filled_in_from_the_manifest(registry: Registry) -> None:
    req = check_request(registry, "  add 2 and 2  ")
    assert req.task == "add 2 and 2" and req.workers == ["fast", "slow", "py"]
    assert req.max_steps == registry.conductor.max_steps and req.strategy == "conductor"
    assert req.budget == Budget() and req.prefer == registry.conductor.prefer and req.workflow is None


def test_a_callers_workflow_is_validated_against_the_chosen_workers(registry: Registry) -> None:
    wf = {"steps": [{"worker": "slow", "instruction": "x"}]}
    assert check_request(registry, "t", ["slow"], workflow=wf).workflow is not None
    with pytest.raises(RequestError) as err:
        check_request(registry, "t", ["fast"], workflow=wf)
    assert err.value.param == "workflow" and "slow" in err.value.detail


@pytest.mark.parametrize(("kwargs", "param", "words"), [
    ({"task": "   "}, "task", "empty"),
    ({"task": "x" * (MAX_TASK_CHARS + 1)}, "task", f"at most {MAX_TASK_CHARS}"),
    ({"workers": ["ghost"]}, "workers", "unknown id(s) ['ghost']"),
    ({"workers": []}, "workers", "empty list"),
    ({"max_steps": 0}, "max_steps", "allowed 1..5"),
    ({"max_steps": 6}, "max_steps", "allowed 1..5"),
    ({"strategy": "best"}, "strategy", "allowed: conductor, moa"),
    ({"strategy": "single:ghost"}, "strategy", "unknown or unavailable worker"),
    ({"strategy": "single:py"}, "strategy", "(a model worker)"),
    ({"strategy": "single:slow", "workers": ["fast"]}, "workers", "leaves out worker 'slow'"),
    ({"strategy": "moa", "max_steps": 1}, "strategy", "moa needs max_steps >= 2"),
    ({"strategy": "recipe:nope"}, "strategy", "nope"),
    ({"strategy": "recipe:test-and-fix", "max_steps": 2}, "strategy", "more than max_steps=2"),
    ({"workflow": {"steps": []}}, "workflow", "steps"),
])
def test_each_bad_argument_is_named(registry: Registry, kwargs: dict[str, Any], param: str, words: str) -> None:
    args: dict[str, Any] = {"task": "t", **kwargs}
    with pytest.raises(RequestError) as err:
        check_request(registry, **args)
    assert err.value.param == param and words in err.value.detail
    assert str(err.value) == f"{param}: {err.value.detail}"
    assert err.value.too_long == (words.startswith("at most"))


def test_max_usd_needs_a_price_for_every_worker_it_may_use(tmp_path: Path) -> None:
    path = tmp_path / "workers.yaml"
    path.write_text(MANIFEST + "  - {id: priced, model: openai/unlisted-model, api_base: 'http://127.0.0.1:9/v1',"
                               " price: {input_per_mtok: 1.0, output_per_mtok: 2.0}}\n")
    registry = load_manifest(path, {})
    usd = Budget(max_usd=0.5)
    assert check_request(registry, "t", strategy="single:priced", budget=usd).budget.max_usd == 0.5
    assert check_request(registry, "t", ["priced", "py"], budget=usd).workers == ["priced", "py"]  # py: no tokens
    with pytest.raises(RequestError) as err:
        check_request(registry, "t", budget=usd)
    assert err.value.param == "workers" and "['fast', 'slow'] have no known price" in err.value.detail
    with pytest.raises(RequestError, match="'fast'"):
        check_request(registry, "t", workflow={"steps": [{"worker": "fast", "instruction": "x"}]}, budget=usd)
