"""OpenTelemetry export of runs, after the GenAI semantic conventions.

Off by default. `configure()` (the CLI calls it at start-up) sets up the SDK's OTLP/HTTP exporter behind a
BatchSpanProcessor when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, or
CONDUCTOR_OTEL=1; CONDUCTOR_OTEL=0, OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn it off. The
provider becomes the global one, so the MCP SDK's own spans (`tools/call solve`, mcp/server/_otel.py) are
exported too and a run started by a tool call nests under that call's span. An application that set up a
provider of its own keeps it, and gets our spans there.

Spans: a run is `invoke_agent conductor`; under it `plan` / `review` (the conductor's calls, with GenAI usage
when a model was called), `step N`, and under each step one `chat MODEL` span per worker call (model,
provider, tokens, cost, status); a retry or a fallback is an event on the step's span. A child run (a step
on `conductor`) nests under its step; a correction round under its run. Spans are queued and sent from the
processor's thread, so a slow or dead collector never holds a run up; what is queued is flushed at exit.

The engine tells these spans through `tracer()`, a context manager per run, step, worker call and plan, with
typed arguments; while export is off it gets a tracer that records nothing. Describing a span never fails a
run: an error there is logged, and the run goes on.

Within one process a run's planning and execution share one span and trace (`plan` then `resume` in the
same process, or the MCP `solve` tool). A run resumed in another process gets a new trace: its span carries
the same `conductor.run.id` and a span link to the span that planned it (whose ids the run's options keep).

Keys are never exported: attributes hold model names, ids and counts, and error text goes through
`redact`. Prompts, outputs, tasks and answers are exported only with
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true, and redacted too.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar
from urllib.parse import urlparse

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from . import __version__
from .redact import redact

if TYPE_CHECKING:
    from .models import PlanInfo, Run, RunOptions, Step, Usage, WorkerSpec, Workflow

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

ENABLE_VAR = "CONDUCTOR_OTEL"
CONTENT_VAR = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
# a planned run's span waits this long for its execution in this process, then ends as planned (CONDUCTOR_OTEL_HOLD_S)
HOLD_S = float(os.environ.get("CONDUCTOR_OTEL_HOLD_S", "30"))
EXIT_FLUSH_S = 4.0  # at exit, the most time spent sending what is queued (a dead collector must not hold exit up)
MAX_HELD = 256
_TRUE = ("1", "true", "yes", "on")
# litellm provider prefixes whose GenAI name differs (gen_ai.provider.name's well-known values)
_PROVIDERS = {"gemini": "gcp.gemini", "vertex_ai": "gcp.vertex_ai", "bedrock": "aws.bedrock",
              "azure": "azure.ai.openai", "azure_ai": "azure.ai.inference", "mistral": "mistral_ai",
              "xai": "x_ai", "watsonx": "ibm.watsonx.ai", "ollama_chat": "ollama"}

_tracer = trace.get_tracer("conductor_mcp", __version__)  # a proxy: it follows the provider set later
_provider: Any = None  # the SDK provider configure() set up, if any
_configured = False
_lock = threading.Lock()
_held: dict[str, tuple[Span, float, int]] = {}  # run id -> (its open span, when held, when planning ended)


# -- set-up ----------------------------------------------------------------------------------------------
def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for export."""
    env = os.environ if env is None else env
    flag = env.get(ENABLE_VAR, "").strip().lower()
    if flag in ("0", "false", "no", "off") or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return flag in _TRUE or bool(endpoint)


def capture_content(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    value = env.get(CONTENT_VAR, "").strip().lower()
    return value in _TRUE or value in ("span_only", "span_and_event")


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Set up OTLP/HTTP export when the environment asks for it (once per process); True when it is on."""
    global _configured, _provider
    env = os.environ if env is None else env
    with _lock:
        if _configured:
            return _provider is not None
        _configured = True
        if not wanted(env):
            return False
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return True  # the application has a provider of its own: our spans go there
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning("OpenTelemetry export was asked for, but its SDK is not installed: "
                        "pip install 'mcp-conductor[otel]'. Runs go on without it.")
            return False
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
        if protocol and protocol != "http/protobuf":
            log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: conductor-mcp exports OTLP over HTTP (http/protobuf) only; "
                        "point the endpoint at the collector's HTTP port (4318)", protocol)
        attributes = {"service.version": __version__}
        if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
            attributes["service.name"] = "conductor-mcp"
        provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
        # a short delay by default: a server killed without a chance to flush loses at most about a second
        delay = None if env.get("OTEL_BSP_SCHEDULE_DELAY") else 1000
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=delay))
        exporter_log = logging.getLogger("opentelemetry.exporter.otlp")
        if exporter_log.level == logging.NOTSET:
            exporter_log.setLevel(logging.ERROR)  # one line when a batch is lost, not one per retry
        trace.set_tracer_provider(provider)
        _provider = provider
        atexit.register(shutdown)
        return True


def active() -> bool:
    """Whether spans go anywhere: ours are set up, or the application set a provider."""
    return _provider is not None or not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def shutdown() -> None:
    """Send what is queued and stop the exporter (at process exit: a CLI command's end, the server's shutdown).
    The SDK's own shutdown waits out the exporter's retries (10 s and more against a dead collector), so it runs
    on a daemon thread that exit stops waiting for after EXIT_FLUSH_S."""
    global _provider
    for run_id in list(_held):
        _release(run_id)
    provider, _provider = _provider, None
    if provider is not None:
        worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
        worker.start()
        worker.join(EXIT_FLUSH_S)
        if worker.is_alive():
            log.warning("OpenTelemetry: the collector did not take the last spans within %gs; they are dropped "
                        "(is OTEL_EXPORTER_OTLP_ENDPOINT right, and the collector up?)", EXIT_FLUSH_S)


# -- attributes ------------------------------------------------------------------------------------------
def _text(value: str) -> str:
    return redact(value)


def _messages(messages: list[dict[str, str]]) -> str:
    """Chat messages in the GenAI conventions' JSON shape (gen_ai.input.messages)."""
    return json.dumps([{"role": m.get("role", "user"), "parts": [{"type": "text", "content": _text(m.get("content")
                                                                                                     or "")}]}
                       for m in messages], ensure_ascii=False)


def _output(text: str) -> str:
    return json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": _text(text)}],
                        "finish_reason": "stop"}], ensure_ascii=False)


def model_attributes(model: str | None, gguf: str | None = None, api_base: str | None = None) -> dict[str, Any]:
    """gen_ai.provider.name (and the older gen_ai.system), gen_ai.request.model, server.address and port."""
    if gguf is not None or model is None:
        name = os.path.basename(gguf or "model").removesuffix(".gguf")
        provider = "llama_cpp"  # in-process llama.cpp: no well-known value
    else:
        prefix, _, rest = model.partition("/")
        provider, name = (prefix, rest) if rest else ("openai", model)  # litellm reads a bare name as OpenAI's
        provider = _PROVIDERS.get(provider, provider)
    attrs: dict[str, Any] = {"gen_ai.provider.name": provider, "gen_ai.system": provider, "gen_ai.request.model": name}
    if api_base:
        url = urlparse(api_base)
        if url.hostname:
            attrs["server.address"] = url.hostname
            if url.port:
                attrs["server.port"] = url.port
    return attrs


def _usage_attributes(prefix: str, prompt: int, completion: int, cost: float | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {f"{prefix}.input_tokens": prompt, f"{prefix}.output_tokens": completion}
    if cost is not None:
        attrs[f"{prefix}.cost"] = cost  # no GenAI attribute for cost yet; Langfuse reads gen_ai.usage.cost
    return attrs


def _error(span: Span, exc: BaseException) -> str:
    """Status and error.type for a failure, with a redacted message (no traceback: it may quote a request)."""
    from .errors import LeaseLost
    from .runs.budget import BudgetExceeded

    while isinstance(exc, BaseExceptionGroup):  # a task group's: its first member says what happened
        lost = [e for e in exc.exceptions if isinstance(e, LeaseLost)]
        exc = lost[0] if lost else exc.exceptions[0]
    message = _text(str(exc))[:1000]
    if isinstance(exc, BudgetExceeded):
        span.set_attribute("conductor.stopped", "budget_exceeded")
        span.add_event("budget_exceeded", {"conductor.reason": message})
        return "stopped"
    if isinstance(exc, (KeyboardInterrupt, GeneratorExit, asyncio.CancelledError)):
        span.set_attribute("conductor.stopped", "cancelled")
        return "cancelled"
    kind = "lease_lost" if isinstance(exc, LeaseLost) else type(exc).__name__
    span.set_attribute("error.type", kind)
    span.add_event("exception", {"exception.type": type(exc).__name__, "exception.message": message})
    span.set_status(Status(StatusCode.ERROR, message))
    return "failed"


def _describe_plan(span: Span, info: PlanInfo, workflow: Workflow | None, api_base: str | None) -> None:
    span.set_attribute("conductor.plan.source", info.source)
    span.set_attribute("conductor.plan.planner", info.planner)
    span.set_attribute("conductor.plan.attempts", info.attempts)
    if workflow is not None:
        span.set_attribute("conductor.plan.steps", len(workflow.steps))
        span.set_attribute("conductor.plan.workers", [s.worker for s in workflow.steps])
        if capture_content():
            span.set_attribute("conductor.workflow", _text(workflow.model_dump_json()))
    for error in info.errors:
        span.add_event("plan_attempt_failed", {"conductor.reason": _text(error)[:1000]})
    for note in info.repairs + info.notes:
        span.add_event("plan_note", {"conductor.note": _text(note)[:1000]})
    if info.usage.calls:  # the conductor model was called: a GenAI chat, with its usage
        kind, _, model = info.planner.partition(":")
        if kind == "gguf":
            span.set_attributes(model_attributes(None, gguf=model))
        else:
            span.set_attributes(model_attributes(model, api_base=api_base))
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attributes(_usage_attributes("gen_ai.usage", info.usage.prompt_tokens, info.usage.completion_tokens,
                                              info.usage.cost_usd))
        span.set_attribute("conductor.calls", info.usage.calls)


def _describe_run(span: Span, run: Run, options: RunOptions) -> None:
    span.set_attribute("conductor.run.id", run.id)
    span.set_attribute("conductor.run.kind", options.kind)
    span.set_attribute("conductor.run.depth", options.depth)
    span.set_attribute("conductor.strategy", options.strategy)
    span.set_attribute("conductor.plan.source", run.plan.source)
    span.set_attribute("conductor.run.steps", len(run.workflow.steps))
    if run.parent_run_id:
        span.set_attribute("conductor.run.parent_id", run.parent_run_id)
    if run.parent_step is not None:
        span.set_attribute("conductor.run.parent_step", run.parent_step)
    if options.round is not None:
        span.set_attribute("conductor.run.round", options.round)
    if capture_content():
        span.set_attribute("gen_ai.input.messages", _messages([{"role": "user", "content": run.task}]))


def _finish_run(span: Span, run: Run) -> None:
    span.set_attribute("conductor.run.status", run.status.value)
    usage = run.usage  # this run's own plan and steps; child runs carry theirs
    # conductor.usage, not gen_ai.usage: backends add up gen_ai.usage over a trace's model calls
    span.set_attributes(_usage_attributes("conductor.usage", usage.prompt_tokens, usage.completion_tokens,
                                          usage.cost_usd))
    span.set_attribute("conductor.usage.calls", usage.calls)
    if run.status.value in ("failed",) and run.error:
        span.set_attribute("error.type", "run_failed")
        span.set_status(Status(StatusCode.ERROR, _text(run.error)[:1000]))
    elif run.status.value in ("budget_exceeded", "cancelled") and run.error:
        span.add_event(run.status.value, {"conductor.reason": _text(run.error)[:1000]})
    if run.answer is not None and capture_content():
        span.set_attribute("gen_ai.output.messages", _output(run.answer))


# -- runs: held between planning and execution in one process ----------------------------------------------
def _new_run_span(links: list[Link] | None = None) -> Span:
    return _tracer.start_span("invoke_agent conductor", kind=SpanKind.INTERNAL, links=links,
                              attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "conductor"})


def _hold(run_id: str, span: Span) -> None:
    with _lock:
        _held[run_id] = (span, time.monotonic(), time.time_ns())
    stale = [r for r, (_, at, _) in list(_held.items()) if time.monotonic() - at > HOLD_S]
    stale += list(_held)[: max(0, len(_held) - MAX_HELD)]
    for r in stale:
        _release(r)


def _take(run_id: str) -> Span | None:
    """The run's held span, if it is still within HOLD_S; stale ones end as planned here too (a server may plan
    nothing more for hours, and a run resumed then is a new trace, linked)."""
    with _lock:
        stale = [r for r, (_, at, _) in _held.items() if time.monotonic() - at > HOLD_S]
    for r in stale:
        _release(r)
    with _lock:
        held = _held.pop(run_id, None)
    return held[0] if held is not None else None


def _release(run_id: str) -> None:
    """A planned run that nobody executed here: its span ends when its planning did."""
    with _lock:
        held = _held.pop(run_id, None)
    if held is not None:
        span, _, ended = held
        span.set_attribute("conductor.run.status", "planned")
        span.end(end_time=ended)


def _link_of(span: Span) -> dict[str, str]:
    ctx = span.get_span_context()
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def _stored_link(options: RunOptions | None) -> list[Link]:
    stored = options.otel if options is not None else None
    if stored is None:
        return []
    try:
        ctx = SpanContext(int(stored["trace_id"], 16), int(stored["span_id"], 16), is_remote=True,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))
    except (KeyError, TypeError, ValueError):
        return []
    return [Link(ctx, {"conductor.link": "planned_by"})] if ctx.is_valid else []


def _quietly(what: str, action: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R | None:
    """Telemetry must never fail a run: a bug here is logged, and the run goes on."""
    try:
        return action(*args, **kwargs)
    except Exception:
        log.warning("telemetry: %s failed", what, exc_info=True)
        return None


@contextmanager
def _current(span: Span, what: str, failed: Callable[[Span, BaseException], object] = _error) -> Iterator[None]:
    """Run the block with `span` current. An exception out of it is described on the span (`failed`, quietly),
    ends the span and goes on; a block that ends well leaves the span open, for its owner to describe and end."""
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield
    except BaseException as exc:
        _quietly(what, failed, span, exc)
        span.end()
        raise


# -- what the engine tells: a context manager per span ---------------------------------------------------
class RunSpan:
    """A run's span, as the engine describes it. This one records nothing: export is off."""

    @property
    def link(self) -> dict[str, str] | None:
        """The span's ids, for the run's options (`otel`): a run resumed in another process links to them."""
        return None

    def planned(self, run: Run, options: RunOptions) -> None:
        """Planning stored `run` with `options`."""

    def finished(self, run: Run) -> None:
        """The run's execution (or a step run by hand) left it as `run`."""


class CallSpan:
    """One worker call (an attempt). This one records nothing."""

    def answered(self, text: str, usage: Usage) -> None:
        """The worker answered `text`, using `usage`."""


class StepSpan:
    """A step's span. This one records nothing."""

    def model_call(self, spec: WorkerSpec, messages: list[dict[str, str]]) -> AbstractContextManager[CallSpan]:
        """A call to the step's worker, or to a fallback of it: a span of its own under the step's; a second
        call is an event (`retry` or `fallback`) on the step's span."""
        return _NO_CALL

    def completed(self, text: str) -> None:
        """The step completed with output `text`."""


class PlanSpan:
    """A planner's `plan` or `review`. This one records nothing."""

    def planned(self, info: PlanInfo, workflow: Workflow | None) -> None:
        """The planner answered: `workflow` (for a review, None accepts the answer) and how it was made."""


class Tracer:
    """What the engine tells the telemetry: a context manager per span, which is current within the block (so
    spans opened there nest under it). An exception out of a block is recorded on its span and goes on. This
    tracer records nothing (export is off, and it costs next to nothing); `tracer()` gives the one to tell."""

    def planning(self) -> AbstractContextManager[RunSpan]:
        """A run's planning: its span stays open, after `planned`, for its execution in this process (it ends as
        `planned` if none comes within HOLD_S)."""
        return _NO_RUN

    def run(self, run_id: str, options: Callable[[str], RunOptions]) -> AbstractContextManager[RunSpan]:
        """A run's execution (or one step of it run by hand), in the span its planning opened in this process,
        else in a new one, linked to that. `options` reads a run's options (called only when tracing)."""
        return _NO_RUN

    def step(self, run_id: str, index: int, step: Step) -> AbstractContextManager[StepSpan]:
        """Step `index` of a run: its worker calls nest under it, its retries are its events."""
        return _NO_STEP

    def plan(self, kind: Literal["plan", "review"], api_base: str | None) -> AbstractContextManager[PlanSpan]:
        """A planner's `plan` or `review` (`kind`); `api_base`: the conductor's endpoint, if remote."""
        return _NO_PLAN


_NO_RUN = nullcontext(RunSpan())
_NO_CALL = nullcontext(CallSpan())
_NO_STEP = nullcontext(StepSpan())
_NO_PLAN = nullcontext(PlanSpan())


class _OtelRun(RunSpan):
    def __init__(self, span: Span, run_id: str | None = None, options: RunOptions | None = None,
                 read: Callable[[str], RunOptions] | None = None) -> None:
        self.span, self.run_id, self.options, self.read = span, run_id, options, read

    @property
    def link(self) -> dict[str, str] | None:
        return _quietly("linking a run", _link_of, self.span)

    def planned(self, run: Run, options: RunOptions) -> None:
        self.run_id = run.id
        _quietly("describing a planned run", _describe_run, self.span, run, options)

    def finished(self, run: Run) -> None:
        _quietly("describing a run", self._finished, run)

    def _finished(self, run: Run) -> None:
        options = self.options
        if options is None and self.read is not None:
            options = self.read(self.run_id or run.id)
        if options is not None:
            _describe_run(self.span, run, options)
        _finish_run(self.span, run)


class _OtelCall(CallSpan):
    def __init__(self, span: Span) -> None:
        self.span = span

    def answered(self, text: str, usage: Usage) -> None:
        self.span.set_attributes(_usage_attributes("gen_ai.usage", usage.prompt_tokens, usage.completion_tokens,
                                                   usage.cost_usd))
        if capture_content():
            self.span.set_attribute("gen_ai.output.messages", _output(text))


class _OtelStep(StepSpan):
    def __init__(self, span: Span, worker: str) -> None:
        self.span, self.worker = span, worker
        self.attempts = 0
        self.last_error: str | None = None

    @contextmanager
    def model_call(self, spec: WorkerSpec, messages: list[dict[str, str]]) -> Iterator[CallSpan]:
        self.attempts += 1
        if self.attempts > 1:
            name = "fallback" if spec.id != self.worker else "retry"
            self.span.add_event(name, {"conductor.attempt": self.attempts, "conductor.worker.id": spec.id,
                                       "conductor.reason": self.last_error or ""})
        from .workers.llm import completion_cap

        attrs = {"gen_ai.operation.name": "chat", "conductor.worker.id": spec.id,
                 **model_attributes(spec.model, spec.gguf, spec.api_base),
                 "gen_ai.request.max_tokens": completion_cap(spec)}
        temperature = spec.params.get("temperature")
        if isinstance(temperature, (int, float)):
            attrs["gen_ai.request.temperature"] = float(temperature)
        attrs["conductor.attempt"] = self.attempts
        kind = SpanKind.INTERNAL if spec.gguf else SpanKind.CLIENT
        span = _tracer.start_span(f"chat {attrs['gen_ai.request.model']}", kind=kind, attributes=attrs)
        if capture_content():
            span.set_attribute("gen_ai.input.messages", _messages(messages))

        def failed(span: Span, exc: BaseException) -> None:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"{spec.id}: timed out after {spec.timeout_s:g}s")
            self.last_error = _text(str(exc))[:300] or type(exc).__name__
            _error(span, exc)

        with _current(span, "a worker call failure", failed):
            yield _OtelCall(span)
        span.end()

    def completed(self, text: str) -> None:
        self.span.set_attribute("conductor.step.status", "completed")
        if capture_content():
            self.span.set_attribute("gen_ai.output.messages", _output(text))


class _OtelPlan(PlanSpan):
    def __init__(self, span: Span, kind: str, api_base: str | None) -> None:
        self.span, self.kind, self.api_base = span, kind, api_base

    def planned(self, info: PlanInfo, workflow: Workflow | None) -> None:
        _quietly("describing a plan", _describe_plan, self.span, info, workflow, self.api_base)
        if self.kind == "review":
            self.span.set_attribute("conductor.review.accepted", workflow is None)


def _step_failed(span: Span, exc: BaseException) -> None:
    span.set_attribute("conductor.step.status", _quietly("a step failure", _error, span, exc) or "failed")


class _OtelTracer(Tracer):
    @contextmanager
    def planning(self) -> Iterator[RunSpan]:
        span = _new_run_span()
        traced = _OtelRun(span)
        with _current(span, "a planning failure"):
            yield traced
        if traced.run_id is None:  # nothing was planned
            span.end()
        else:
            _hold(traced.run_id, span)

    @contextmanager
    def run(self, run_id: str, options: Callable[[str], RunOptions]) -> Iterator[RunSpan]:
        known = None  # read once, if read before the run
        span = _take(run_id)
        if span is None:
            known = _quietly("reading a run's options", options, run_id)
            span = _new_run_span(_stored_link(known))
            span.set_attribute("conductor.run.id", run_id)
        with _current(span, "a run failure"):
            yield _OtelRun(span, run_id, known, options)
        span.end()

    @contextmanager
    def step(self, run_id: str, index: int, step: Step) -> Iterator[StepSpan]:
        access = step.access if isinstance(step.access, str) else ",".join(str(j) for j in step.access)
        span = _tracer.start_span(f"step {index}", kind=SpanKind.INTERNAL, attributes={
            "conductor.run.id": run_id, "conductor.step.index": index, "conductor.step.worker": step.worker,
            "conductor.step.access": access})
        if capture_content():
            span.set_attribute("conductor.step.instruction", _text(step.instruction))
        with _current(span, "a step failure", _step_failed):
            yield _OtelStep(span, step.worker)
        span.end()

    @contextmanager
    def plan(self, kind: Literal["plan", "review"], api_base: str | None) -> Iterator[PlanSpan]:
        span = _tracer.start_span(kind, kind=SpanKind.INTERNAL)
        with _current(span, "a planning failure"):
            yield _OtelPlan(span, kind, api_base)
        span.end()


_OFF = Tracer()
_ON = _OtelTracer()


def tracer() -> Tracer:
    """The tracer to tell: OpenTelemetry's while spans go anywhere (`active()`), else the one that records
    nothing."""
    return _ON if active() else _OFF
