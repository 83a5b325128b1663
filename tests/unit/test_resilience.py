"""Retry decisions: backoff with jitter, Retry-After as a floor, cool-down, and error classes."""

from __future__ import annotations

import time

import httpx

from conductor_mcp.models import Budget, Usage, WorkerSpec
from conductor_mcp.runs.budget import BudgetGuard, estimate_tokens
from conductor_mcp.runs.resilience import RetryPolicy, WorkerHealth
from conductor_mcp.workers.pool import _classify, litellm_module


def test_backoff_grows_with_jitter_and_respects_retry_after() -> None:
    p = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0)
    assert all(0 <= p.delay(1) <= 0.5 for _ in range(50))
    assert all(0 <= p.delay(4) <= 4.0 for _ in range(50))
    assert len({round(p.delay(3), 6) for _ in range(20)}) > 1  # jitter
    assert p.delay(1, retry_after=3.0) == 3.0
    assert p.delay(1, retry_after=60.0) == 4.0  # capped


def test_cooldown_after_repeated_failures() -> None:
    health = WorkerHealth(RetryPolicy(cooldown_after=2, cooldown_s=0.2))
    health.failed("w")
    assert not health.cooling("w")
    health.failed("w")
    assert health.cooling("w")
    time.sleep(0.25)
    assert not health.cooling("w")
    health.failed("w")
    health.ok("w")
    health.failed("w")
    assert not health.cooling("w")


def test_litellm_errors_classified() -> None:
    litellm = litellm_module()
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    bad = litellm.BadRequestError("bad", model="m", llm_provider="openai")
    auth = litellm.AuthenticationError("no key", llm_provider="openai", model="m")
    limited = litellm.RateLimitError("slow down", llm_provider="openai", model="m",
                                     response=httpx.Response(429, headers={"retry-after": "7"}, request=request))
    assert not _classify(bad, "w").retryable and not _classify(auth, "w").retryable
    err = _classify(limited, "w")
    assert err.retryable and "RateLimitError 429" in str(err)


def test_budget_guard_reserves_worst_case() -> None:
    spec = WorkerSpec(id="w", model="openai/x", params={"max_tokens": 100},
                      price={"input_per_mtok": 1.0, "output_per_mtok": 1.0})  # type: ignore[arg-type]
    messages = [{"role": "user", "content": "x" * 100}]
    assert estimate_tokens(spec, messages) == (116, 100)  # UTF-8 bytes plus the template's markers
    guard = BudgetGuard(Budget(max_total_tokens=500))
    first = guard.reserve(spec, messages)
    guard.reserve(spec, messages)  # two in flight: 432 reserved
    try:
        guard.reserve(spec, messages)
        raise AssertionError("a third concurrent call would overshoot")
    except Exception as exc:
        assert "max_total_tokens 500" in str(exc)
    guard.settle(first, Usage(prompt_tokens=50, completion_tokens=10, calls=1))
    assert guard.spent.total_tokens == 60
