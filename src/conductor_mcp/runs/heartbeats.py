"""One heartbeat loop for every run a server executes, in place of a task and a task group per run.

A run's owner renews its lease every heartbeat_s (a sixth of the lease) while the run goes on, so that no replica
takes it for orphaned. A task of its own per run, in a task group of its own, cost about 0.1 ms of CPU a run, about a
tenth of a one-step run's engine overhead (BENCHMARKS.md). Here one loop, in the RunManager's task group beside the
runs, renews every held lease in turn; a run holds its lease in a cancel scope, and a renewal that fails (LeaseLost:
another process runs it now; or the store's own error) cancels that run's scope and is raised from it, as the run's
own heartbeat task raised it before. An Engine used without a RunManager keeps a heartbeat task per run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from ..store import Lease, Store, heartbeat_s


class _Held:
    """A lease being kept alive, the scope its run executes in, and why the run must stop (None: it need not)."""

    __slots__ = ("lease", "scope", "stopped")

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.scope = anyio.CancelScope()
        self.stopped: Exception | None = None


class Heartbeats:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._held: dict[_Held, None] = {}  # in the order they were taken

    async def run(self) -> None:
        """Renew every held lease each heartbeat_s, until cancelled (with the runs beside it)."""
        while True:
            await anyio.sleep(heartbeat_s())
            self.beat()

    def beat(self) -> None:
        for held in list(self._held):
            try:
                self.store.heartbeat(held.lease)
            except Exception as exc:  # the run stops here; the loop goes on for the others
                held.stopped = exc
                held.scope.cancel()
                self._held.pop(held, None)

    @contextmanager
    def holding(self, lease: Lease) -> Iterator[None]:
        """Keep `lease` alive while the block runs; a failed renewal cancels the block and is raised from it."""
        held = _Held(lease)
        self._held[held] = None
        try:
            with held.scope:
                yield
        finally:
            self._held.pop(held, None)
        if held.stopped is not None:
            raise held.stopped
