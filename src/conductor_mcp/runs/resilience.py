"""When to retry a worker call, how long to wait, and which workers to rest for a while.

This is the only retry layer: litellm and its OpenAI client are told not to retry, so every attempt
reaches the trace.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    attempts_per_worker: int = 3
    base_delay_s: float = 0.25
    max_delay_s: float = 20.0
    cooldown_after: int = 3  # consecutive failed steps (across steps) before a worker is rested
    cooldown_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Exponential backoff with full jitter; a server's Retry-After is a floor."""
        backoff = random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))
        if retry_after is not None:
            return min(self.max_delay_s, max(retry_after, backoff))
        return backoff


@dataclass
class WorkerHealth:
    """Counts consecutive failures per worker; a worker failing across steps is cooled down."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    _failures: dict[str, int] = field(default_factory=dict)
    _rest_until: dict[str, float] = field(default_factory=dict)

    def ok(self, worker: str) -> None:
        self._failures[worker] = 0
        self._rest_until.pop(worker, None)

    def failed(self, worker: str) -> None:
        n = self._failures.get(worker, 0) + 1
        self._failures[worker] = n
        if n >= self.policy.cooldown_after:
            self._rest_until[worker] = time.monotonic() + self.policy.cooldown_s

    def cooling(self, worker: str) -> bool:
        return self._rest_until.get(worker, 0.0) > time.monotonic()
