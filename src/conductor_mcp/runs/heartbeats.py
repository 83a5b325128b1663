"""Heartbeat loops: one for all the runs a RunManager starts, in place of a task and a task group per run.

A run's owner renews its lease every heartbeat_s (a sixth of the lease) while the run goes on, so that no replica
takes it for orphaned. A task of its own per run, in a task group of its own, cost about 0.1 ms of CPU a run, about a
tenth of a one-step run's engine overhead (BENCHMARKS.md). Here one loop, in the RunManager's task group beside the
runs, renews every held lease in one transaction, and a run holds its lease in a cancel scope:
- a renewal that finds the run taken over (LeaseLost) cancels that run's scope, and holding() raises the LeaseLost,
  whatever else the run was raising at that moment: the run is another process's now, and must write nothing;
- a renewal the store fails (a lock held too long, a dropped connection) is tried again at the next tick while the
  lease still holds, so that one failure of the store does not stop every run at once; it stops the run, with the
  store's error, only when the lease would lapse before the next tick.
A child run (recursion, a round) is held in its parent's loop, and stops when its parent's lease is lost: holding()
raises ParentLeaseLost (the child is still this process's, to hand back). Where a write of the parent finds the loss
first and the child is cancelled, the engine asks the store about the leases around it (enclosing_leases()).
A run with no loop around it (an Engine used alone, as the CLI does; a step run by hand) gets a loop of its own,
which ends with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import anyio

from ..errors import LeaseLost, ParentLeaseLost
from ..store import Lease, Store, heartbeat_s, stale_after_s

log = logging.getLogger(__name__)


class _Held:
    """A lease being kept alive, the scope its run executes in, when it was last renewed (monotonic), why the run
    must stop (None: it need not), and the lease held around it (a child run's parent), whose loss stops it too."""

    __slots__ = ("lease", "parent", "renewed", "scope", "stopped")

    def __init__(self, lease: Lease, parent: _Held | None) -> None:
        self.lease = lease
        self.parent = parent
        self.scope = anyio.CancelScope()
        self.renewed = time.monotonic()  # the claim that made the lease came just before
        self.stopped: Exception | None = None

    def why(self) -> Exception | None:
        """Why the run must stop: its own renewal's error, else the nearest enclosing run's."""
        held: _Held | None = self
        while held is not None:
            if held.stopped is not None:
                return held.stopped
            held = held.parent
        return None


# the loop and the lease the current task's run is held in: a child run started there joins them
_enclosing: ContextVar[tuple[Heartbeats, _Held] | None] = ContextVar("conductor_heartbeats", default=None)


class Heartbeats:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._held: dict[_Held, None] = {}  # in the order they were taken

    @staticmethod
    def enclosing_leases() -> list[Lease]:
        """The leases of the runs that the current task's run is part of, nearest first (a child run's parent, its
        parent, ...): none for a run no other run encloses."""
        found = _enclosing.get()
        held = found[1] if found is not None else None
        leases = []
        while held is not None:
            leases.append(held.lease)
            held = held.parent
        return leases

    @staticmethod
    def enclosing(store: Store) -> Heartbeats | None:
        """The loop that the run this task works for is held in (a child run's parent's), if it renews in `store`."""
        found = _enclosing.get()
        return found[0] if found is not None and found[0].store is store else None

    async def run(self, until: anyio.Event | None = None) -> None:
        """Renew every held lease each heartbeat_s, until `until` is set (None: until cancelled); the runs it keeps
        (and their child runs) must end before it does: both in one task group. Told by an event, not cancelled,
        where it is one run's own (and its child runs'): a cancellation costs more than the rest of a one-step run's
        scheduling."""
        while True:
            if until is None:
                await anyio.sleep(heartbeat_s())
            else:
                with anyio.move_on_after(heartbeat_s()):
                    await until.wait()
                    return
            self.beat()

    def beat(self) -> None:
        """Renew every held lease, in one transaction."""
        if not self._held:
            return
        held = list(self._held)
        now = time.monotonic()
        try:
            lost = self.store.renew([h.lease for h in held])
        except Exception as exc:
            log.warning("%d run(s): their leases could not be renewed (%s); trying again in %gs", len(held), exc,
                        heartbeat_s())
            for h in held:
                if now + heartbeat_s() - h.renewed >= stale_after_s():  # it would lapse before the next try
                    self._stop(h, exc)
            return
        for h in held:
            if h.lease in lost:
                self._stop(h, lost[h.lease])
            else:
                h.renewed = now

    def _stop(self, held: _Held, why: Exception) -> None:
        held.stopped = why
        held.scope.cancel()
        self._held.pop(held, None)

    @contextmanager
    def holding(self, lease: Lease) -> Iterator[None]:
        """Keep `lease` alive while the block runs. A renewal that stops the run (or the run around it, for a child
        run) cancels the block, and its error is raised from here in place of whatever the block raised (its
        cancellation, or an error at the same moment)."""
        around = _enclosing.get()
        held = _Held(lease, around[1] if around is not None and around[0] is self else None)
        self._held[held] = None
        token = _enclosing.set((self, held))
        try:
            with held.scope:
                yield
        except BaseException:
            why = self._why(held)
            if why is None:
                raise
            raise why from None
        finally:
            _enclosing.reset(token)
            self._held.pop(held, None)
        why = self._why(held)
        if why is not None:
            raise why

    @staticmethod
    def _why(held: _Held) -> Exception | None:
        why = held.why()
        if held.stopped is None and isinstance(why, LeaseLost):  # the run around it was taken over, not this one
            return ParentLeaseLost(str(why), why.run_id)
        return why
