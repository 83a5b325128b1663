"""Slow down guessing: a client that gives a wrong token too often in a window waits before it may try again."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

TRIES = 5  # wrong tokens a client may give in a window
WINDOW_S = 60.0
CLIENTS = 10_000  # clients remembered at once; the longest idle is forgotten first


class Throttle:
    """Failed tries per client in a sliding window. Bounded in memory: at most `clients` clients, `tries` each."""

    def __init__(self, tries: int = TRIES, window_s: float = WINDOW_S, clients: int = CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tries, self.window_s, self.clients, self.clock = tries, window_s, clients, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures.get(client)
        if failures is None:
            return deque()
        cutoff = self.clock() - self.window_s
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[client]
        return failures

    def retry_after(self, client: str) -> int | None:
        """Whole seconds this client must wait before its next try (None: it may try now)."""
        failures = self._recent(client)
        if len(failures) < self.tries:
            return None
        return max(1, math.ceil(failures[0] + self.window_s - self.clock()))

    def failed(self, client: str) -> None:
        failures = self._recent(client)
        failures.append(self.clock())
        self._failures[client] = failures
        self._failures.move_to_end(client)
        while len(failures) > self.tries:
            failures.popleft()
        while len(self._failures) > self.clients:
            self._failures.popitem(last=False)
