"""One heartbeat loop for the runs a RunManager starts, in place of a task and a task group per run.

A run's owner renews its lease every heartbeat_s (a sixth of the lease) while the run goes on, so that no replica
takes it for orphaned. A task of its own per run, in a task group of its own, cost about 0.1 ms of CPU a run, about a
tenth of a one-step run's engine overhead (BENCHMARKS.md). Here one loop, in the RunManager's task group beside the
runs, renews every held lease in turn, and a run holds its lease in a cancel scope:
- a renewal that finds the run taken over (LeaseLost) cancels that run's scope, and holding() raises the LeaseLost,
  whatever else the run was raising at that moment: the run is another process's now, and must write nothing;
- a renewal the store fails (a lock held too long, a dropped connection) is tried again at the next tick while the
  lease still holds, so that one failure of the store does not stop every run at once; it stops the run, with the
  store's error, only when the lease would lapse before the next tick.
An Engine used alone (a CLI command's run) and a child run (recursion, a round) keep a heartbeat task of their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from ..errors import LeaseLost
from ..store import Lease, Store, heartbeat_s, stale_after_s

log = logging.getLogger(__name__)


class _Held:
    """A lease being kept alive, the scope its run executes in, when it was last renewed (monotonic), and why the
    run must stop (None: it need not)."""

    __slots__ = ("lease", "renewed", "scope", "stopped")

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.scope = anyio.CancelScope()
        self.renewed = time.monotonic()  # the claim that made the lease came just before
        self.stopped: Exception | None = None


class Heartbeats:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._held: dict[_Held, None] = {}  # in the order they were taken

    async def run(self) -> None:
        """Renew every held lease each heartbeat_s, until cancelled; the runs it keeps must end before it does
        (RunManager runs both in one task group)."""
        while True:
            await anyio.sleep(heartbeat_s())
            self.beat()

    def beat(self) -> None:
        for held in list(self._held):
            now = time.monotonic()
            try:
                self.store.heartbeat(held.lease)
                held.renewed = now
            except LeaseLost as exc:
                self._stop(held, exc)
            except Exception as exc:
                if now + heartbeat_s() - held.renewed < stale_after_s():
                    log.warning("run %s: its lease could not be renewed (%s); trying again in %gs",
                                held.lease.run_id, exc, heartbeat_s())
                else:  # it would lapse before the next try
                    self._stop(held, exc)

    def _stop(self, held: _Held, why: Exception) -> None:
        held.stopped = why
        held.scope.cancel()
        self._held.pop(held, None)

    @contextmanager
    def holding(self, lease: Lease) -> Iterator[None]:
        """Keep `lease` alive while the block runs. A renewal that stops the run cancels the block, and its error is
        raised from here in place of whatever the block raised (its cancellation, or an error at the same moment)."""
        held = _Held(lease)
        self._held[held] = None
        try:
            with held.scope:
                yield
        except BaseException:
            if held.stopped is None:
                raise
            raise held.stopped from None
        finally:
            self._held.pop(held, None)
        if held.stopped is not None:
            raise held.stopped
