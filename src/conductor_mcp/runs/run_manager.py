"""The one door to runs: every surface (MCP tools and resources, the CLI, the OpenAI-compatible endpoint)
plans, starts, resumes, drives, waits on, cancels and reads runs through a RunManager, never through the engine or
the store. The decisions they share are taken here once: whether a run may be resumed, and with which budget.

Runs that outlive a tool call: started in the server's task group, awaited for up to wait_s.

Hosts cut long tool calls off, so a run belongs to the server process, not to the call that started
it; a later `get_run` or `resume` picks it up by id. `solve` hands out the run's id before the
conductor has planned, so planning counts against the caller's wait like the steps do. The engine is
built on first use, so start-up imports nothing heavy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import anyio
from anyio.abc import TaskGroup

from ..errors import ConductorError, RunNotFound, RunStateError, ShuttingDown, internal_message
from ..models import Budget, Prefer, Run, RunOptions, RunStatus, StepRecord, Usage
from ..planners.base import PlanEvent, PlanSink, tell

if TYPE_CHECKING:
    from collections.abc import Collection

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ..store import EvalRecord, EvalSummary, Row, RunListing, Store
    from ..workers.registry import Registry
    from .engine import Engine, EventSink, StepEvent
    from .heartbeats import Heartbeats

log = logging.getLogger(__name__)
Progress = Union["StepEvent", PlanEvent]  # both have `.message`, a line fit to show a user
Listener = Callable[[Progress], Awaitable[None]]
CancelWhen = Literal["on_exit", "on_abort", "never"]  # what leaving a follow() block before its run ends does


@dataclass(frozen=True)
class RunChange:
    """A run's stored trace changed: it was stored (`added`: a new root run in the runs list), one of its steps
    started or ended, it ended, or it was rated. A watcher that cares reads the run again."""

    run_id: str
    added: bool = False


RunWatcher = Callable[[RunChange], None]  # called where the run changed (the event loop; a rating, maybe a thread)


@dataclass
class RunHandle:
    run_id: str
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    listener: Listener | None = None  # solve's `listener`, if any
    planning: bool = False  # the conductor is still writing the workflow: the store has no run yet
    error: str | None = None  # why a run ended before it was stored (planning failed or was cancelled)
    followers: list[MemoryObjectSendStream[Progress]] = field(default_factory=list)  # one per follow() block
    final: Run | None = None  # the run as its execution here left it: its waiters need not read it again

    def end(self) -> None:
        """The run is over, stored or not: its waiters wake, and its followers' events end."""
        self.done.set()
        for follower in self.followers:
            follower.close()


class Following:
    """A run as a `RunManager.follow` block sees it: `async for event in following` hears its progress, in order,
    until it ends; `await following.wait(s)` waits up to s seconds for its end."""

    def __init__(self, runs: RunManager, handle: RunHandle, events: MemoryObjectReceiveStream[Progress]) -> None:
        self.runs = runs
        self.handle = handle
        self._events = events

    @property
    def run_id(self) -> str:
        return self.handle.run_id

    def __aiter__(self) -> Following:
        return self

    async def __anext__(self) -> Progress:
        """The next event; StopAsyncIteration once the run has ended and its every event has been read."""
        try:
            return await self._events.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def wait(self, wait_s: float | None = None) -> bool:
        """Whether the run has ended, waiting up to wait_s seconds (None: until it does). Events that come
        meanwhile are kept for `async for`."""
        return await self.runs.wait(self.handle, wait_s)


def fallback_reason(run: Run) -> str | None:
    """Why the conductor's plan was replaced by the one-step fallback, if it was."""
    if run.plan.source != "fallback":
        return None
    reasons = run.plan.notes or run.plan.errors
    return reasons[-1] if reasons else None


UNSTORED_KEPT = 1024


class RunManager:
    def __init__(self, workers: str | Path | Registry | None = None, db: str | Path | None = None,
                 engine: Engine | None = None) -> None:
        """`workers`: a manifest's path (None: the default one) or a registry already loaded from one."""
        self._workers = workers
        self._db = db
        self._engine: Engine | None = engine
        self._store: Store | None = None  # opened alone when only runs are read: reading needs no registry
        self._tg: TaskGroup | None = None
        self._heartbeats: Heartbeats | None = None  # one loop, in _tg, for the runs _tg runs and their child runs
        self.handles: dict[str, RunHandle] = {}  # the runs planning or running here (a handle leaves as it ends)
        self._unstored: dict[str, str] = {}  # why the last runs that ended unstored did: get() says so
        self.draining = False  # told to stop (drain): no new runs
        self._watchers: list[RunWatcher] = []
        self.adopt_s = 0.0  # how often this server adopts orphaned runs (runs/replicas.py); 0: never

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from ..store import open_store
            from ..workers.registry import Registry, load_registry
            from .engine import Engine

            registry = self._workers if isinstance(self._workers, Registry) else load_registry(self._workers)
            self._engine = Engine(registry, self._store or open_store(self._db))
        return self._engine

    @property
    def _trace_store(self) -> Store:
        """The trace store the reads below use: the engine's, or, until an engine is needed, the store alone."""
        if self._engine is not None:
            return self._engine.store
        if self._store is None:
            from ..store import open_store

            self._store = open_store(self._db)
        return self._store

    @property
    def registry(self) -> Registry:
        return self.engine.registry

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RunManager]:
        """Own a task group for background runs (the outermost caller wins; nested calls share it)."""
        if self._tg is not None:
            yield self
            return
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    yield self
                finally:
                    self._tg = self._heartbeats = None
                    tg.cancel_scope.cancel()  # shutdown: runs end `cancelled`, resumable later
        finally:  # every run has ended: close the direct client's pooled connections
            if self._engine is not None:
                with anyio.CancelScope(shield=True):
                    await self._engine.pool.aclose()

    def _ended(self, handle: RunHandle) -> None:
        """The run is over here: its waiters wake (they hold its handle), and the handle leaves `handles`, which
        a server that runs for months would otherwise fill. Why a run ended before it was stored is kept for the
        last UNSTORED_KEPT such runs, for get() to say."""
        handle.end()
        if self.handles.get(handle.run_id) is handle:
            del self.handles[handle.run_id]
        if handle.error is not None:
            self._unstored[handle.run_id] = handle.error
            while len(self._unstored) > UNSTORED_KEPT:
                del self._unstored[next(iter(self._unstored))]

    def active(self, run_id: str) -> RunHandle | None:
        handle = self.handles.get(run_id)
        return handle if handle is not None and not handle.done.is_set() else None

    def drain(self) -> None:
        """Stop taking new runs, and hand back the ones running here (the server was told to stop): each ends
        `interrupted`, owned by no one, for any server on the same store to resume at once. `handed_back` waits
        for them to be written so."""
        self.draining = True
        if self._engine is not None:
            self._engine.handing_back = True
        for handle in self.handles.values():
            handle.scope.cancel()

    async def handed_back(self, wait_s: float) -> bool:
        """After drain: whether every run that was here has been handed back, waiting up to wait_s seconds."""
        with anyio.move_on_after(wait_s):
            for handle in list(self.handles.values()):
                await handle.done.wait()
        return all(h.done.is_set() for h in self.handles.values())

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise ShuttingDown("this server is shutting down and takes no new runs; retry (behind a load balancer "
                               "the retry reaches another server)")

    def _task_group(self) -> TaskGroup:
        self._refuse_if_draining()
        if self._tg is None:
            raise RuntimeError("RunManager needs `async with manager.running()` to start runs")
        return self._tg

    def _beats(self, tg: TaskGroup) -> Heartbeats:
        """The heartbeat loop of the runs started in `tg` (they end with it, as the loop does), started with the
        first of them."""
        if self._heartbeats is None:
            from .heartbeats import Heartbeats

            self._heartbeats = Heartbeats(self.engine.store)
            tg.start_soon(self._heartbeats.run)
        return self._heartbeats

    def background(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start one of the server's own tasks (adopting orphaned runs) beside the runs; it ends with them."""
        self._task_group().start_soon(func, *args)

    def watch(self, watcher: RunWatcher) -> Callable[[], None]:
        """Tell `watcher` of every change to a run's stored trace from now on, whoever made it (the MCP server's
        resource subscriptions); the function returned stops that."""
        self._watchers.append(watcher)

        def unwatch() -> None:
            with suppress(ValueError):
                self._watchers.remove(watcher)

        return unwatch

    def _changed(self, run_id: str, *, added: bool = False) -> None:
        change = RunChange(run_id, added)
        for watcher in list(self._watchers):
            try:
                watcher(change)
            except Exception:  # a watcher never fails the run that changed
                log.warning("a run watcher failed on %s", change, exc_info=True)

    def _sink(self, handle: RunHandle) -> Callable[[Progress], Awaitable[None]]:
        async def sink(event: Progress) -> None:
            for follower in handle.followers:
                follower.send_nowait(event)  # unbounded: a follower never holds the run up
            if not isinstance(event, PlanEvent):  # a step started or ended: its run's trace changed, and its root's
                self._changed(event.run_id)
                if event.run_id != handle.run_id:
                    self._changed(handle.run_id)
            if handle.listener is not None:
                await tell(handle.listener, event)

        return sink

    def _start(self, run: Run, budget: Budget | None = None) -> RunHandle:
        """Execute a stored run that `resumable` has passed, in the background; one execution per run at a time."""
        run_id = run.id
        tg = self._task_group()
        if self.active(run_id):
            raise RunStateError(f"run {run_id} is already running in this server; use get_run to wait for it")
        handle = RunHandle(run_id)
        self.handles[run_id] = handle
        engine = self.engine
        sink = self._sink(handle)
        beats = self._beats(tg)

        async def body() -> None:
            try:
                with handle.scope:
                    handle.final = await engine.execute_checked(run_id, sink, budget, known=run, heartbeats=beats)
            except Exception as exc:  # the engine has recorded it in the store
                log.warning("run %s ended with %r", run_id, exc)
            finally:
                self._ended(handle)
                self._changed(run_id)

        tg.start_soon(body)
        return handle

    async def solve(self, task: str, *, workers: Sequence[str] | None = None, max_steps: int | None = None,
                    strategy: str = "conductor", budget: Budget | None = None, prefer: Prefer | None = None,
                    listener: Listener | None = None, workflow: Any = None) -> RunHandle:
        """Plan and run a task in the background; returns at once with the run's id.

        Bad arguments raise ConductorError here, before anything starts. Then the conductor plans
        (`handle.planning` is true, and `get` answers RunNotFound until the plan is stored) and the run
        executes. `listener` hears PlanEvents while the conductor writes, then a StepEvent as each step
        starts and ends. Follow it with `follow(handle)`, read with `get(handle.run_id)`, stop with `cancel`;
        a run that ended before it was stored (planning cancelled or failed) has `handle.error`.
        `workflow`: the caller's own, checked here; nothing is planned.
        """
        tg = self._task_group()
        engine = self.engine
        request = engine.check_plan(task, workers, max_steps, strategy, budget, prefer, workflow)
        beats = self._beats(tg)
        from ..store import new_run_id

        handle = RunHandle(new_run_id(), listener=listener, planning=True)
        self.handles[handle.run_id] = handle
        sink = self._sink(handle)

        async def on_plan(event: PlanEvent) -> None:
            await sink(replace(event, run_id=handle.run_id))

        async def body() -> None:
            stored = False
            try:
                with handle.scope:
                    started = time.perf_counter()
                    try:  # stored claimed: the run's claim is the plan's own transaction
                        claimed = await engine.plan_claimed(request, on_plan=on_plan, run_id=handle.run_id)
                        stored = True
                    finally:
                        handle.planning = False
                    run = claimed.run

                    async def planned() -> None:  # told as the execution's first act: claimed runs are executing
                        self._changed(run.id, added=True)
                        await on_plan(PlanEvent(run.plan.planner, "planned", time.perf_counter() - started,
                                                steps=len(run.workflow.steps), source=run.plan.source,
                                                note=fallback_reason(run)))

                    # planned just now: nothing to check, and nothing to read back
                    handle.final = await engine.execute_checked(run.id, sink, claimed=claimed, first=planned,
                                                                heartbeats=beats)
            except Exception as exc:  # a run already stored has its error recorded by the engine
                log.warning("run %s ended with %r", handle.run_id, exc)
                if not stored:
                    handle.error = ("planning failed: " + (str(exc) if isinstance(exc, ConductorError)
                                                           else internal_message(exc)))
            finally:
                if not stored and handle.error is None:
                    handle.error = "cancelled while the conductor was planning; nothing was stored"
                self._ended(handle)
                if stored:
                    self._changed(handle.run_id)

        tg.start_soon(body)
        return handle

    async def wait(self, handle: RunHandle, wait_s: float | None) -> bool:
        """Whether the run has ended, waiting up to wait_s seconds (None: until it does)."""
        with anyio.move_on_after(wait_s):
            await handle.done.wait()
        return handle.done.is_set()

    @asynccontextmanager
    async def follow(self, handle: RunHandle, *, cancel: CancelWhen = "on_exit") -> AsyncIterator[Following]:
        """Follow a run that `solve` or `resume` started, as httpx's `Client.stream()` reads a response: the block
        gets the run's progress events and its end through the Following it yields; leaving the block detaches it.
        Enter it before the first await after `solve`, or the first events are missed; several blocks may follow
        one run. What leaving the block before the run ends does to the run, by `cancel`:
          on_exit   cancel it, whatever ended the block (an OpenAI completion: its run is its request's);
          on_abort  cancel it when an exception ends the block, the caller's cancellation included (an MCP call
                    whose client left); a normal exit (a wait that timed out) leaves it running;
          never     leave it running (get_run: the run is its starter's).
        A cancelled run keeps its completed steps and can be resumed."""
        send, receive = anyio.create_memory_object_stream[Progress](math.inf)  # few events: the run never waits
        handle.followers.append(send)
        if handle.done.is_set():
            send.close()
        aborted = False
        try:
            yield Following(self, handle, receive)
        except BaseException:
            aborted = True
            raise
        finally:
            handle.followers.remove(send)
            send.close()
            receive.close()
            if not handle.done.is_set() and (cancel == "on_exit" or (cancel == "on_abort" and aborted)):
                await self.cancel(handle)  # shielded: it waits for the run to end

    async def cancel(self, handle: RunHandle) -> None:
        handle.scope.cancel()
        with anyio.CancelScope(shield=True):
            await handle.done.wait()

    def get(self, run_id: str) -> Run:
        """The stored run; for a run that `solve` started and that ended before its plan was stored, a
        RunStateError saying why (RunNotFound while it is still planning)."""
        try:
            return self._trace_store.get_run(run_id)
        except RunNotFound:
            if run_id in self._unstored:
                raise RunStateError(f"run {run_id}: {self._unstored[run_id]}") from None
            handle = self.handles.get(run_id)
            if handle is not None and handle.planning:
                raise RunNotFound(f"run {run_id} is being planned; it is stored once the conductor has "
                                  "written its workflow") from None
            raise

    def orphaned_runs(self) -> list[str]:
        """Root runs stored as running whose owner is gone, oldest first (for runs/replicas.py to adopt)."""
        return self._trace_store.orphaned_runs()

    def usage(self, run_id: str, run: Run | None = None) -> tuple[Usage, Usage]:
        """What a run tree cost (its plans, steps, reviews and child runs), and the conductor's own share of it:
        its planning and review calls. `run`: the run, if the caller has just read it."""
        store = self._trace_store
        run = run if run is not None else store.get_run(run_id)
        total, conductor = run.usage, run.plan.usage  # counted as store.tree_usage counts, in one walk
        for review in self.options(run_id).reviews:
            total, conductor = total + review.info.usage, conductor + review.info.usage
        for child in store.children(run_id):
            child_total, child_conductor = self.usage(child)
            total, conductor = total + child_total, conductor + child_conductor
        return total, conductor

    # -- the door: planning, driving and reading runs -------------------------------------------
    async def plan(self, task: str, workers: Sequence[str] | None = None, max_steps: int | None = None,
                   workflow: Any = None, strategy: str = "conductor", budget: Budget | None = None,
                   prefer: Prefer | None = None, *, on_plan: PlanSink | None = None) -> Run:
        """Plan (or check the caller's `workflow`) and store the run as `planned`; nothing is spent on workers."""
        self._refuse_if_draining()
        run = await self.engine.plan(task, workers, max_steps, workflow=workflow, strategy=strategy, budget=budget,
                                     prefer=prefer, on_plan=on_plan)
        self._changed(run.id, added=True)
        return run

    def budget(self, run_id: str | None = None, *, max_rounds: int | None = None, max_depth: int | None = None,
               max_total_tokens: int | None = None, max_usd: float | None = None) -> Budget | None:
        """The budget a run gets: the limits a caller gave over the run's stored budget (none stored: the defaults);
        None when the caller gave none (a stored run keeps its own)."""
        given = {"max_rounds": max_rounds, "max_depth": max_depth, "max_total_tokens": max_total_tokens,
                 "max_usd": max_usd}
        if all(v is None for v in given.values()):
            return None
        base = self.options(run_id).budget.model_dump() if run_id is not None else None
        return Budget.merged(base, **given)

    def resumable(self, run_id: str) -> Run:
        """The run, if it may be resumed here: a root run, not running in another process, whose unfinished steps
        name workers the registry still has; else a clear error, before anything is claimed or spent."""
        run = self.engine.check_resumable(run_id)
        if run.status == RunStatus.RUNNING and self.active(run_id) is None:
            raise RunStateError(f"run {run_id} is running in another process; wait for it to end (get_run waits)")
        return run

    def resume(self, run_id: str, budget: Budget | None = None) -> RunHandle | None:
        """Continue a run in the background; the handle of the one already planning or running here, if any; None
        for a completed run (nothing to do)."""
        handle = self.active(run_id)
        if handle is not None:
            return handle  # planning or running here already: the caller waits for it
        run = self.resumable(run_id)
        return None if run.status == RunStatus.COMPLETED else self._start(run, budget)

    async def drive(self, run_id: str, on_event: EventSink | None = None, budget: Budget | None = None) -> Run:
        """Run (or resume) a run to its end in the caller's task, as the CLI does; a completed run as it is."""
        run = self.resumable(run_id)
        if run.status == RunStatus.COMPLETED:
            return run
        return await self.engine.execute_checked(run_id, on_event, budget, known=run)

    async def run_step(self, run_id: str, index: int, instruction: str | None = None,
                       worker: str | None = None) -> tuple[StepRecord, Run, list[int]]:
        """Run one step of a run by hand: its record, the run after it, and the steps that can run now."""
        self._refuse_if_draining()
        if self.active(run_id):
            raise RunStateError(f"run {run_id} is running; wait for it with get_run")
        try:
            record, run = await self.engine.run_step(run_id, index, instruction, worker)
        finally:
            self._changed(run_id)
        return record, run, self.engine.runnable(run)

    def options(self, run_id: str) -> RunOptions:
        """A run's options, typed (a run stored before a field existed gets its default)."""
        return RunOptions.load(self._trace_store.options(run_id))

    def children(self, run_id: str) -> list[Run]:
        store = self._trace_store
        return [store.get_run(c) for c in store.children(run_id)]

    def tree_usage(self, run_id: str) -> Usage:
        """What a run and everything it spawned used (the store's one walk)."""
        return self._trace_store.tree_usage(run_id)

    def running_seconds(self, run_id: str) -> float:
        return self._trace_store.running_seconds(run_id)

    def resolve(self, ref: str) -> str:
        """A run id from a whole id, the start of exactly one, or `last`."""
        return str(self._trace_store.resolve_run(ref))

    def rate(self, run_id: str, score: float, note: str | None = None, source: str = "host") -> None:
        self._trace_store.rate(run_id, score, note, source=source)
        self._changed(run_id)

    def run_ids(self, prefix: str = "", limit: int = 100) -> list[str]:
        """Root runs' ids that start with `prefix`, newest first (what a host completes a run id from)."""
        return self._trace_store.run_ids(prefix, limit)

    def page(self, size: int, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of run summaries, newest first, and the cursor of the next one."""
        return self._trace_store.run_page(size, cursor)

    def find(self, limit: int, statuses: Collection[str] = (), strategy: str | None = None,
             text: str | None = None) -> list[RunListing]:
        """Root runs, newest first, as `conductor-mcp runs` filters them (see Store.find_runs)."""
        return self._trace_store.find_runs(limit, statuses, strategy, text)

    def usage_rows(self, since: float) -> list[Row]:
        """Every run of every tree whose root was created since `since`, as `conductor-mcp usage` sums them."""
        return self._trace_store.usage_rows(since)

    def store_path(self) -> Path:
        """The SQLite file of the trace store (a PostgreSQL store has none: see store_location)."""
        from ..store.sqlite import SQLiteStore

        store = self._trace_store
        if not isinstance(store, SQLiteStore):
            raise RunStateError(f"trace store {store.location} is a PostgreSQL database, not a file")
        return store.path

    def store_location(self) -> str:
        """The trace store, for messages: its path, or its URL without the password."""
        return self._trace_store.location

    def learn_only_before(self, when: float | None) -> None:
        """Plan from ratings given before `when` only (None: from all), as an eval does while it grades."""
        self.engine.learn_before = when

    def trace(self, run_id: str) -> dict[str, Any]:
        """A run's whole trace, its child runs' included."""
        from ..surfaces.render import trace_tree

        return trace_tree(self._trace_store, run_id)

    def record_eval(self, command: str, suite: str, started_at: float, ended_at: float,
                    report: dict[str, Any]) -> str:
        """Keep an `eval` or `calibrate` report (evals.report_json) for the web view; the new eval's id."""
        return self._trace_store.add_eval(command, suite, started_at, ended_at, report)

    def list_evals(self, limit: int = 50) -> list[EvalSummary]:
        """Recorded evals, newest first."""
        return self._trace_store.list_evals(limit)

    def get_eval(self, eval_id: str) -> EvalRecord:
        """A recorded eval with its report; EvalNotFound for an id the store lacks."""
        return self._trace_store.get_eval(eval_id)
