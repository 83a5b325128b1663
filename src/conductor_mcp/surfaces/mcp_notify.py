"""What an MCP host hears as runs change, beside progress: log notifications at the level it chose, resource
notifications for the runs it subscribed to, `list_changed` when a run is added; and run ids completed.

Both protocol eras are served. A handshake-era client (up to 2025-11-25: the hosts of today, the Inspector, the
conformance suite) chooses its level with logging/setLevel and subscribes with resources/subscribe: both are kept
here per connection, and resource notifications go on the connection's own channel (the GET stream on streamable
HTTP), so a host follows a long run without polling. A 2026-07-28 client opts into logs per request (the SDK's
`allowed_log_levels`) and subscribes with subscriptions/listen, which the SDK serves from the bus this module
publishes every change to. Log notifications ride the request that started or follows a run (solve, resume,
get_run with wait_s, plan_workflow, run_step): the client that asked is the one told.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final, get_args

import anyio
import anyio.from_thread
import anyio.lowlevel
from mcp.server.connection import Connection, allowed_log_levels
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    SubscriptionBus,
)
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    CompletionArgument,
    CompletionContext,
    EmptyResult,
    LoggingLevel,
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    PromptReference,
    ResourceTemplateReference,
    SetLevelRequestParams,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from ..errors import ConductorError
from ..models import Run, RunStatus, StepRecord, StepStatus
from ..planners.base import PlanEvent
from ..runs.run_manager import Progress, RunChange, RunManager, fallback_reason

log = logging.getLogger(__name__)

LEVELS: Final[tuple[LoggingLevel, ...]] = get_args(LoggingLevel)  # least severe first
DEFAULT_LEVEL: Final[LoggingLevel] = "info"  # before a client's logging/setLevel: no planning ticks
LOGGER = "conductor"
LEVEL_KEY = "conductor_mcp.log_level"  # in a connection's `state`
RUNS_URI = "conductor://runs"
RUN_TEMPLATE = "conductor://runs/{run_id}"
STEP_TEMPLATE = "conductor://runs/{run_id}/steps/{index}"
RUN_TEMPLATES = frozenset({RUN_TEMPLATE, STEP_TEMPLATE, "conductor://runs/{run_id}/diagram"})
MAX_COMPLETIONS = 100  # the protocol's cap on one completion's values
MAX_SUBSCRIPTIONS = 1000  # per connection: a client cannot grow the server without bound
MAX_KNOWN_RUNS = 4096  # runs whose resource URIs are kept: a run changes several times, its URIs never
Handler = Callable[[ServerRequestContext[Any, Any], Any], Awaitable[HandlerResult]]


def connection_of(session: ServerSession) -> Connection:
    """The connection a request came on: what lives as long as the client's session, with `state` and `exit_stack`
    for per-connection data. mcp 2.3.0 builds a ServerSession per request and keeps its connection private."""
    return session._connection


def is_handshake_era(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS


def run_uris(run: Run) -> list[str]:
    """The resources whose content changes with the run."""
    base = f"conductor://runs/{run.id}"
    uris = [base, f"{base}/diagram", *(f"{base}/steps/{i}" for i in range(len(run.workflow.steps)))]
    return [*uris, RUNS_URI] if run.parent_run_id is None else uris


# -- logging ----------------------------------------------------------------------------------------

def wanted(ctx: ServerRequestContext[Any, Any], level: LoggingLevel) -> bool:
    """Whether the client asked for log notifications of this level: by logging/setLevel on its connection
    (DEFAULT_LEVEL before it does), or, from 2026-07-28, in the request's own `_meta`."""
    if level not in allowed_log_levels(ctx.protocol_version, ctx.meta):
        return False
    if is_handshake_era(ctx):
        chosen = connection_of(ctx.session).state.get(LEVEL_KEY, DEFAULT_LEVEL)
        return LEVELS.index(level) >= LEVELS.index(chosen)
    return True


async def send_log(ctx: ServerRequestContext[Any, Any], level: LoggingLevel, message: str,
                   run_id: str | None = None) -> None:
    """One log notification on the request's own stream, if the client asked for that level. A client gone away
    fails nothing."""
    if not wanted(ctx, level):
        return
    data = {"run_id": run_id, "message": message} if run_id else {"message": message}
    note = LoggingMessageNotification(params=LoggingMessageNotificationParams(level=level, logger=LOGGER, data=data))
    try:
        await ctx.session.send_notification(note, related_request_id=ctx.request_id)
    except Exception:
        log.debug("log notification not delivered", exc_info=True)


def _short(text: str | None, limit: int = 300) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def step_level(status: StepStatus) -> LoggingLevel:
    return "info" if status == StepStatus.COMPLETED else "error" if status == StepStatus.FAILED else "warning"


def attempt_notes(step: StepRecord) -> list[tuple[LoggingLevel, str]]:
    """A finished step's retries and fallbacks, from its attempts in this execution (a resumed step keeps those
    of earlier ones)."""
    attempts = [a for a in step.attempts if step.started_at is None or a.started_at >= step.started_at]
    notes: list[tuple[LoggingLevel, str]] = []
    for k, a in enumerate(attempts):
        if a.status == "error":
            again = "; tried again" if k + 1 < len(attempts) else ""
            notes.append(("warning", f"step {step.index}: attempt {a.n} on {a.worker} failed: {_short(a.error)}"
                                     f"{again}"))
    answered = next((a for a in reversed(attempts) if a.status == "ok"), None)
    if answered is not None and answered.worker != step.worker:
        notes.append(("warning", f"step {step.index}: fell back from {step.worker} to {answered.worker}"))
    return notes


def step_notes(runs: RunManager, run_id: str, index: int) -> list[tuple[LoggingLevel, str]]:
    try:
        return attempt_notes(runs.get(run_id).steps[index])
    except (ConductorError, IndexError):
        return []


def event_entries(runs: RunManager, event: Progress, notes: bool = True) -> list[tuple[LoggingLevel, str]]:
    """What a run's progress event says in the log: the plan written (a warning when it fell back to one step),
    planning ticks at debug, steps started and ended, then (`notes`) the ended step's retries and fallbacks."""
    if isinstance(event, PlanEvent):
        if event.phase == "planned":
            return [("warning" if event.source == "fallback" else "info", f"plan written: {event.message}")]
        return [("info" if event.phase == "start" else "debug", event.message)]
    if event.phase == "start":
        return [("info", f"started {event.message}")]
    ended: list[tuple[LoggingLevel, str]] = [(step_level(event.status), f"ended {event.message}")]
    return ended + step_notes(runs, event.run_id, event.index) if notes else ended


async def log_event(ctx: ServerRequestContext[Any, Any], runs: RunManager, event: Progress) -> None:
    for level, message in event_entries(runs, event, notes=wanted(ctx, "warning")):  # notes: read from the store
        await send_log(ctx, level, message, event.run_id)


async def log_plan(ctx: ServerRequestContext[Any, Any], run: Run) -> None:
    """A plan stored by plan_workflow."""
    why = fallback_reason(run)
    message = f"plan written: {len(run.workflow.steps)} step(s) ({run.plan.source})" + (f": {why}" if why else "")
    await send_log(ctx, "warning" if run.plan.source == "fallback" else "info", message, run.id)


async def log_step(ctx: ServerRequestContext[Any, Any], run_id: str, step: StepRecord) -> None:
    """A step run_step ran, with its retries and fallbacks."""
    await send_log(ctx, step_level(step.status), f"ended step {step.index} {step.worker} [{step.status.value}]",
                   run_id)
    for level, message in attempt_notes(step):
        await send_log(ctx, level, message, run_id)


async def log_end(ctx: ServerRequestContext[Any, Any], runs: RunManager, run_id: str, run: Run | None = None) -> None:
    """How a followed run ended: completed, failed, cancelled, or stopped by its budget (`run`: the ended run, if
    the caller has it)."""
    try:
        run = run if run is not None else runs.get(run_id)
    except ConductorError as exc:  # ended before it was stored: planning failed or was cancelled
        await send_log(ctx, "error", str(exc), run_id)
        return
    if run.status == RunStatus.COMPLETED:
        await send_log(ctx, "info", "run completed", run_id)
    elif run.status == RunStatus.BUDGET_EXCEEDED:
        await send_log(ctx, "warning", f"run stopped by its budget: {_short(run.error)}", run_id)
    elif run.status == RunStatus.FAILED:
        await send_log(ctx, "error", f"run failed: {_short(run.error)}", run_id)
    else:
        await send_log(ctx, "warning", f"run {run.status.value}" + (f": {_short(run.error)}" if run.error else ""),
                       run_id)


# -- subscriptions and completions ------------------------------------------------------------------

class CountedBus(InMemorySubscriptionBus):
    """The in-process bus, knowing whether anyone listens: with no listener (and no subscribed connection) a run's
    changes are not even read from the store."""

    def __init__(self) -> None:
        super().__init__()
        self.listeners = 0

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(listener)
        self.listeners += 1
        done = False

        def once() -> None:  # idempotent, as the bus's own is
            nonlocal done
            if not done:
                done = True
                self.listeners -= 1
            unsubscribe()

        return once


class Audience:
    """The server's clients as runs change: the handshake-era connections with the URIs each subscribed to, and
    the subscriptions/listen bus. RunManager tells it of every change (`run_changed`); a task of the server's
    lifespan (`serving`) sends the notifications, so a slow client never holds a run up. Changes that come
    faster than they are sent are merged: a notification says "read it again", once is enough."""

    def __init__(self, runs: RunManager, bus: SubscriptionBus | None = None) -> None:
        self.runs = runs
        self.bus: SubscriptionBus = bus if bus is not None else CountedBus()
        self.peers: dict[Connection, set[str]] = {}  # handshake-era connections: the URIs each subscribed to
        self._changed: dict[str, None] = {}  # run ids, in order
        self._uris: dict[str, list[str]] = {}  # run_uris of runs seen lately: fixed once a run is stored
        self._added = False
        self._wake = anyio.Event()
        self._loop: tuple[anyio.lowlevel.EventLoopToken, int] | None = None  # serving's loop, and its thread

    def handlers(self) -> list[tuple[str, type[Any], Handler]]:
        """The requests this serves, for the server to register (their capabilities follow from them)."""
        return [("logging/setLevel", SetLevelRequestParams, self.set_level),
                ("resources/subscribe", SubscribeRequestParams, self.subscribe),
                ("resources/unsubscribe", UnsubscribeRequestParams, self.unsubscribe),
                ("completion/complete", CompleteRequestParams, self.complete)]

    def _peer(self, ctx: ServerRequestContext[Any, Any]) -> set[str]:
        connection = connection_of(ctx.session)
        uris = self.peers.get(connection)
        if uris is None:
            uris = self.peers[connection] = set()
            connection.exit_stack.callback(self.peers.pop, connection, None)  # the client went away: forget it
        return uris

    async def middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Know every handshake-era connection (`list_changed` goes to each), and say in its initialize result that
        the resource list changes: the SDK declares that only to 2026-07-28 clients unless told otherwise."""
        if is_handshake_era(ctx):
            self._peer(ctx)
        result = await call_next(ctx)
        if ctx.method == "initialize" and isinstance(result, dict):
            resources = result.get("capabilities", {}).get("resources")
            if isinstance(resources, dict):
                resources["listChanged"] = True
        return result

    async def set_level(self, ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams) -> EmptyResult:
        connection_of(ctx.session).state[LEVEL_KEY] = params.level
        return EmptyResult()

    async def subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        """Any URI is accepted: one this server does not serve never changes, so it is never notified."""
        uris = self._peer(ctx)
        if params.uri not in uris and len(uris) >= MAX_SUBSCRIPTIONS:
            raise MCPError(INVALID_PARAMS, f"{MAX_SUBSCRIPTIONS} subscriptions on this connection already; "
                                           "unsubscribe from some first")
        uris.add(params.uri)
        return EmptyResult()

    async def unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        self._peer(ctx).discard(params.uri)
        return EmptyResult()

    async def complete(self, ctx: ServerRequestContext[Any, Any], params: CompleteRequestParams) -> CompleteResult:
        return CompleteResult(completion=self.completion(params.ref, params.argument, params.context))

    def completion(self, ref: ResourceTemplateReference | PromptReference, argument: CompletionArgument,
                   context: CompletionContext | None) -> Completion:
        """Run ids for the run templates' `run_id`, newest first; a step template's `index` once its run_id is
        known. Anything else (a prompt, another template or argument) has no values: an empty list, not an error."""
        if not isinstance(ref, ResourceTemplateReference) or ref.uri not in RUN_TEMPLATES:
            return Completion(values=[])
        if argument.name == "run_id":
            ids = self.runs.run_ids(argument.value, MAX_COMPLETIONS + 1)
            return Completion(values=ids[:MAX_COMPLETIONS], has_more=len(ids) > MAX_COMPLETIONS)
        if argument.name == "index" and ref.uri == STEP_TEMPLATE:
            run_id = (context.arguments or {}).get("run_id") if context is not None else None
            try:
                steps = len(self.runs.get(run_id).workflow.steps) if run_id else 0
            except ConductorError:
                steps = 0
            values = [str(i) for i in range(steps) if str(i).startswith(argument.value)]
            return Completion(values=values, total=len(values), has_more=False)
        return Completion(values=[])

    # -- runs changing --------------------------------------------------------------------------

    def run_changed(self, change: RunChange) -> None:
        """RunManager's watcher: note the change; `serving`'s task sends it. A change made on a worker thread (the
        web view's rating) is noted on the event loop."""
        if self._loop is not None and threading.get_ident() != self._loop[1]:
            anyio.from_thread.run_sync(self._note, change, token=self._loop[0])
        else:
            self._note(change)

    def _note(self, change: RunChange) -> None:
        self._changed[change.run_id] = None
        self._added = self._added or change.added
        self._wake.set()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Watch the runs and send their notifications while the server serves. Nested uses (a lifespan per SSE
        connection) each run a sender; whichever takes the pending changes sends them, once."""
        self._loop = (anyio.lowlevel.current_token(), threading.get_ident())
        unwatch = self.runs.watch(self.run_changed)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._send_changes)
                yield
                tg.cancel_scope.cancel()
        finally:
            unwatch()

    async def _send_changes(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            changed, self._changed = list(self._changed), {}
            added, self._added = self._added, False
            try:
                if added:  # a new run: every handshake-era client hears it, as the capability promises
                    for connection in list(self.peers):
                        await self._notify(connection, connection.send_resource_list_changed)
                    if self._bus_heard():
                        await self.bus.publish(ResourcesListChanged())
                for run_id in changed:
                    await self._updated(run_id)
            except Exception:  # notifications are advisory: one that fails never stops the next ones
                log.warning("resource notifications not sent", exc_info=True)

    def _bus_heard(self) -> bool:
        return not isinstance(self.bus, CountedBus) or self.bus.listeners > 0

    def _heard(self) -> bool:
        """Whether a resource update can reach anyone: a connection with subscriptions, or a bus listener."""
        return any(self.peers.values()) or self._bus_heard()

    def _run_uris(self, run_id: str) -> list[str] | None:
        uris = self._uris.get(run_id)
        if uris is None:
            try:
                uris = run_uris(self.runs.get(run_id))
            except ConductorError:
                return None  # never stored (its planning failed): no resource of it ever existed
            if len(self._uris) >= MAX_KNOWN_RUNS:
                del self._uris[next(iter(self._uris))]  # the oldest
            self._uris[run_id] = uris
        return uris

    async def _updated(self, run_id: str) -> None:
        if not self._heard():
            return
        uris = self._run_uris(run_id)
        if uris is None:
            return
        for connection, subscribed in list(self.peers.items()):
            for uri in uris:
                if uri in subscribed:
                    await self._notify(connection, partial(connection.send_resource_updated, uri))
        for uri in uris:
            await self.bus.publish(ResourceUpdated(uri=uri))

    async def _notify(self, connection: Connection, send: Callable[[], Awaitable[None]]) -> None:
        """Send one notification; a connection that cannot take it any more is forgotten, without an error."""
        try:
            await send()
        except Exception:
            log.debug("notification not delivered; forgetting the connection", exc_info=True)
            self.peers.pop(connection, None)
