"""A scripted, OpenAI-compatible chat-completions server for tests and benchmarks.

Tests and load benchmarks talk to this real HTTP server (starlette + uvicorn) instead of a cloud
provider, so they exercise the real client stack (httpx, litellm, retries, timeouts) while staying
offline, deterministic and cheap.  Replies depend only on (model, messages); latency and faults
(429, 500, hangs, connection resets, malformed JSON, empty content) and the refusals real providers
send (401 echoing the key, 404 unknown model, context length exceeded, insufficient_quota) can be
injected on demand, and every request is recorded (with its Authorization header and max_tokens) so
tests can assert how often a step was really called and what it sent.  ``max_tokens`` is honoured:
a reply is cut to that many tokens (finish_reason ``length``).  With ``api_key`` set, a request whose
``Authorization`` is not ``Bearer <api_key>`` gets a 401 that quotes the header it sent, as some
OpenAI-compatible servers and proxies do.

In-process use::

    with ScriptedServer(latency_s=0.0) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test")

Separate process (prints ``READY http://127.0.0.1:PORT/v1`` once listening)::

    python -m tests.servers.openai_server --port 0 --latency-ms 50 --fault-rate 0.1 --fault-kinds 429,500
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import random
import re
import secrets
import signal
import socket
import statistics
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = [
    "FAULT_KINDS",
    "CallRecord",
    "ReplyFn",
    "ScriptedServer",
    "count_tokens",
    "default_reply",
    "main",
    "message_text",
]

Message = Mapping[str, Any]
ReplyFn = Callable[[list[dict[str, Any]]], str]

FAULT_KINDS: frozenset[str] = frozenset(
    {"429", "500", "hang", "reset", "malformed", "empty", "401", "404", "context_length", "quota"}
)
"""Fault kinds the server can inject; see :meth:`ScriptedServer.set_faults`."""

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_REPLY_RE = re.compile(r"^[ \t]*REPLY:[ \t]?(.*?)\r?$", re.MULTILINE)
_CHUNK_SPLIT_RE = re.compile(r"(?<=\s)(?=\S)")
_RAW_SEND_KEY = "scripted.raw_send"
_JSON_SEPARATORS = (",", ":")
_MODEL_CREATED = 1_700_000_000

_FILLER: tuple[str, ...] = (
    "The request has been read carefully and the most relevant details were weighed before answering.",
    "Where the instructions were ambiguous, the simplest interpretation consistent with context was chosen.",
    "Intermediate reasoning is summarised briefly here so that downstream steps can rely on a stable format.",
    "No external tools or network resources were consulted while producing this scripted response text.",
    "Each claim below follows directly from the supplied messages and does not depend on hidden state.",
    "If further clarification is needed, a follow-up request with more specific constraints will help a lot.",
    "The answer is intentionally deterministic, so repeating the same request yields exactly the same text.",
    "Edge cases were considered, including empty inputs, very long inputs and unusual characters.",
    "A concise conclusion is given at the end on its own line, prefixed in a way that is easy to parse.",
    "This paragraph exists mainly to give the response a realistic length for latency and token accounting.",
    "Any numbers mentioned are illustrative and should be checked against the original source material.",
    "The structure of the reply mirrors what a careful assistant would produce for a comparable question.",
)
_ANSWER_WORDS: tuple[str, ...] = (
    "amber", "birch", "cobalt", "delta", "ember", "fjord", "granite", "harbor",
    "indigo", "juniper", "kestrel", "lumen", "meadow", "nimbus", "onyx", "prairie",
)  # fmt: skip


def count_tokens(text: str) -> int:
    """Count tokens with a tiny deterministic tokenizer (words and single punctuation marks).

    Exposed so tests can recompute ``usage`` independently of the server.
    """
    return len(_TOKEN_RE.findall(text))


def truncate_tokens(text: str, limit: int) -> str:
    """The start of ``text`` holding at most ``limit`` tokens (as :func:`count_tokens` counts them)."""
    for i, match in enumerate(_TOKEN_RE.finditer(text)):
        if i == limit:
            return text[: match.start()].rstrip()
    return text


def message_text(content: Any) -> str:
    """Flatten an OpenAI message ``content`` (string, list of parts or None) into plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def _last_user_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def _prompt_tokens(messages: Sequence[Message]) -> int:
    return sum(count_tokens(message_text(m.get("content"))) + 3 for m in messages)


def _conversation_digest(model: str, messages: Sequence[Message]) -> str:
    canonical = json.dumps(list(messages), sort_keys=True, separators=_JSON_SEPARATORS, ensure_ascii=False)
    return hashlib.sha256(f"{model}\x00{canonical}".encode()).hexdigest()


def default_reply(model: str, messages: Sequence[Message]) -> str:
    """Build the default scripted reply: deterministic, 80-250 words, ends with an ``ANSWER:`` line.

    It names the model and quotes the start of the last user message so tests can tell which
    request produced which reply.
    """
    digest = _conversation_digest(model, messages)
    rng = random.Random(int(digest[:16], 16))
    quote = " ".join(_last_user_text(messages).split())[:60]
    opener = (
        f'This is {model} responding to: "{quote}". '
        "What follows is a considered reply based on the request and the surrounding context."
    )
    body = " ".join(rng.sample(_FILLER, k=rng.randint(5, 8)))
    answer = f"ANSWER: {rng.choice(_ANSWER_WORDS)}-{digest[:6]}"
    return f"{opener}\n\n{body}\n\n{answer}"


@dataclass(frozen=True)
class CallRecord:
    """One chat-completion request as seen by the server (kept for test assertions)."""

    t: float
    model: str
    prompt_sha256: str
    outcome: str
    latency_s: float
    status: int | None
    stream: bool
    last_user: str
    authorization: str | None = None
    max_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view; the full prompt is left out to keep stats small."""
        return {
            "t": self.t,
            "model": self.model,
            "prompt_sha256": self.prompt_sha256,
            "prompt_preview": self.last_user[:60],
            "outcome": self.outcome,
            "latency_s": self.latency_s,
            "status": self.status,
            "stream": self.stream,
            "max_tokens": self.max_tokens,
        }


@dataclass(frozen=True)
class _Rule:
    model: str | None
    contains: str | None
    reply: str | ReplyFn

    def matches(self, model: str, messages: Sequence[Message]) -> bool:
        if self.model is not None and self.model != model:
            return False
        if self.contains is None:
            return True
        return any(self.contains in message_text(m.get("content")) for m in messages)


class _BadRequest(Exception):
    """Raised while parsing a request that a real provider would reject with 400."""


def _error_body(message: str, err_type: str, code: str | None = None) -> bytes:
    payload = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return json.dumps(payload, separators=_JSON_SEPARATORS).encode()


# What real providers answer when they refuse: outcome -> (status, message, type, code). The 401 quotes the
# Authorization header it got, as some OpenAI-compatible servers and proxies do (OpenAI itself masks it).
_REFUSALS: dict[str, tuple[int, str, str, str]] = {
    "unauthorized": (401, "Incorrect API key provided: {auth}.", "invalid_request_error", "invalid_api_key"),
    "401": (401, "Incorrect API key provided: {auth}.", "invalid_request_error", "invalid_api_key"),
    "404": (404, "The model `{model}` does not exist or you do not have access to it.", "invalid_request_error",
            "model_not_found"),
    "context_length": (400, "This model's maximum context length is 16 tokens. However, your messages resulted in "
                       "{tokens} tokens. Please reduce the length of the messages.", "invalid_request_error",
                       "context_length_exceeded"),
    "quota": (429, "You exceeded your current quota, please check your plan and billing details.",
              "insufficient_quota", "insufficient_quota"),
}


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    """The completion cap a request asked for (``max_completion_tokens`` is the newer name)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _bad_request(message: str) -> Response:
    return Response(_error_body(message, "invalid_request_error"), 400, media_type="application/json")


def _json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=_JSON_SEPARATORS, ensure_ascii=False).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _abort_connection(send: Send) -> bool:
    """Drop the TCP connection with a RST and no HTTP response at all.

    uvicorn's ``send`` is a bound method of its per-request cycle, which holds the asyncio
    transport; aborting it (with SO_LINGER=0) is the only way to make the client see a genuine
    connection error instead of a 500 page.  Returns False when the server is not uvicorn.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return True


class ScriptedServer:
    """OpenAI-compatible chat server with scripted replies, latency, fault injection and stats.

    All settings can be changed while the server runs (from any thread); reads and writes of
    the fault plan and the statistics are guarded by one lock.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        model_latency: Mapping[str, float] | None = None,
        fault_rate: float = 0.0,
        fault_kinds: Iterable[str] = ("429", "500"),
        seed: int | None = 0,
        retry_after: float = 0.05,
        hang_s: float = 30.0,
        fail_models: Mapping[str, str] | None = None,
        models: Sequence[str] = ("scripted-a", "scripted-b"),
        backlog: int = 2048,
        api_key: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.models: list[str] = list(models)
        self.backlog = backlog
        self._lock = threading.Lock()
        self._latency_s = 0.0
        self._model_latency: dict[str, float] = {}
        self._fault_rate = 0.0
        self._fault_kinds: list[str] = []
        self._rng = random.Random(seed)
        self._retry_after = 0.0
        self._hang_s = 0.0
        self._fail_models: dict[str, str] = {}
        self._api_key = api_key
        self._rules: list[_Rule] = []
        self._calls: list[CallRecord] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._stopping = False
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.set_latency(latency_s=latency_s, model_latency=model_latency or {})
        self.set_faults(
            rate=fault_rate,
            kinds=fault_kinds,
            retry_after=retry_after,
            hang_s=hang_s,
            fail_models=fail_models or {},
        )
        self._app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/models", self._list_models, methods=["GET"]),
                Route("/models", self._list_models, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/control/stats", self._control_stats, methods=["GET"]),
                Route("/control/reset", self._control_reset, methods=["POST"]),
                Route("/control/faults", self._control_faults, methods=["GET", "POST"]),
                Route("/control/latency", self._control_latency, methods=["GET", "POST"]),
            ]
        )

    # ------------------------------------------------------------------ configuration

    def script(self, model: str | None = None, contains: str | None = None, *, reply: str | ReplyFn) -> None:
        """Register a reply rule; rules are tried in registration order and the first match wins.

        ``model`` must equal the requested model (None = any); ``contains`` must occur in the text
        of any message (None = always).  ``reply`` is a string or ``callable(messages) -> str``.
        Rules take precedence over ``REPLY:`` lines and the default reply.
        """
        with self._lock:
            self._rules.append(_Rule(model=model, contains=contains, reply=reply))

    def clear_scripts(self) -> None:
        """Forget all rules registered with :meth:`script`."""
        with self._lock:
            self._rules.clear()

    def set_faults(
        self,
        rate: float | None = None,
        kinds: Iterable[str] | None = None,
        seed: int | None = None,
        *,
        retry_after: float | None = None,
        hang_s: float | None = None,
        fail_models: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Change the fault plan; arguments left as None keep their current value.

        Each request fails with probability ``rate``, the kind drawn uniformly from ``kinds``
        with an RNG reseeded by ``seed``.  ``fail_models`` maps a model to a kind it always gets.
        Returns the resulting plan.
        """
        kind_list = None if kinds is None else [str(k) for k in kinds]
        checked = list(kind_list or []) + list((fail_models or {}).values())
        unknown = sorted(set(checked) - FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}; expected some of {sorted(FAULT_KINDS)}")
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], got {rate}")
        with self._lock:
            if rate is not None:
                self._fault_rate = float(rate)
            if kind_list is not None:
                self._fault_kinds = kind_list
            if seed is not None:
                self._rng.seed(seed)
            if retry_after is not None:
                self._retry_after = max(0.0, float(retry_after))
            if hang_s is not None:
                self._hang_s = max(0.0, float(hang_s))
            if fail_models is not None:
                self._fail_models = dict(fail_models)
            return self._fault_plan_locked()

    def set_api_key(self, api_key: str | None) -> None:
        """Require ``Authorization: Bearer <api_key>`` (None accepts any); a mismatch gets a 401 that
        echoes the header received, as some OpenAI-compatible servers and proxies do."""
        with self._lock:
            self._api_key = api_key

    def set_latency(
        self, latency_s: float | None = None, model_latency: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        """Change the default latency and/or replace the per-model latency overrides."""
        with self._lock:
            if latency_s is not None:
                self._latency_s = max(0.0, float(latency_s))
            if model_latency is not None:
                self._model_latency = {k: max(0.0, float(v)) for k, v in model_latency.items()}
            return {"latency_s": self._latency_s, "model_latency": dict(self._model_latency)}

    def reply_for(self, model: str, messages: Sequence[Message]) -> str:
        """The reply the server would give (absent faults); lets tests compute expected output."""
        with self._lock:
            rules = list(self._rules)
        plain = [dict(m) for m in messages]
        for rule in rules:
            if rule.matches(model, plain):
                return rule.reply if isinstance(rule.reply, str) else rule.reply(plain)
        match = _REPLY_RE.search(_last_user_text(plain))
        if match is not None:
            return match.group(1)
        return default_reply(model, plain)

    # ------------------------------------------------------------------ statistics

    def stats(self, include_calls: bool = True) -> dict[str, Any]:
        """Snapshot of request counts and per-request records (safe to call from any thread).

        ``include_calls=False`` (HTTP: ``GET /control/stats?calls=0``) skips the per-request list,
        which gets large in long benchmarks.
        """
        with self._lock:
            calls = list(self._calls)
            in_flight, max_in_flight = self._in_flight, self._max_in_flight
        by_outcome = Counter(c.outcome for c in calls)
        latencies = [c.latency_s for c in calls if c.outcome == "ok"]
        return {
            "requests": len(calls),
            "ok": by_outcome.get("ok", 0),
            "by_outcome": dict(by_outcome),
            "by_model": dict(Counter(c.model for c in calls)),
            "ok_by_model": dict(Counter(c.model for c in calls if c.outcome == "ok")),
            "in_flight": in_flight,
            "max_in_flight": max_in_flight,
            "ok_latency_median_s": statistics.median(latencies) if latencies else None,
            "calls": [c.as_dict() for c in calls] if include_calls else [],
        }

    def calls(self) -> list[CallRecord]:
        """The raw request records, oldest first."""
        with self._lock:
            return list(self._calls)

    def reset_stats(self) -> None:
        """Forget all recorded requests (in-flight requests are still recorded when they finish)."""
        with self._lock:
            self._calls.clear()
            self._max_in_flight = self._in_flight

    def ok_calls_for(self, substring: str) -> int:
        """Number of successful replies whose last user message contains ``substring``."""
        with self._lock:
            return sum(1 for c in self._calls if c.outcome == "ok" and substring in c.last_user)

    # ------------------------------------------------------------------ lifecycle

    @property
    def app(self) -> Callable[[Scope, Receive, Send], Any]:
        """The ASGI application (usable with any ASGI server or ``httpx.ASGITransport``)."""
        return self

    @property
    def url(self) -> str:
        """Server root, e.g. ``http://127.0.0.1:PORT`` (control endpoints live under it)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI ``base_url`` / litellm ``api_base``, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    def start(self, timeout_s: float = 10.0) -> ScriptedServer:
        """Serve in a daemon thread; returns once the socket accepts connections."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
        # TCP, and without it Nagle + delayed ACKs add ~40 ms to every response.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self,
            log_config=None,  # leave the host process's logging configuration alone
            log_level="warning",
            access_log=False,
            lifespan="off",
            backlog=self.backlog,
            limit_concurrency=None,
            timeout_graceful_shutdown=5,
            # Long keep-alive: with uvicorn's 5 s default, pooled client connections idle under load
            # race with the server closing them and surface as spurious ReadErrors in benchmarks.
            timeout_keep_alive=120,
        )
        server = uvicorn.Server(config)
        self._stopping = False
        self._uvicorn = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"scripted-openai-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"scripted OpenAI server failed to start on {self.url}")
            time.sleep(0.002)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving: hanging requests are released, then uvicorn shuts down gracefully."""
        self._stopping = True
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread = None
        self._uvicorn = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ ASGI plumbing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Remember the server's own ``send`` (needed to abort the connection), then route."""
        if scope["type"] == "http":
            scope[_RAW_SEND_KEY] = send
        await self._app(scope, receive, send)

    def _fault_plan_locked(self) -> dict[str, Any]:
        return {
            "rate": self._fault_rate,
            "kinds": list(self._fault_kinds),
            "retry_after": self._retry_after,
            "hang_s": self._hang_s,
            "fail_models": dict(self._fail_models),
        }

    def _plan(self, model: str, header_latency: str | None) -> tuple[str, float, float, float]:
        """Decide outcome and timing of one request: (outcome, latency, hang, retry_after)."""
        with self._lock:
            outcome = self._fail_models.get(model, "ok")
            rate, kinds = self._fault_rate, self._fault_kinds
            if outcome == "ok" and rate > 0.0 and kinds and self._rng.random() < rate:
                outcome = self._rng.choice(kinds)
            latency = self._model_latency.get(model, self._latency_s)
            hang_s, retry_after = self._hang_s, self._retry_after
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        if header_latency is not None:
            with contextlib.suppress(ValueError):
                latency = max(0.0, float(header_latency) / 1000.0)
        return outcome, latency, hang_s, retry_after

    def _record(self, record: CallRecord, *, finished: bool = True) -> None:
        with self._lock:
            self._calls.append(record)
            if finished:
                self._in_flight -= 1

    async def _hang(self, receive: Receive, hang_s: float) -> str:
        """Wait up to ``hang_s`` without blocking the loop.

        Returns why it ended: "elapsed", "client_gone" or "stopping" (so shutdown isn't delayed).
        """
        ended = "elapsed"

        async def watch_client(scope: anyio.CancelScope) -> None:
            nonlocal ended
            while (await receive())["type"] != "http.disconnect":
                pass
            ended = "client_gone"
            scope.cancel()

        async def watch_stop(scope: anyio.CancelScope) -> None:
            nonlocal ended
            # Polled: the flag is set from the controlling thread, outside this event loop.
            while not self._stopping:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            ended = "stopping"
            scope.cancel()

        with anyio.move_on_after(hang_s):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_client, tg.cancel_scope)
                tg.start_soon(watch_stop, tg.cancel_scope)
        return ended

    # ------------------------------------------------------------------ endpoints

    async def _chat_completions(self, request: Request) -> Response:
        started = time.time()
        try:
            raw = await request.body()
        except ClientDisconnect:
            return Response(status_code=499)  # client gave up mid-upload; nothing to answer or record
        t0 = time.perf_counter()  # after the upload, so slow clients don't inflate server latency
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise _BadRequest("request body must be a JSON object")
            model, messages = body.get("model"), body.get("messages")
            if not isinstance(model, str) or not model:
                raise _BadRequest("'model' is required")
            if not isinstance(messages, list) or not messages:
                raise _BadRequest("'messages' must be a non-empty list")
            if not all(isinstance(m, dict) for m in messages):
                raise _BadRequest("each message must be an object")
        except (_BadRequest, ValueError) as exc:
            message = str(exc) if isinstance(exc, _BadRequest) else f"invalid JSON body: {exc}"
            self._record(CallRecord(started, "", "", "bad_request", 0.0, 400, False, ""), finished=False)
            return _bad_request(message)

        stream = bool(body.get("stream"))
        last_user = _last_user_text(messages)
        prompt_sha = hashlib.sha256(last_user.encode()).hexdigest()
        authorization = request.headers.get("authorization")
        max_tokens = _max_tokens(body)
        outcome, latency, hang_s, retry_after = self._plan(model, request.headers.get("x-latency-ms"))
        with self._lock:
            expected = self._api_key
        if expected is not None and authorization != f"Bearer {expected}":
            outcome = "unauthorized"

        def record(status: int | None) -> None:
            elapsed = time.perf_counter() - t0
            self._record(CallRecord(started, model, prompt_sha, outcome, elapsed, status, stream, last_user,
                                    authorization, max_tokens))

        if latency > 0.0:
            # a client that gave up during the latency is not served: recording its reply as "ok" would
            # count a good reply nobody received (and leak into the next test's stats)
            waited = await self._hang(request.receive, latency)
            if waited != "elapsed":
                outcome = "client_gone" if waited == "client_gone" else "stopping"
                record(None)
                return Response(status_code=499 if waited == "client_gone" else 503)
        if outcome == "hang":
            ended = await self._hang(request.receive, hang_s)
            if ended == "client_gone":
                record(None)
                return Response(status_code=499)  # uvicorn drops writes to a closed connection
            if ended == "stopping":
                record(503)
                err = _error_body("The server is shutting down.", "server_error")
                return Response(err, 503, media_type="application/json")
        elif outcome == "reset":
            record(None)
            if _abort_connection(request.scope[_RAW_SEND_KEY]):
                with anyio.move_on_after(1.0):  # let uvicorn notice, so it doesn't answer with a 500
                    while (await request.receive())["type"] != "http.disconnect":
                        pass
                return Response(status_code=499)
            raise ConnectionResetError("scripted connection reset")
        elif outcome == "429":
            record(429)
            headers = {
                "retry-after": str(math.ceil(retry_after)) if retry_after >= 1.0 else "0",
                "retry-after-ms": str(int(retry_after * 1000)),
            }
            err = _error_body("Rate limit reached (scripted fault).", "requests", "rate_limit_exceeded")
            return Response(err, 429, headers=headers, media_type="application/json")
        elif outcome == "500":
            record(500)
            err = _error_body("The server had an error while processing your request.", "server_error")
            return Response(err, 500, media_type="application/json")
        elif outcome in _REFUSALS:
            status, message, err_type, code = _REFUSALS[outcome]
            record(status)
            text = message.format(auth=authorization or "(none)", model=model, tokens=_prompt_tokens(messages))
            return Response(_error_body(text, err_type, code), status, media_type="application/json")
        elif outcome == "malformed":
            record(200)
            bad = b'data: {"id": "chatcmpl-broken", "choices": [\n\n' if stream else b'{"id": "chatcmpl-bro'
            return Response(bad, 200, media_type="text/event-stream" if stream else "application/json")

        try:
            content = "" if outcome == "empty" else self.reply_for(model, messages)
        except Exception:
            outcome = "script_error"  # a scripted reply callable raised: the client gets a 500
            record(500)
            raise
        finish = "stop"
        if max_tokens is not None and count_tokens(content) > max_tokens:
            content, finish = truncate_tokens(content, max_tokens), "length"  # as a provider cuts at the cap
        prompt_tokens = _prompt_tokens(messages)
        completion_tokens = count_tokens(content)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(started)
        record(200)
        if stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            chunks = _sse_chunks(completion_id, created, model, content, usage if include_usage else None, finish)
            return StreamingResponse(chunks, media_type="text/event-stream")
        return _json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
                "system_fingerprint": "fp_scripted",
            }
        )

    async def _list_models(self, request: Request) -> Response:
        data = [{"id": m, "object": "model", "created": _MODEL_CREATED, "owned_by": "scripted"} for m in self.models]
        return _json_response({"object": "list", "data": data})

    async def _health(self, request: Request) -> Response:
        return _json_response({"status": "ok"})

    async def _control_stats(self, request: Request) -> Response:
        return _json_response(self.stats(include_calls=request.query_params.get("calls", "1") != "0"))

    async def _control_reset(self, request: Request) -> Response:
        self.reset_stats()
        return _json_response({"reset": True})

    async def _control_faults(self, request: Request) -> Response:
        if request.method == "GET":
            with self._lock:
                return _json_response(self._fault_plan_locked())
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            kinds = body.get("kinds")
            if isinstance(kinds, str):
                kinds = [k for k in kinds.split(",") if k]
            plan = self.set_faults(
                rate=body.get("rate"),
                kinds=kinds,
                seed=body.get("seed"),
                retry_after=body.get("retry_after"),
                hang_s=body.get("hang_s"),
                fail_models=body.get("fail_models"),
            )
        except (ValueError, TypeError) as exc:
            return _bad_request(str(exc))
        return _json_response(plan)

    async def _control_latency(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}") if request.method == "POST" else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            current = self.set_latency(latency_s=body.get("latency_s"), model_latency=body.get("model_latency"))
        except (ValueError, TypeError, AttributeError) as exc:
            return _bad_request(str(exc))
        return _json_response(current)


def _sse_event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=_JSON_SEPARATORS, ensure_ascii=False).encode() + b"\n\n"


async def _sse_chunks(
    completion_id: str, created: int, model: str, content: str, usage: dict[str, int] | None, finish: str = "stop"
) -> AsyncIterator[bytes]:
    """Yield an OpenAI-style SSE stream: role chunk, content chunks, stop chunk, usage, [DONE]."""
    include_usage = usage is not None

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_scripted",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            payload["usage"] = None
        return _sse_event(payload)

    yield chunk({"role": "assistant", "content": ""}, None)
    pieces = _CHUNK_SPLIT_RE.split(content) if content else []
    for i in range(0, len(pieces), 4):
        yield chunk({"content": "".join(pieces[i : i + 4])}, None)
    yield chunk({}, finish)
    if usage is not None:
        final = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_scripted",
            "choices": [],
            "usage": usage,
        }
        yield _sse_event(final)
    yield b"data: [DONE]\n\n"


def _parse_pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} expects MODEL=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: serve until SIGTERM/SIGINT after printing ``READY <base_url>``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="default latency per request")
    parser.add_argument("--model-latency", action="append", default=[], metavar="MODEL=MS")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-kinds", default="429,500", help=f"comma list of {sorted(FAULT_KINDS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=0.05, help="seconds advertised by 429s")
    parser.add_argument("--hang-s", type=float, default=30.0)
    parser.add_argument("--fail-model", action="append", default=[], metavar="MODEL=KIND")
    parser.add_argument("--models", default="scripted-a,scripted-b", help="comma list for GET /v1/models")
    args = parser.parse_args(argv)

    model_latency_ms = _parse_pairs(args.model_latency, "--model-latency")
    server = ScriptedServer(
        host=args.host,
        port=args.port,
        latency_s=args.latency_ms / 1000.0,
        model_latency={m: float(ms) / 1000.0 for m, ms in model_latency_ms.items()},
        fault_rate=args.fault_rate,
        fault_kinds=[k.strip() for k in args.fault_kinds.split(",") if k.strip()],
        seed=args.seed,
        retry_after=args.retry_after,
        hang_s=args.hang_s,
        fail_models=_parse_pairs(args.fail_model, "--fail-model"),
        models=[m.strip() for m in args.models.split(",") if m.strip()],
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with server:
        # Out of the collector's sight from here: a full collection of the start-up heap (uvicorn, starlette) held
        # every call in flight for about 20 ms, which the load benchmarks counted as the conductor's latency.
        gc.freeze()
        print(f"READY {server.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
