"""A run's options are typed; options stored before they were typed still load."""

from __future__ import annotations

from conductor_mcp.models import Budget, PlanInfo, Review, RunOptions


def test_an_old_options_dict_loads() -> None:
    old = {"workers": ["a", "b"], "max_steps": 3, "strategy": "moa",
           "budget": {"max_total_tokens": None, "max_usd": None, "max_rounds": 2, "max_depth": 1},
           "kind": "round", "depth": 0, "prefer": "cost", "round": 2, "previous": "r1", "reviews": [],
           "otel": {"trace_id": "0" * 32, "span_id": "1" * 16}}
    opts = RunOptions.load(old)
    assert opts.kind == "round" and opts.round == 2 and opts.previous == "r1"
    assert opts.workers == ["a", "b"] and opts.max_steps == 3 and opts.strategy == "moa" and opts.prefer == "cost"
    assert opts.budget == Budget(max_rounds=2, max_depth=1)
    assert RunOptions.load(opts.stored()) == opts


def test_missing_keys_take_their_defaults() -> None:
    for stored in (None, {}, {"workers": ["a"]}):
        opts = RunOptions.load(stored)
        assert opts.kind == "root" and opts.depth == 0 and opts.budget == Budget() and opts.reviews == []
        assert opts.strategy == "conductor" and opts.round is None and opts.previous is None


def test_reviews_load_typed_and_unknown_keys_are_kept() -> None:
    info = PlanInfo(source="review", planner="p").model_dump(mode="json")
    opts = RunOptions.load({"reviews": [{"round": 1, "accepted": False, "info": info}], "future": 1})
    assert opts.reviews == [Review(round=1, accepted=False, info=PlanInfo(source="review", planner="p"))]
    assert opts.stored()["future"] == 1 and "round" not in opts.stored()
