"""Runs that outlive a tool call: started in the server's task group, awaited for up to wait_s.

Hosts cut long tool calls off, so a run belongs to the server process, not to the call that started
it; a later `get_run` or `resume` picks it up by id. The engine is built on first use, so start-up
imports nothing heavy.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from .errors import RunStateError
from .models import Budget, Run

if TYPE_CHECKING:
    from .engine import Engine, StepEvent

log = logging.getLogger(__name__)
Listener = Callable[["StepEvent"], Awaitable[None]]


@dataclass
class RunHandle:
    run_id: str
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    listener: Listener | None = None  # the tool call waiting on this run, if any


class RunManager:
    def __init__(self, workers: str | Path | None = None, db: str | Path | None = None) -> None:
        self._workers = workers
        self._db = db
        self._engine: Engine | None = None
        self._tg: TaskGroup | None = None
        self.handles: dict[str, RunHandle] = {}

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from .engine import Engine
            from .registry import load_registry
            from .store import Store

            self._engine = Engine(load_registry(self._workers), Store(self._db))
        return self._engine

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RunManager]:
        """Own a task group for background runs (the outermost caller wins; nested calls share it)."""
        if self._tg is not None:
            yield self
            return
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                self._tg = None
                tg.cancel_scope.cancel()  # shutdown: runs end `cancelled`, resumable later

    def active(self, run_id: str) -> RunHandle | None:
        handle = self.handles.get(run_id)
        return handle if handle is not None and not handle.done.is_set() else None

    def start(self, run_id: str, budget: Budget | None = None) -> RunHandle:
        """Execute (or resume) a run in the background; one execution per run at a time."""
        if self._tg is None:
            raise RuntimeError("RunManager.start needs `async with manager.running()`")
        if self.active(run_id):
            raise RunStateError(f"run {run_id} is already running in this server; use get_run to wait for it")
        handle = RunHandle(run_id)
        self.handles[run_id] = handle
        engine = self.engine

        async def sink(event: StepEvent) -> None:
            if handle.listener is not None:
                try:
                    await handle.listener(event)
                except Exception:  # a client gone away must not fail the run
                    handle.listener = None

        async def body() -> None:
            try:
                with handle.scope:
                    await engine.resume(run_id, sink, budget)
            except Exception as exc:  # the engine has recorded it in the store
                log.warning("run %s ended with %r", run_id, exc)
            finally:
                handle.done.set()

        self._tg.start_soon(body)
        return handle

    async def wait(self, handle: RunHandle, wait_s: float) -> bool:
        with anyio.move_on_after(wait_s):
            await handle.done.wait()
        return handle.done.is_set()

    async def cancel(self, handle: RunHandle) -> None:
        handle.scope.cancel()
        with anyio.CancelScope(shield=True):
            await handle.done.wait()

    def get(self, run_id: str) -> Run:
        return self.engine.store.get_run(run_id)
