"""Budgets: before each worker call, could it take the run past its token or dollar limit?

The check uses the worst case: an upper bound of the prompt's tokens plus the completion cap that every
call is sent with (llm.completion_cap), priced from the manifest or litellm's list. Concurrent calls
reserve their worst case, so two calls in parallel cannot together overshoot. One guard covers a run and
everything it spawns, the conductor's planning and review calls included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConductorError, WorkerError
from ..models import Budget, Usage
from ..workers.llm import DEFAULT_MAX_TOKENS, Priced, completion_cap, known_cost

__all__ = ["DEFAULT_MAX_TOKENS", "BudgetExceeded", "BudgetGuard", "estimate_tokens", "prompt_tokens_bound"]


class BudgetExceeded(ConductorError):
    """The next call could exceed the budget; the run stops with what it has."""


def prompt_tokens_bound(messages: list[dict[str, str]]) -> int:
    """An upper bound of a prompt's tokens under any tokenizer, for text in any script: its UTF-8 bytes,
    plus 8 a message for the chat template's markers. A byte-level BPE (GPT, Llama 3, Qwen) never makes
    more tokens than bytes, nor does SentencePiece with byte fallback (Llama 2, Gemma), whose one extra
    prefix token a message the 8 cover. Characters/3 was not a bound: CJK takes 1-3 tokens a character,
    and several tokenizers split digits one by one. Generous for English (about 4 bytes a token), which
    only makes a limit stop a run sooner, never overshoot."""
    return sum(len((m.get("content") or "").encode()) for m in messages) + 8 * (len(messages) + 1)


def estimate_tokens(spec: Priced, messages: list[dict[str, str]]) -> tuple[int, int]:
    """The worst case of one call: the prompt's bound, and the completion cap the call is sent with."""
    return prompt_tokens_bound(messages), completion_cap(spec)


@dataclass
class BudgetGuard:
    budget: Budget
    spent: Usage = field(default_factory=Usage)
    _reserved_tokens: int = 0
    _reserved_usd: float = 0.0

    def reserve(self, spec: Priced, messages: list[dict[str, str]]) -> tuple[int, float]:
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
