"""The MCP surface: tools, resources and progress over the engine. Thin: validate, call, render.

Names are contracts (DESIGN.md). A tool's `workers` argument selects among the registry's ids; no
argument can add a worker, an endpoint or a key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from mcp.server import MCPServer
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
    UnexpectedResourceError,
    UnexpectedToolError,
)
from mcp.shared.inbound import x_mcp_header_map
from mcp_types import CallToolResult, InputRequiredResult, ResourceLink, TextContent, Tool, ToolAnnotations
from pydantic import AnyUrl, BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..errors import ConductorError, RunNotFound, internal_message
from ..models import MAX_STEPS_LIMIT, Access, Run, RunStatus, StepStatus, Usage
from ..planners.base import PlanEvent, tell
from ..runs.replicas import follow_stored
from ..runs.request import MAX_TASK_CHARS, InputError, check_json
from ..runs.run_manager import CancelWhen, Listener, Progress, RunManager
from ..runs.workflows import field_problems
from .mcp_notify import Audience, Handler, log_end, log_event, log_plan, log_step
from .tool_schemas import STRATEGY, WORKER_ID, compact, optional_not_null, output_shape, with_worker_ids

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "A conductor: a small local model plans a workflow of up to 5 steps over a team of worker LLMs "
    "and runs it; the last step's output is the answer. Use solve for hard tasks that gain from "
    "several models (drafts, cross-checks, review). Long runs return status 'running': poll get_run. "
    "Every run's trace is at conductor://runs/{run_id}."
)
RUN_ID = "from solve or plan_workflow"
TaskArg = Annotated[str, Field(max_length=MAX_TASK_CHARS, description="the task, self-contained")]  # empty: check_task
WorkerIdArg = Annotated[str, Field(json_schema_extra={WORKER_ID: True})]
WorkersArg = Annotated[list[WorkerIdArg] | None, Field(description="worker ids to use (default: all)")]
MaxStepsArg = Annotated[int | None, Field(ge=1, le=MAX_STEPS_LIMIT, description="most steps in the plan")]
WaitArg = Annotated[float, Field(ge=0, le=3600, description="seconds to wait before returning running")]
RunIdArg = Annotated[str, Field(description=RUN_ID)]
RoundsArg = Annotated[int | None, Field(ge=1, le=5, description="rounds of review and fix by the conductor")]
DepthArg = Annotated[int | None, Field(ge=0, le=4, description="how deep the conductor may call itself")]
TokensArg = Annotated[int | None, Field(ge=1, description="stop before using more tokens, planning included")]
UsdArg = Annotated[float | None, Field(gt=0, description="stop before spending more USD")]
StrategyArg = Annotated[str, Field(json_schema_extra={STRATEGY: True}, description=(
    "conductor plans; moa: workers answer alone, the first merges; single:<id>: one worker; recipe:<name>: "
    "a fixed shape"))]
PreferArg = Annotated[Literal["quality", "balanced", "cost"] | None, Field(
    description="what past ratings weigh: reward, or reward against cost")]


class StepOut(BaseModel):
    index: int
    worker: str
    status: str


class RunOut(BaseModel):
    run_id: str
    status: str
    answer: str | None = None
    error: str | None = None
    steps: list[StepOut]
    tokens: int
    cost_usd: float | None
    calls: int
    reward: float | None = None
    trace_uri: str


class RatingOut(BaseModel):
    run_id: str
    reward: float
    note: str | None = None


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key (`acess`) is an error, never silently dropped

    worker: Annotated[str, Field(json_schema_extra={WORKER_ID: True},
                                 description="who runs it; a python worker runs the code it sees")]
    instruction: str = Field(description="its subtask")
    access: Access = Field("none", description='earlier steps it sees: "all", "none" or 0-based indices')


class WorkflowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[StepIn] = Field(description="the last one answers")


class PlanOut(BaseModel):
    run_id: str
    workflow: dict[str, Any]  # the Workflow; its schema is the `workflow` argument's
    plan_source: str
    trace_uri: str


class StepResultOut(BaseModel):
    run_id: str
    step: int
    status: str
    output: str | None = None
    error: str | None = None
    runnable: list[int] = Field(description="steps that can run now")
    run_status: str
    trace_uri: str


def _uri(run_id: str) -> str:
    return f"conductor://runs/{run_id}"


def _run_out(run: Run, u: Usage) -> RunOut:
    return RunOut(run_id=run.id, status=run.status.value, answer=run.answer, error=run.error,
                  steps=[StepOut(index=s.index, worker=s.worker, status=s.status.value) for s in run.steps],
                  tokens=u.total_tokens, cost_usd=u.cost_usd, calls=u.calls, reward=run.reward,
                  trace_uri=_uri(run.id))


SchemaLookup = Callable[[str], Mapping[str, Any] | None]


def headed_only(lookup: SchemaLookup) -> SchemaLookup:
    """The SDK checks a tools/call's `Mcp-Param-*` headers against the tool's input schema, walking all of it twice
    on every call (about 0.15 ms for plan_workflow's). Only a schema with an `x-mcp-header` annotation can fail that
    check, and ours have none: this answers a schema without one as no schema, which the SDK takes to mean the same
    thing (nothing to check). Each schema is looked at once."""
    known: dict[str, tuple[Mapping[str, Any], Mapping[str, Any] | None]] = {}

    def find(name: str) -> Mapping[str, Any] | None:
        schema = lookup(name)
        if schema is None:
            return None
        hit = known.get(name)
        if hit is None or hit[0] is not schema:  # a tool added again under the name: look at its schema
            hit = known[name] = (schema, schema if x_mcp_header_map(schema) else None)
        return hit[1]

    return find


class ConductorServer(MCPServer[RunManager]):
    runs: RunManager | None = None

    def check_headers_of_headed_tools_only(self) -> None:
        lowlevel = self._lowlevel_server
        if lowlevel.get_tool_input_schema is not None:
            lowlevel.get_tool_input_schema = headed_only(lowlevel.get_tool_input_schema)

    def add_request_handler(self, method: str, params_type: type[BaseModel], handler: Handler) -> None:
        """Serve a protocol request MCPServer leaves unserved (logging/setLevel, resources/subscribe, ...); the
        capabilities initialize declares follow from the handlers registered."""
        self._lowlevel_server.add_request_handler(method, params_type, handler)

    def worker_ids(self) -> list[str] | None:
        """The ids a tool's `workers` may name; None when the registry does not load (a tool call says why)."""
        try:
            return self.runs.registry.available_ids() if self.runs is not None else None
        except ConductorError:
            return None

    async def list_tools(self) -> list[Tool]:
        """The tools with the live worker ids in their schemas: everywhere an id goes; for a registry too large
        for that within TOOLS_LIST_CAP, only in the `workers` arrays; then only in solve's (the ids are always
        in conductor://workers)."""
        tools = [t.model_copy(update={
            "description": " ".join((t.description or "").split()),
            "input_schema": optional_not_null(compact(t.input_schema)),
            "output_schema": output_shape(compact(t.output_schema)),
            "annotations": unstated_defaults(t.annotations)}) for t in await super().list_tools()]
        ids = self.worker_ids()
        strategies = self.runs.registry.strategies() if ids is not None and self.runs is not None else None
        for everywhere, where in ((True, None), (False, None), (False, "solve"), (False, "")):
            listed = [t.model_copy(update={"input_schema": with_worker_ids(
                t.input_schema, ids if where is None or t.name == where else None, everywhere, strategies)})
                for t in tools]
            if tools_list_size(listed) < TOOLS_LIST_CAP:
                break
        return listed

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context[RunManager, Any] | None = None) -> CallToolResult | InputRequiredResult:
        """Every tool's errors mapped in one place: a ConductorError is a tool error with its own message; anything
        else a short one, its traceback in the log."""
        try:
            check_json(arguments)  # the rules every surface applies: valid Unicode, nesting bounded
        except InputError as exc:
            raise ToolError(f"Error executing tool {name}: invalid arguments: {exc}") from None
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError as exc:
            if isinstance(exc.__cause__, ConductorError):  # raised on purpose: its message is for the caller
                raise ToolError(f"Error executing tool {name}: {exc.__cause__}") from exc.__cause__
            # the SDK would answer only "Error executing tool X": say what broke; the traceback goes to the log
            cause = exc.__cause__ or exc
            log.error("tool %s failed", name, exc_info=cause)
            raise ToolError(f"Error executing tool {name}: {internal_message(cause)}; the server's log has the "
                            "traceback") from None
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):  # not pydantic's dump with its docs link
                problems = "; ".join(field_problems(exc.__cause__))
                raise ToolError(f"Error executing tool {name}: invalid arguments: {problems}") from exc.__cause__
            raise

    async def read_resource(self, uri: AnyUrl | str, context: Context[RunManager, Any] | None = None
                            ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        try:
            return await super().read_resource(uri, context)
        except UnexpectedResourceError as exc:
            cause = exc.__cause__ or exc
            log.error("resource %s failed", uri, exc_info=cause)
            raise ResourceError(f"{uri}: {internal_message(cause)}; the server's log has the traceback") from None


TOOLS_LIST_CAP = 8000  # characters (DESIGN.md): a host pays for tools/list on every turn


def tools_list_size(tools: list[Tool]) -> int:
    """The tools as JSON, measured with spaces after separators: a little more than the wire's compact form."""
    return len(json.dumps([t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]))


HINT_DEFAULTS = {"read_only_hint": False, "destructive_hint": True, "idempotent_hint": False, "open_world_hint": True}


def unstated_defaults(hints: ToolAnnotations | None) -> ToolAnnotations | None:
    """The hints that differ from the protocol's defaults: a hint that repeats its default says nothing."""
    if hints is None:
        return None
    stated = hints.model_copy(update={k: None for k, v in HINT_DEFAULTS.items() if getattr(hints, k) == v})
    return stated if stated.model_dump(exclude_none=True) else None


def _result(model: BaseModel, run_id: str, text: str | None = None) -> CallToolResult:
    """Structured content plus a readable text block and a link to the run's trace."""
    body = text if text is not None else model.model_dump_json(indent=1)
    return CallToolResult(
        content=[TextContent(type="text", text=body),
                 ResourceLink(type="resource_link", uri=_uri(run_id), name=f"run {run_id}",
                              mime_type="application/json", description="the run's full trace")],
        structured_content=model.model_dump(mode="json"))


async def warm_litellm(runs: RunManager) -> None:
    """Import litellm on a thread before serving: its import takes seconds, and done by the first worker call it
    would hold the event loop (every other request and run) meanwhile. Only for manifests that use it."""
    from ..workers.pool import uses_litellm

    try:
        registry = runs.registry
    except ConductorError:
        return  # a bad manifest: the first tool call reports it
    if uses_litellm(registry):  # the direct client calls OpenAI-compatible workers without it
        from ..workers.llm import litellm_module

        await anyio.to_thread.run_sync(litellm_module)


AnyContext = Context[RunManager, Any]


def _manager(ctx: AnyContext | None) -> RunManager:
    """The RunManager the server's lifespan yielded: every tool reaches runs through it, and only through it."""
    if ctx is None:
        raise ToolError("no request context: the conductor's tools run inside an MCP request")
    return ctx.request_context.lifespan_context


def reporter(ctx: AnyContext | None) -> Listener:
    """A tool call's progress notifications, one unit per event: planning's count is unknown ahead, then each step
    starts and ends; and the same events as log notifications, at the level the client chose (mcp_notify). A client
    gone away fails nothing."""
    count = planning = 0

    async def send(event: Progress) -> None:
        nonlocal count, planning
        count += 1
        if ctx is None:
            return
        if isinstance(event, PlanEvent):
            planning = count
            await ctx.report_progress(count, message=event.message)
        else:
            await ctx.report_progress(count, total=planning + 2 * event.total, message=event.message)
        await log_event(ctx.request_context, _manager(ctx), event)

    async def report(event: Progress) -> None:
        await tell(send, event)

    return report


async def wait_for(runs: RunManager, run_id: str, wait_s: float, ctx: AnyContext | None,
                   cancel: CancelWhen) -> RunOut:
    """Follow the run up to wait_s, sending progress; `cancel`: whether a cancelled call cancels the run. A run
    another server executes (replicas on one store) is followed through the store."""
    report = reporter(ctx)
    deadline = anyio.current_time() + wait_s
    handle = runs.active(run_id)
    if handle is None and wait_s > 0:
        with anyio.move_on_after(wait_s):
            async for stored in follow_stored(runs, run_id, through_handover=runs.adopt_s > 0):
                await report(stored)
        handle = runs.active(run_id)  # this server adopted it meanwhile: follow it here for the time left
    if handle is not None:
        async with runs.follow(handle, cancel=cancel) as following:
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):  # wait_s over: the run goes on
                async for event in following:
                    await report(event)
        if handle.done.is_set() and ctx is not None:  # it ended while this call followed it
            await log_end(ctx.request_context, runs, run_id, handle.final)
        if handle.planning:  # no run in the store yet: the plan is still being written
            return RunOut(run_id=run_id, status=RunStatus.RUNNING.value, steps=[], tokens=0, cost_usd=None,
                          calls=0, trace_uri=_uri(run_id))
        if handle.final is not None:  # it ended here: as its execution left it
            return _out(runs, handle.final)
    return _out(runs, runs.get(run_id))


def _out(runs: RunManager, run: Run) -> RunOut:
    return _run_out(run, runs.usage(run.id, run)[0])  # the tree's usage, as tree_usage counts it, from `run`


def run_result(result: RunOut) -> CallToolResult:
    if result.status == RunStatus.COMPLETED:
        text = result.answer
    elif result.status == RunStatus.RUNNING and not result.steps:
        text = (f"run {result.run_id}: the conductor is still planning; wait for it with "
                f"get_run(run_id={result.run_id!r}, wait_s=...)")
    else:
        text = None
    return _result(result, result.run_id, text)


async def solve(task: TaskArg, workers: WorkersArg = None, max_steps: MaxStepsArg = None,
                wait_s: WaitArg = 50.0, strategy: StrategyArg = "conductor", max_rounds: RoundsArg = None,
                max_depth: DepthArg = None, max_total_tokens: TokensArg = None, max_usd: UsdArg = None,
                prefer: PreferArg = None, ctx: AnyContext | None = None) -> Annotated[CallToolResult, RunOut]:
    """Plan a workflow for a hard task and run it on the worker models; returns the answer, or status
    'running' after wait_s, planning included (poll get_run). A call can take minutes and spend money on
    paid workers."""
    runs = _manager(ctx)
    budget = runs.budget(max_rounds=max_rounds, max_depth=max_depth, max_total_tokens=max_total_tokens,
                         max_usd=max_usd)
    handle = await runs.solve(task, workers=workers, max_steps=max_steps, strategy=strategy, budget=budget,
                              prefer=prefer)
    return run_result(await wait_for(runs, handle.run_id, wait_s, ctx, cancel="on_abort"))


async def plan_workflow(task: TaskArg, workers: WorkersArg = None, max_steps: MaxStepsArg = None,
                        workflow: Annotated[WorkflowIn | None, Field(
                            description="your own plan, to check and store instead")] = None,
                        ctx: AnyContext | None = None) -> Annotated[CallToolResult, PlanOut]:
    """Plan only, or check your own workflow, and store it as a run; nothing is spent. Run it with resume
    or run_step."""
    runs = _manager(ctx)
    given = workflow.model_dump() if workflow is not None else None
    run = await runs.plan(task, workers, max_steps, workflow=given, on_plan=reporter(ctx))
    if ctx is not None:
        await log_plan(ctx.request_context, run)
    out = PlanOut(run_id=run.id, workflow=run.workflow.model_dump(),
                  plan_source=run.plan.source, trace_uri=_uri(run.id))
    return _result(out, run.id)


async def run_step(run_id: RunIdArg, step: Annotated[int, Field(ge=0, description="0-based step index")],
                   instruction: Annotated[str | None, Field(description="a new subtask for it")] = None,
                   worker: Annotated[str | None, Field(json_schema_extra={WORKER_ID: True},
                                                       description="run it on this worker")] = None,
                   ctx: AnyContext | None = None) -> Annotated[CallToolResult, StepResultOut]:
    """Run one step of a planned run, optionally with a new instruction or worker, once the steps it sees
    are done."""
    runs = _manager(ctx)
    if instruction is not None and not instruction.strip():
        raise ToolError("instruction: empty; omit it to keep the planned instruction")
    record, run, runnable = await runs.run_step(run_id, step, instruction, worker)
    if ctx is not None:
        await log_step(ctx.request_context, run_id, record)
    out = StepResultOut(run_id=run_id, step=step, status=record.status.value, output=record.output,
                        error=record.error, runnable=runnable, run_status=run.status.value,
                        trace_uri=_uri(run_id))
    return _result(out, run_id, record.output if record.status == StepStatus.COMPLETED else None)


async def resume(run_id: RunIdArg, wait_s: WaitArg = 50.0, max_rounds: RoundsArg = None,
                 max_depth: DepthArg = None, max_total_tokens: TokensArg = None, max_usd: UsdArg = None,
                 ctx: AnyContext | None = None) -> Annotated[CallToolResult, RunOut]:
    """Run a planned run to the end, or continue a stopped one (cancelled, failed, interrupted; over
    budget: give more). Completed steps are never re-run."""
    runs = _manager(ctx)
    budget = runs.budget(run_id, max_rounds=max_rounds, max_depth=max_depth, max_total_tokens=max_total_tokens,
                         max_usd=max_usd)
    runs.resume(run_id, budget)  # a run this server is planning or running is waited for
    return run_result(await wait_for(runs, run_id, wait_s, ctx, cancel="on_abort"))


async def get_run(run_id: RunIdArg, wait_s: WaitArg = 0.0,
                  ctx: AnyContext | None = None) -> Annotated[CallToolResult, RunOut]:
    """Status, per-step status and answer of a run; waits up to wait_s while it runs."""
    result = await wait_for(_manager(ctx), run_id, wait_s, ctx, cancel="never")
    return run_result(result) if result.status == RunStatus.RUNNING else _result(result, result.run_id)


async def rate_run(run_id: RunIdArg, score: Annotated[float, Field(
                       ge=0, le=1, description="1 correct, 0.5 wrong but well formed, 0 unusable")],
                   note: Annotated[str | None, Field(max_length=2000, description="why")] = None,
                   ctx: AnyContext | None = None) -> Annotated[CallToolResult, RatingOut]:
    """Rate a run's answer; the conductor learns from ratings."""
    _manager(ctx).rate(run_id, score, note, source="host")
    return _result(RatingOut(run_id=run_id, reward=score, note=note), run_id)


# name order is tools/list order; titles and hints are part of each tool's contract
TOOLS: list[tuple[Callable[..., Any], str, ToolAnnotations]] = [
    (solve, "Solve with a team of models", ToolAnnotations(read_only_hint=False, open_world_hint=True)),
    (plan_workflow, "Plan a workflow", ToolAnnotations(read_only_hint=False, open_world_hint=False)),
    (run_step, "Run one step", ToolAnnotations(read_only_hint=False, open_world_hint=True)),
    (resume, "Resume a run", ToolAnnotations(read_only_hint=False, open_world_hint=True)),
    (get_run, "Get a run", ToolAnnotations(read_only_hint=True, open_world_hint=False)),
    (rate_run, "Rate a run", ToolAnnotations(read_only_hint=False, idempotent_hint=True, open_world_hint=False)),
]


def build_server(workers: str | Path | None = None, db: str | Path | None = None,
                 manager: RunManager | None = None) -> MCPServer[RunManager]:
    """The MCP server: its lifespan owns the RunManager (the tools read it from their request's context) and sends
    the resource notifications of runs as they change (mcp_notify.Audience)."""
    runs = manager or RunManager(workers, db)
    audience = Audience(runs)

    @asynccontextmanager
    async def lifespan(_: MCPServer[RunManager]) -> AsyncIterator[RunManager]:
        async with runs.running():
            await warm_litellm(runs)
            async with audience.serving():
                yield runs

    server = ConductorServer("conductor-mcp", instructions=INSTRUCTIONS, version=__version__,
                             lifespan=lifespan, subscriptions=audience.bus, middleware=[audience.middleware])
    server.runs = runs  # for tools/list, which has no request context: the live worker ids
    for fn, title, hints in TOOLS:
        server.add_tool(fn, title=title, annotations=hints)
    for method, params, handler in audience.handlers():  # logging, subscriptions, completions
        server.add_request_handler(method, params, handler)
    register_resources(server, runs)
    server.check_headers_of_headed_tools_only()
    return server


RUNS_PAGE, MAX_RUNS_PAGE = 20, 100


def _json(data: Any) -> str:
    return json.dumps(data, indent=1)


def register_resources(server: MCPServer[RunManager], runs: RunManager) -> None:
    from .render import mermaid, run_trace

    def load(run_id: str) -> Run:
        try:
            return runs.get(run_id)
        except RunNotFound as exc:
            raise ResourceNotFoundError(str(exc)) from None

    @server.resource("conductor://workers", title="Workers", mime_type="application/json",
                     description="the worker registry: ids, descriptions, availability")
    def workers_resource() -> str:
        reg = runs.registry
        return _json({"source": reg.source, "workers": [
            {"id": s.spec.id, "description": s.spec.description, "backend": s.spec.backend,
             "model": s.spec.model or (Path(str(s.gguf_path)).name if s.gguf_path else None),
             "available": s.available, "reason": s.reason,
             "fallback": s.spec.fallback} for s in reg.states]})

    def runs_page(limit: str | None, cursor: str | None) -> str:
        # summaries only (a run's answer and steps are in its own resource), a page at a time: the list
        # is read often, and a store of long runs would otherwise be sent whole on every read
        size = RUNS_PAGE
        if limit:
            if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= MAX_RUNS_PAGE):
                raise ResourceNotFoundError(f"limit: {limit!r}; give a whole number from 1 to {MAX_RUNS_PAGE}")
            size = int(limit)
        try:
            rows, after = runs.page(size, cursor or None)
        except RunNotFound as exc:
            raise ResourceNotFoundError(str(exc)) from None
        return _json({"runs": [{**r, "trace_uri": _uri(r["run_id"])} for r in rows], "next_cursor": after,
                      "next_uri": f"conductor://runs?limit={size}&cursor={after}" if after else None})

    @server.resource("conductor://runs", title="Runs", mime_type="application/json",
                     description=f"the newest {RUNS_PAGE} runs as summaries; next_uri reads the next page")
    def runs_resource() -> str:
        return runs_page(None, None)

    @server.resource("conductor://runs{?limit,cursor}", title="Runs, one page", mime_type="application/json",
                     description=f"a page of runs, newest first: limit 1..{MAX_RUNS_PAGE}, cursor from next_cursor")
    def runs_page_resource(limit: str | None = None, cursor: str | None = None) -> str:
        return runs_page(limit, cursor)

    @server.resource("conductor://runs/{run_id}", title="Run trace", mime_type="application/json",
                     description="a run's whole trace")
    def run_resource(run_id: str) -> str:
        load(run_id)
        return _json(runs.trace(run_id))

    @server.resource("conductor://runs/{run_id}/steps/{index}", title="Run step", mime_type="application/json",
                     description="one step of a run, by its 0-based index")
    def step_resource(run_id: str, index: str) -> str:
        run = load(run_id)
        if not (index.isascii() and index.isdigit()) or int(index) >= len(run.steps):  # "²".isdigit() is True
            raise ResourceNotFoundError(f"index: {index!r} is not a step of run {run_id} "
                                        f"(steps 0..{len(run.steps) - 1})")
        return _json(run_trace(run)["steps"][int(index)])

    @server.resource("conductor://runs/{run_id}/diagram", title="Run diagram", mime_type="text/vnd.mermaid",
                     description="the workflow as a Mermaid flowchart")
    def diagram_resource(run_id: str) -> str:
        run = load(run_id)
        return mermaid(run, runs.children(run_id))
