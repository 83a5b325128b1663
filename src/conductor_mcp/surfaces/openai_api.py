"""The OpenAI-compatible API: `GET /v1/models` and `POST /v1/chat/completions`, one run per completion.

A chat completion is a run like any other (same planner, engine, trace and budgets), started through the
RunManager as the MCP tools start theirs; openai_chat.py says what a request and an answer hold. Streaming sends
the run's progress (the plan, each step's start and end) as `delta.reasoning_content`, then the answer as
`content`, the usage chunk and `[DONE]`. A client that leaves cancels the run's worker calls; completed steps are
kept and the run can be resumed over MCP or the CLI. transports.py mounts this app beside /mcp, behind the same
Host and Origin checks and token.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import anyio
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..errors import ConductorError
from ..models import Run, Usage
from ..planners.base import PlanEvent
from .openai_chat import (
    OWNER,
    ApiError,
    ChatRequest,
    bad_request,
    end_text,
    error_for,
    extension,
    finish_reason,
    model_list,
    parse_body,
    parse_request,
    plan_text,
    start_text,
    step_text,
    trace_uri,
    usage_body,
)
from .openapi import openapi_document

if TYPE_CHECKING:
    from ..runs.run_manager import Following, RunHandle, RunManager

MAX_BODY_BYTES = 4 * 1024 * 1024  # as the MCP transport's default
KEEPALIVE_S = 15.0  # an SSE comment while a step runs, so proxies keep the stream open


# -- running -------------------------------------------------------------------------------------------------
class ClientGone(Exception):
    """The client closed the connection before its request was read."""


class ChatRuns:
    """A request's run through the RunManager, the door every surface uses: start it, follow it, cancel it
    when the client leaves (completed steps are kept; the run can be resumed)."""

    def __init__(self, runs: RunManager) -> None:
        self.runs = runs

    async def start(self, req: ChatRequest) -> RunHandle:
        """Raises ApiError for arguments the engine refuses, before anything is spent or answered."""
        try:
            return await self.runs.solve(req.task, workers=req.workers, max_steps=req.max_steps,
                                         strategy=req.strategy, budget=req.budget, prefer=req.prefer,
                                         workflow=req.workflow)
        except ConductorError as exc:
            raise error_for(exc) from None

    def follow(self, handle: RunHandle) -> AbstractAsyncContextManager[Following]:
        """Its progress and its end. Whatever ends the block before the run (the client gone, a write failed)
        cancels the run."""
        return self.runs.follow(handle, cancel="on_exit")

    def result(self, handle: RunHandle) -> Run:
        """The ended run; an ApiError for one that ended before it was stored (planning failed or was cancelled)."""
        if handle.error is not None:
            raise ApiError(502, f"run {handle.run_id}: {handle.error}", "server_error", code="planning_failed",
                           retry=False)
        return handle.final if handle.final is not None else self.runs.get(handle.run_id)

    def get(self, run_id: str) -> Run:
        return self.runs.get(run_id)

    def usage(self, run: Run) -> tuple[Usage, Usage]:
        return self.runs.usage(run.id, run)


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body.extend(message.get("body", b""))
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
        if not message.get("more_body", False):
            return bytes(body)


async def send_json(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(payload, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": headers or [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})


async def send_error(send: Send, error: ApiError) -> None:
    await send_json(send, error.status, error.body(), error.headers())


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def until_gone(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel `scope` when the client disconnects (the request body has been read by then)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class OpenAIApp:
    """The ASGI app behind /v1: routes, request checks, and the two ways to answer (JSON, SSE)."""

    def __init__(self, runs: RunManager) -> None:
        self.runs = runs
        self.chat = ChatRuns(runs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"].rstrip("/"), scope["method"]
        try:
            if path == "/v1/openapi.json":
                self._method(method, "GET")
                await send_json(send, 200, openapi_document(self.runs.registry))
            elif path == "/v1/models":
                self._method(method, "GET")
                await send_json(send, 200, {"object": "list", "data": model_list(self.runs.registry)})
            elif path.startswith("/v1/models/"):
                self._method(method, "GET")
                await self._model(send, path.removeprefix("/v1/models/"))
            elif path == "/v1/chat/completions":
                self._method(method, "POST")
                await self._chat(scope, receive, send)
            else:
                raise ApiError(404, f"no route {method} {path}; this server has GET /v1/models, GET "
                               "/v1/openapi.json and POST /v1/chat/completions", code="not_found")
        except ClientGone:
            return
        except ApiError as exc:
            await send_error(send, exc)
        except ConductorError as exc:  # a bad manifest or store, met while listing models
            await send_error(send, ApiError(500, str(exc), "server_error", code="server_misconfigured", retry=False))

    @staticmethod
    def _method(given: str, allowed: str) -> None:
        if given != allowed:
            raise ApiError(405, f"method {given} not allowed here; use {allowed}", code="method_not_allowed",
                           allow=allowed)

    async def _model(self, send: Send, name: str) -> None:
        for m in model_list(self.runs.registry):
            if m["id"] == name:
                await send_json(send, 200, m)
                return
        raise ApiError(404, f"model {name!r} does not exist or cannot be used now", code="model_not_found",
                       param="model")

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        if not headers.get(b"content-type", b"").lower().startswith(b"application/json"):
            raise bad_request("send the request as JSON with `Content-Type: application/json`")
        req = parse_request(parse_body(await _read_body(receive)), self.runs.registry)
        if req.stream:
            await StreamAnswer(self.chat, req).send(receive, send)
            return
        handle = await self.chat.start(req)
        answer: dict[str, Any] | None = None
        error: ApiError | None = None
        async with self.chat.follow(handle) as following, anyio.create_task_group() as tg:
            tg.start_soon(until_gone, receive, tg.cancel_scope)
            try:
                await following.wait()
                run = self.chat.result(handle)
                total, conductor = self.chat.usage(run)
                ext = extension(run, total, conductor)
                reason = finish_reason(run, ext)
                answer = {"id": req.id, "object": "chat.completion", "created": req.created, "model": req.model,
                          "system_fingerprint": f"{OWNER}-{__version__}",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": run.answer or "",
                                                               "refusal": None},
                                       "logprobs": None, "finish_reason": reason}],
                          "usage": usage_body(total, conductor), "conductor": ext}
            except Exception as exc:
                error = error_for(exc)
            tg.cancel_scope.cancel()
        if error is not None:
            await send_error(send, error)
        elif answer is not None:  # None: the client left, and its run was cancelled
            await send_json(send, 200, answer)


class StreamAnswer:
    """One streamed completion: progress as `reasoning_content`, the answer as `content`, the usage chunk, [DONE]."""

    def __init__(self, chat: ChatRuns, req: ChatRequest) -> None:
        self.chat = chat
        self.req = req

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        req = self.req
        payload: dict[str, Any] = {
            "id": req.id, "object": "chat.completion.chunk", "created": req.created, "model": req.model,
            "system_fingerprint": f"{OWNER}-{__version__}",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        if req.include_usage:
            payload["usage"] = None
        return sse(payload)

    async def send(self, receive: Receive, send: Send) -> None:
        req = self.req
        handle = await self.chat.start(req)
        async with self.chat.follow(handle) as following:  # entered before any await: it hears every event
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]})
            await self._answer(receive, send, following)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _answer(self, receive: Receive, send: Send, following: Following) -> None:
        req, handle = self.req, following.handle

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        async with anyio.create_task_group() as tg:
            tg.start_soon(until_gone, receive, tg.cancel_scope)
            try:
                first = {"role": "assistant", "content": "", "reasoning_content": start_text(req)}
                await write(self.chunk(first, conductor={"run_id": handle.run_id,
                                                         "trace_uri": trace_uri(handle.run_id)}))
                await self._progress(write, following)
                run = self.chat.result(handle)
                total, conductor = self.chat.usage(run)
                ext = extension(run, total, conductor)
                reason = finish_reason(run, ext)
                await write(self.chunk({"reasoning_content": end_text(run, total)}))
                if run.answer:
                    await write(self.chunk({"content": run.answer}))
                await write(self.chunk({}, reason, conductor=ext))
                if req.include_usage:
                    await write(sse({"id": req.id, "object": "chat.completion.chunk", "created": req.created,
                                     "model": req.model, "system_fingerprint": f"{OWNER}-{__version__}",
                                     "choices": [], "usage": usage_body(total, conductor)}))
                await write(b"data: [DONE]\n\n")
            except Exception as exc:
                await write(sse(error_for(exc).body()))
            tg.cancel_scope.cancel()

    async def _progress(self, write: Callable[[bytes], Awaitable[None]], following: Following) -> None:
        """Progress lines until the run ends, with an SSE comment while nothing happens."""
        root = following.run_id
        while True:
            with anyio.move_on_after(KEEPALIVE_S) as timer:
                try:
                    event = await anext(following)
                except StopAsyncIteration:
                    return
            if timer.cancelled_caught:
                await write(b": running\n\n")
            elif isinstance(event, PlanEvent):
                await write(self.chunk({"reasoning_content": f"{event.message}\n"}))
                if event.phase == "planned":  # the plan is stored: show it
                    await write(self.chunk({"reasoning_content": plan_text(self.chat.get(root))}))
            else:
                await write(self.chunk({"reasoning_content": step_text(event, root)}))
