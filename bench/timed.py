"""Time and count calls by wrapping them (an instance's methods, a module's function): bench.store_share and
bench.engine_overhead use it to say where a run's time goes, inside real runs."""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any


class Spent(dict[str, float]):
    """Seconds spent in each timed call since the last clear(), by `clock` (time.process_time: the process's CPU;
    time.perf_counter: wall), and how many calls (`made`). An awaited call's figure is what the clock counted
    while it was awaited: whatever else the event loop ran meanwhile too. A timed call that makes another timed
    call is counted including it."""

    def __init__(self, clock: Callable[[], float] = time.process_time) -> None:
        super().__init__()
        self.clock = clock
        self.made: Counter[str] = Counter()

    def clear(self) -> None:
        super().clear()
        self.made.clear()

    def _add(self, name: str, started: float) -> None:
        self[name] = self.get(name, 0.0) + self.clock() - started
        self.made[name] += 1

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            started = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(name, started)
        return call

    def timed_async(self, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            started = self.clock()
            try:
                return await fn(*args, **kwargs)
            finally:
                self._add(name, started)
        return call
