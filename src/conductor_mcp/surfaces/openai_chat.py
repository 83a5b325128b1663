"""What OpenAI's chat completions mean here: the model names, a request checked into a run's arguments, and the
answer's parts (usage, the `conductor` extension object, finish reasons, error envelopes, progress lines).

The last user message is the task; earlier turns and system messages go with it as bounded context. Our own
options travel in one extension object, `conductor`, which the `openai` SDK sends through `extra_body`; the answer
carries a `conductor` object with the run id, status, workflow, cost and trace URI. What we cannot honour
(images, audio, tools, n > 1) is refused with a 400, never silently dropped. Serving is openai_api.py's.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import (
    ConductorError,
    ConfigError,
    RunNotFound,
    RunStateError,
    ShuttingDown,
    StoreError,
    WorkerError,
    WorkflowError,
    internal_message,
)
from ..models import MAX_STEPS_LIMIT, Budget, Prefer, Run, RunStatus, Usage
from ..redact import redact
from ..runs.request import MAX_JSON_DEPTH, MAX_TASK_CHARS, InputError, RequestError, check_json, check_request
from ..runs.workflows import field_problems

if TYPE_CHECKING:
    from ..runs.engine import StepEvent
    from ..workers.registry import Registry

log = logging.getLogger(__name__)

MAX_CONTEXT_CHARS = 12_000  # earlier messages sent with the task: about 3,000 tokens
MAX_CONTEXT_MESSAGE_CHARS = 4_000  # one earlier message at most
STARTED = int(time.time())
OWNER = "conductor-mcp"


# -- models --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """What a model name sets; a request's `conductor` options override each field."""

    strategy: str
    description: str
    max_steps: int | None = None
    max_rounds: int | None = None
    max_depth: int | None = None
    prefer: Prefer | None = None


PRESETS: dict[str, Preset] = {
    "conductor": Preset("conductor", "the conductor plans a workflow as the manifest configures it"),
    "conductor-mini": Preset("conductor", "latency first: at most 2 steps, no review rounds, no recursion, prefer "
                             "cost (rated outcomes weighed against cost)", max_steps=2, max_rounds=1, max_depth=0,
                             prefer="cost"),
    "conductor-ultra": Preset("conductor", "quality first: up to 5 steps, up to 3 review rounds, recursion to depth "
                              "2, prefer quality", max_steps=MAX_STEPS_LIMIT, max_rounds=3, max_depth=2,
                              prefer="quality"),
    "moa": Preset("moa", "Mixture-of-Agents: up to four workers answer in parallel, then one aggregates"),
}
SINGLE = "single:"


def conductor_unavailable(registry: Registry) -> str | None:
    """Why the conductor cannot plan now (a remote conductor whose key variable is unset), else None."""
    spec = registry.conductor
    if spec.model and spec.api_key_env and not os.environ.get(spec.api_key_env):
        return f"the conductor's key variable {spec.api_key_env} is not set"
    return None


def worker_model_name(worker: str) -> str:
    """A worker's model name: its id, or `single:<id>` where the id is one of the conductor's names."""
    return f"{SINGLE}{worker}" if worker in PRESETS else worker


def model_list(registry: Registry) -> list[dict[str, Any]]:
    """Exactly the models a request can name now."""
    models: list[dict[str, Any]] = []
    no_conductor = conductor_unavailable(registry)
    for name, preset in PRESETS.items():
        if preset.strategy == "conductor" and no_conductor:
            continue
        models.append({"id": name, "object": "model", "created": STARTED, "owned_by": OWNER,
                       "description": preset.description})
    for state in registry.states:
        if state.available and state.spec.kind == "model":  # a python worker answers no chat
            models.append({"id": worker_model_name(state.spec.id), "object": "model", "created": STARTED,
                           "owned_by": OWNER, "description": f"one step on worker {state.spec.id}: "
                           f"{state.spec.description or state.spec.model or 'local model'}"})
    return models


# -- errors --------------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An answer in OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, extra: dict[str, Any] | None = None, retry: bool | None = None,
                 allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = redact(message)
        self.type = type_
        self.code = code
        self.param = param
        self.extra = extra or {}
        self.retry = retry  # x-should-retry: the openai SDK retries 409, 429 and 5xx unless told not to
        self.allow = allow  # a 405's methods (RFC 9110 requires the header)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.extra}}

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [(b"content-type", b"application/json")]
        if self.retry is not None:
            out.append((b"x-should-retry", b"true" if self.retry else b"false"))
        if self.allow is not None:
            out.append((b"allow", self.allow.encode()))
        return out


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def error_for(exc: BaseException) -> ApiError:
    """Our errors as OpenAI's clients expect them; anything else is a 500 whose text names no key."""
    if isinstance(exc, ApiError):
        return exc
    text = str(exc)
    if isinstance(exc, ConfigError | WorkflowError):
        return bad_request(text)
    if isinstance(exc, RunNotFound):
        return ApiError(404, text, code="run_not_found")
    if isinstance(exc, ShuttingDown):  # a retry goes to another replica behind a balancer
        return ApiError(503, text, "server_error", code="shutting_down", retry=True)
    if isinstance(exc, RunStateError):
        return ApiError(409, text, code="run_busy", retry=False)
    if isinstance(exc, StoreError):
        return ApiError(503, text, "server_error", code="store_unavailable", retry=False)
    if isinstance(exc, WorkerError):
        return ApiError(502, text, "server_error", code="upstream_error", retry=False)
    if isinstance(exc, ConductorError):
        return bad_request(text)
    log.error("chat completion failed", exc_info=exc)
    return ApiError(500, f"{internal_message(exc)}; the server's log has the traceback", "server_error",
                    retry=False)


# -- requests ------------------------------------------------------------------------------------------------
class ConductorOptions(BaseModel):
    """The request's `conductor` extension object (`extra_body={"conductor": {...}}` in the openai SDK)."""

    model_config = ConfigDict(extra="forbid")

    workers: list[str] | None = Field(default=None, min_length=1, description="worker ids to use (default all)")
    max_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS_LIMIT)
    max_usd: float | None = Field(default=None, gt=0)
    max_total_tokens: int | None = Field(default=None, ge=1)
    max_rounds: int | None = Field(default=None, ge=1, le=5)
    max_depth: int | None = Field(default=None, ge=0, le=4)
    prefer: Prefer | None = None
    workflow: dict[str, Any] | None = Field(default=None, description="a workflow of your own: no planning")


MAX_OUTPUT_TOKENS = 1_048_576  # a max_tokens beyond any model's window is a mistake, refused as OpenAI's API does


class ChatBody(BaseModel):
    """A chat completion's body as OpenAI's API defines it: each parameter with its type and range, and no other
    (an unknown parameter is refused, as OpenAI's API refuses it: a misspelt option must not be silently
    ignored). Sampling parameters are checked, not applied: each worker samples with its manifest's settings."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    messages: list[Any]
    conductor: dict[str, Any] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = Field(default=None, max_length=4)
    user: str | None = Field(default=None, max_length=256)
    n: int | None = Field(default=None, ge=1, le=128)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = Field(default=None, max_length=64)
    reasoning_effort: str | None = Field(default=None, max_length=64)
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None


def check_body(body: dict[str, Any]) -> None:
    """400 naming the first parameter of the wrong type, out of range, or unknown."""
    try:
        ChatBody.model_validate(body, strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = error["loc"]
        param = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in loc).lstrip(".") or None
        top = loc[0] if loc else None
        if error["type"] == "extra_forbidden":
            raise bad_request(f"{top}: unknown parameter; this server takes OpenAI's chat completion parameters "
                              "and `conductor`", param=str(top), code="unknown_parameter") from None
        raise bad_request(f"{param}: {error['msg']}", param=str(top) if top is not None else None) from None


@dataclass
class ChatRequest:
    model: str
    task: str
    strategy: str
    workers: list[str]
    max_steps: int
    budget: Budget
    prefer: Prefer | None
    workflow: dict[str, Any] | None
    stream: bool
    include_usage: bool
    context_messages: int = 0  # earlier messages sent with the task
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = field(default_factory=lambda: f"chatcmpl-{secrets.token_hex(12)}")


UNSUPPORTED_PARTS = {"image_url": "image", "input_image": "image", "input_audio": "audio", "audio": "audio",
                     "file": "file", "input_file": "file"}


def message_text(message: dict[str, Any], where: str) -> str:
    """A message's text; image, audio and file parts, and tool messages, are refused rather than dropped."""
    role = message.get("role")
    if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
        raise bad_request(f"{where}: tool messages and tool calls are not supported: the conductor's workers "
                          "answer in text only", param=where, code="unsupported_parameter")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise bad_request(f"{where}.content: give a string or a list of text parts", param=f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in UNSUPPORTED_PARTS:
            raise bad_request(f"{where}.content[{j}]: {UNSUPPORTED_PARTS[kind]} input is not supported; send text "
                              "only", param=f"{where}.content[{j}]", code="unsupported_content")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise bad_request(f"{where}.content[{j}]: unknown part type {kind!r}; send text parts",
                              param=f"{where}.content[{j}]")
    return "\n".join(texts)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} more characters left out]"


def compose_task(messages: list[Any]) -> tuple[str, int]:
    """The task (the last user message) with the conversation before it as bounded context: system
    messages first, then the latest turns that fit in MAX_CONTEXT_CHARS; returns the text and how many
    earlier messages went with it."""
    if not messages:
        raise bad_request("messages: empty; send at least one user message", param="messages")
    texts: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}]: must be an object with `role` and `content`", param=f"messages[{i}]")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise bad_request(f"messages[{i}].role: {role!r}; allowed: system, developer, user, assistant",
                              param=f"messages[{i}].role")
        texts.append((str(role), message_text(m, f"messages[{i}]")))
    last = max((i for i, (role, _) in enumerate(texts) if role == "user"), default=None)
    if last is None:
        raise bad_request("messages: no user message; the last user message is the task", param="messages")
    task = texts[last][1].strip()
    if not task:
        raise bad_request(f"messages[{last}].content: the task (the last user message) is empty",
                          param=f"messages[{last}].content")
    earlier = [(i, role, text.strip()) for i, (role, text) in enumerate(texts) if i != last and text.strip()]
    if not earlier:
        return task, 0
    room = MAX_CONTEXT_CHARS
    kept: list[tuple[int, str]] = []
    for i, role, text in [e for e in earlier if e[1] in ("system", "developer")] + \
                         [e for e in reversed(earlier) if e[1] not in ("system", "developer")]:
        line = f"{'system' if role == 'developer' else role}: {_clip(text, MAX_CONTEXT_MESSAGE_CHARS)}"
        if len(line) > room:
            break
        kept.append((i, line))
        room -= len(line)
    if not kept:
        return task, 0
    left_out = len(earlier) - len(kept)
    lines = [line for _, line in sorted(kept)]
    if left_out:
        lines.insert(0, f"({left_out} earlier message(s) left out)")
    header = "Earlier messages of this conversation, for context (the task above is the user's latest message):"
    return f"{task}\n\n{header}\n" + "\n\n".join(lines), len(kept)


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{key}: {value!r}; give true or false", param=key)
    return value


def check_unsupported(body: dict[str, Any]) -> None:
    """What we cannot honour is refused, never silently ignored."""
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request(f"n: {n!r}; only n = 1 is supported (one run, one answer)", param="n",
                          code="unsupported_parameter")
    for key in ("tools", "functions"):
        if body.get(key):
            raise bad_request(f"{key}: tools are not supported: the conductor's workers answer in text only",
                              param=key, code="unsupported_parameter")
    choice = body.get("tool_choice", body.get("function_call"))
    if choice not in (None, "none", "auto"):
        raise bad_request("tool_choice: tools are not supported", param="tool_choice", code="unsupported_parameter")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise bad_request("audio output is not supported; the answer is text", param="modalities",
                          code="unsupported_parameter")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise bad_request(f"response_format: {fmt.get('type')!r} is not supported; the answer is free text",
                          param="response_format", code="unsupported_parameter")
    if body.get("logprobs"):
        raise bad_request("logprobs: not supported (the answer comes from several models)", param="logprobs",
                          code="unsupported_parameter")


def parse_body(raw: bytes) -> Any:
    """The body's JSON; 400 for text that is not JSON, not UTF-8, or nested deeper than the parser's recursion."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise bad_request(f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None


def parse_request(body: Any, registry: Registry) -> ChatRequest:
    """A request checked against the registry before anything is planned or spent."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        check_json(body)
    except InputError as exc:
        raise bad_request(str(exc), param=exc.param) from None
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: required; GET /v1/models lists the models", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise bad_request("messages: required, a list of messages", param="messages")
    check_unsupported(body)
    check_body(body)
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    include_usage = bool(stream and isinstance(options, dict) and options.get("include_usage"))
    raw = body.get("conductor")
    try:
        opts = ConductorOptions.model_validate(raw if raw is not None else {}, strict=True)  # JSON: false is no 0
    except ValidationError as exc:
        problems = field_problems(exc, "conductor")
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        param = "conductor" + "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in first)
        raise bad_request("conductor: " + "; ".join(problems), param=param) from None
    task, context = compose_task(messages)
    strategy, preset = resolve_model(model, registry)
    budget = Budget.merged(None, max_total_tokens=opts.max_total_tokens, max_usd=opts.max_usd,
                           max_rounds=opts.max_rounds or preset.max_rounds,
                           max_depth=opts.max_depth if opts.max_depth is not None else preset.max_depth)
    try:
        req = check_request(registry, task, opts.workers, opts.max_steps or preset.max_steps, strategy, budget,
                            opts.prefer or preset.prefer, opts.workflow)
    except RequestError as exc:
        if exc.too_long:
            raise bad_request(f"messages: the task and its context are {len(task)} characters, at most "
                              f"{MAX_TASK_CHARS}", param="messages", code="context_length_exceeded") from None
        param = _PARAMS[exc.param]
        raise bad_request(f"{param}: {exc.detail}", param=param) from None
    return ChatRequest(model=model, task=req.task, strategy=strategy, workers=req.workers, max_steps=req.max_steps,
                       budget=req.budget, prefer=req.prefer, workflow=opts.workflow, stream=stream,
                       include_usage=include_usage, context_messages=context)


# where each argument of a request is in a chat completion's body
_PARAMS = {"task": "messages", "workers": "conductor.workers", "max_steps": "conductor.max_steps",
           "strategy": "model", "workflow": "conductor.workflow"}


def resolve_model(name: str, registry: Registry) -> tuple[str, Preset]:
    """The strategy and preset a model name stands for; 404 for a name that cannot be called now."""
    preset = PRESETS.get(name)
    if preset is not None:
        reason = conductor_unavailable(registry) if preset.strategy == "conductor" else None
        if reason:
            raise ApiError(404, f"model {name!r} cannot be used now: {reason}", code="model_not_found",
                           param="model")
        return preset.strategy, preset
    worker = name.removeprefix(SINGLE)
    state = next((s for s in registry.states if s.spec.id == worker and s.spec.kind == "model"), None)
    if state is None or (name != worker_model_name(worker) and not name.startswith(SINGLE)):
        names = ", ".join(m["id"] for m in model_list(registry))
        raise ApiError(404, f"model {name!r} does not exist; the models are: {names}", code="model_not_found",
                       param="model")
    if not state.available:
        raise ApiError(404, f"model {name!r} cannot be used now: worker {worker}: {state.reason}",
                       code="model_not_found", param="model")
    return f"{SINGLE}{worker}", Preset(f"{SINGLE}{worker}", "")


# -- answers -------------------------------------------------------------------------------------------------
def trace_uri(run_id: str) -> str:
    return f"conductor://runs/{run_id}"


def usage_body(total: Usage, conductor: Usage) -> dict[str, Any]:
    """OpenAI's usage over the whole run tree; the conductor's own planning and review is also shown apart
    (`orchestration_tokens`, and its completion tokens as reasoning tokens)."""
    return {"prompt_tokens": total.prompt_tokens, "completion_tokens": total.completion_tokens,
            "total_tokens": total.total_tokens,
            "completion_tokens_details": {"reasoning_tokens": conductor.completion_tokens},
            "orchestration_tokens": conductor.total_tokens}


def extension(run: Run, total: Usage | None = None, conductor: Usage | None = None) -> dict[str, Any]:
    """What a caller needs to inspect or resume the run over MCP or the CLI."""
    out: dict[str, Any] = {
        "run_id": run.id, "status": run.status.value, "error": redact(run.error) if run.error else None,
        "workflow": run.workflow.model_dump(), "plan_source": run.plan.source,
        "steps": [{"index": s.index, "worker": s.worker, "status": s.status.value} for s in run.steps],
        "trace_uri": trace_uri(run.id), "resume": f"mcp-conductor resume {run.id}"}
    if total is not None and conductor is not None:
        out.update(cost_usd=total.cost_usd, calls=total.calls,
                   orchestration={"prompt_tokens": conductor.prompt_tokens,
                                  "completion_tokens": conductor.completion_tokens,
                                  "total_tokens": conductor.total_tokens, "cost_usd": conductor.cost_usd,
                                  "calls": conductor.calls})
    return out


def finish_reason(run: Run, ext: dict[str, Any]) -> str:
    """`stop` for an answer, `length` for a budget stop (with the best answer so far); a failed or cancelled
    run is an error in OpenAI's envelope, never a 200."""
    if run.status == RunStatus.COMPLETED:
        return "stop"
    if run.status == RunStatus.BUDGET_EXCEEDED:
        return "length"
    how = f"resume it with `mcp-conductor resume {run.id}` or the MCP tool resume; trace: {trace_uri(run.id)}"
    if run.status == RunStatus.FAILED:
        raise ApiError(502, f"run {run.id} failed: {run.error}; completed steps are kept: {how}", "server_error",
                       code="run_failed", extra={"conductor": ext}, retry=False)
    raise ApiError(503, f"run {run.id} ended {run.status.value}: {run.error}; completed steps are kept: {how}",
                   "server_error", code=f"run_{run.status.value}", extra={"conductor": ext}, retry=False)


def plan_text(run: Run) -> str:
    """The workflow, steps counted from 0 as the trace counts them."""
    lines = [f"Plan: {len(run.workflow.steps)} step(s), {run.plan.source} ({run.plan.planner}); run {run.id}"]
    for i, s in enumerate(run.workflow.steps):
        sees = s.access if isinstance(s.access, str) else "steps " + ", ".join(str(j) for j in s.access)
        lines.append(f"  step {i} ({s.worker}, sees {sees}): {_clip(' '.join(s.instruction.split()), 200)}")
    return "\n".join(lines) + "\n"


def start_text(req: ChatRequest) -> str:
    if req.workflow is not None:
        how = "your workflow"
    elif req.strategy == "conductor":
        how = f"the conductor plans ({req.model}: up to {req.max_steps} step(s), {req.budget.max_rounds} round(s))"
    elif req.strategy == "moa":
        how = "Mixture-of-Agents"
    else:
        how = f"one step on {req.strategy[len(SINGLE):]}"
    context = f", with {req.context_messages} earlier message(s) as context" if req.context_messages else ""
    return f"Planning: {how}{context}.\n"


def step_text(event: StepEvent, root: str) -> str:
    """A step's start or end; steps count from 0, as the trace, access lists and run_step do."""
    where = "" if event.run_id == root else f"[run {event.run_id}] "
    if event.phase == "start":
        what = " ".join(event.instruction.split())
        return f"{where}step {event.index} ({event.worker}) started: {_clip(what, 120)}\n"
    return f"{where}step {event.index} ({event.worker}) {event.status.value}\n"


def end_text(run: Run, total: Usage) -> str:
    cost = "" if total.cost_usd is None else f", ${total.cost_usd:.4f}"
    return f"Run {run.status.value}: {total.calls} call(s), {total.total_tokens} tokens{cost}.\n"
