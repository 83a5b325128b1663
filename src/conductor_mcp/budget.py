"""Budgets: before each worker call, could it take the run past its token or dollar limit?

The check uses the worst case: the prompt as sent plus the worker's max_tokens, priced from the
manifest or litellm's list. Concurrent steps reserve their worst case, so two calls in parallel cannot
together overshoot. One guard covers a run and everything it spawns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConductorError, WorkerError
from .models import Budget, Usage, WorkerSpec
from .workers import known_cost

DEFAULT_MAX_TOKENS = {"litellm": 4096, "gguf": 512}


class BudgetExceeded(ConductorError):
    """The next call could exceed the budget; the run stops with what it has."""


def estimate_tokens(spec: WorkerSpec, messages: list[dict[str, str]]) -> tuple[int, int]:
    """A generous upper bound: about 3 characters a token for the prompt, the worker's max_tokens out."""
    prompt = sum(len(m.get("content") or "") for m in messages) // 3 + 8 * len(messages)
    completion = int(spec.params.get("max_tokens") or DEFAULT_MAX_TOKENS[spec.kind])
    return prompt, completion


@dataclass
class BudgetGuard:
    budget: Budget
    spent: Usage = field(default_factory=Usage)
    _reserved_tokens: int = 0
    _reserved_usd: float = 0.0

    def reserve(self, spec: WorkerSpec, messages: list[dict[str, str]]) -> tuple[int, float]:
        """Reserve a call's worst case, or raise: BudgetExceeded, or WorkerError for an unpriced worker."""
        prompt, completion = estimate_tokens(spec, messages)
        tokens, usd = prompt + completion, 0.0
        b = self.budget
        if b.max_total_tokens is not None:
            used = self.spent.total_tokens + self._reserved_tokens
            if used + tokens > b.max_total_tokens:
                raise BudgetExceeded(f"budget: max_total_tokens {b.max_total_tokens}: {used} used, and the next "
                                     f"call to {spec.id} could take up to {tokens} more")
        if b.max_usd is not None:
            cost = known_cost(spec, prompt, completion)
            if cost is None:
                raise WorkerError(f"{spec.id}: no known price, so it cannot be used under max_usd; add `price:` "
                                  "to its manifest entry or drop max_usd", retryable=False)
            used_usd = (self.spent.cost_usd or 0.0) + self._reserved_usd
            if used_usd + cost > b.max_usd:
                raise BudgetExceeded(f"budget: max_usd {b.max_usd:g}: ${used_usd:.4f} used, and the next call to "
                                     f"{spec.id} could cost up to ${cost:.4f} more")
            usd = cost
        self._reserved_tokens += tokens
        self._reserved_usd += usd
        return tokens, usd

    def settle(self, reservation: tuple[int, float], actual: Usage | None) -> None:
        self._reserved_tokens -= reservation[0]
        self._reserved_usd -= reservation[1]
        if actual is not None:
            self.add(actual)

    def add(self, usage: Usage) -> None:
        self.spent = self.spent + usage
