"""MCP over stdio where every line gets what JSON-RPC 2.0 owes it.

The SDK's stdio reader (mcp 2.3) parses each line with pydantic and, when that fails, hands the exception to the
session, which logs it at debug level and drops it: a line that is not JSON, not a JSON-RPC message, not UTF-8
(decoded with replacement), or that holds a lone surrogate (`"\\ud800"`, which its JSON parser refuses) or nesting
past its parser's depth gets no answer, and the host waits for its own timeout. It also reads a request whose `id`
is null, a float, a bool or an object as a notification, and answers nothing.

This reader sits in front of the SDK's. A line the SDK parses passes unchanged (the server's own rules, such as
`call_tool`'s checks, then apply). Any other line is answered here, once, with the request's id where it can be
read: -32700 when it is not UTF-8 JSON; -32600 when it is not one JSON-RPC message (a batch, no method, a bad id,
a line over 4 MiB); -32602 naming the parameter when its params hold what runs/request.py refuses (a lone
surrogate; nesting past the SDK parser's ~200 levels, where shallower nesting over MAX_JSON_DEPTH reaches the tool,
whose refusal names it too). A response, or a notification with bad params, gets no answer, as JSON-RPC says;
rejected lines never reach the server, so nothing is stored for them.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, BinaryIO, Protocol, cast

import anyio
from mcp.server import MCPServer
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from mcp.shared.message import SessionMessage
from mcp_types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

from ..runs.request import MAX_JSON_DEPTH, InputError, check_json, check_text

log = logging.getLogger(__name__)

MAX_LINE_BYTES = DEFAULT_MAX_REQUEST_BODY_SIZE  # the SDK's limit on an HTTP body: one message, either way
# where a too-deep line is cut to read its id: deeper than check_json allows below `params.arguments` (level 3)
KEEP_LEVELS = MAX_JSON_DEPTH + 8
_TOKENS = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')  # a JSON string (skipped whole), or a bracket

Verdict = str | JSONRPCError | None  # the line for the SDK, an answer instead, or nothing at all


class _End(enum.Enum):
    OF_INPUT = enum.auto()


def _escaped(text: str) -> str:
    """`text` with any lone surrogate written as `\\udXXX`: an answer that is not valid Unicode cannot be sent, and
    the SDK's writer stops the server on one."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(request_id: Any, code: int, message: str, param: str | None = None) -> JSONRPCError:
    error = ErrorData(code=code, message=_escaped(message))
    if param:
        error.data = {"param": _escaped(param)}
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=error)


def _valid_id(value: object) -> bool:
    """MCP's request ids: a string or an integer, never null (JSON-RPC's bool and float ids are not ints)."""
    if isinstance(value, str):
        try:
            check_text("id", value)
        except InputError:
            return False
        return True
    return isinstance(value, int) and not isinstance(value, bool)


def cut_deep(line: str, keep: int = KEEP_LEVELS) -> str:
    """`line` with every array or object nested deeper than `keep` levels replaced by `[]`: the rest parses without
    deep recursion, keeps the id and method, and is still too deep for check_json where the original was."""
    out: list[str] = []
    depth, copied_to, cutting = 0, 0, False
    for m in _TOKENS.finditer(line):
        bracket = m.group()
        if bracket[0] == '"':
            continue
        if bracket in "[{":
            depth += 1
            if depth == keep + 1 and not cutting:
                out += [line[copied_to:m.start()], "[]"]
                cutting = True
        else:
            if depth == keep + 1 and cutting:
                copied_to, cutting = m.end(), False
            depth -= 1
    if not cutting:  # else unbalanced: what is left does not parse
        out.append(line[copied_to:])
    return "".join(out)


def _int(digits: str) -> int | float:
    """Python refuses to read integers of over 4,300 digits (a guard against slow conversion); valid JSON all the
    same, so the line is still read for its id, the number as infinity."""
    return int(digits) if len(digits) <= 4300 else float(digits)


def params_problem(method: str, params: dict[str, Any]) -> InputError | None:
    """The first string or nesting in `params` that runs/request.py refuses. A tool's arguments are checked on
    their own, as call_tool checks them, so a tool's parameter is named as the tool calls it (`task`)."""
    rest = params
    try:
        if method == "tools/call" and isinstance(params.get("arguments"), dict):
            check_json(params["arguments"])
            rest = {k: v for k, v in params.items() if k != "arguments"}
        check_json(rest)
    except InputError as exc:
        return exc
    return None


def diagnose(line: str, sdk_error: ValidationError) -> JSONRPCError | None:
    """Why the SDK could not take `line`, as the answer JSON-RPC asks for (None: a response or a notification,
    which are never answered)."""
    try:
        try:
            data = json.loads(line, parse_int=_int)
        except RecursionError:  # valid JSON, nested past the parser's depth: read it cut short
            data = json.loads(cut_deep(line), parse_int=_int)
    except (ValueError, RecursionError) as exc:
        return _error(None, PARSE_ERROR, f"Parse error: {exc}")
    if isinstance(data, list):
        return _error(None, INVALID_REQUEST, "Invalid request: a batch (a JSON array); send one message a line")
    if not isinstance(data, dict):
        return _error(None, INVALID_REQUEST, "Invalid request: not a JSON-RPC message (a JSON object)")
    has_id, request_id = "id" in data, data.get("id")
    answer_id = request_id if has_id and _valid_id(request_id) else None
    method = data.get("method")
    if method is None and ("result" in data or "error" in data) and answer_id is not None:
        log.warning("stdio: dropped a malformed response to request %r", answer_id)
        return None
    problem = None
    if data.get("jsonrpc") != "2.0":
        problem = 'jsonrpc: must be "2.0"'
    elif not isinstance(method, str):
        problem = "method: missing, or not a string"
    elif has_id and answer_id is None:
        problem = "id: must be a string or an integer (valid Unicode)"
    elif "params" in data and not isinstance(data["params"], dict):
        problem = "params: must be an object"
    else:
        try:
            check_text("method", method)
        except InputError as exc:
            problem = str(exc)
    if problem is not None:
        return _error(answer_id, INVALID_REQUEST, f"Invalid request: {problem}")
    assert isinstance(method, str)
    bad = params_problem(method, data.get("params") or {})
    if not has_id:  # a notification gets no answer, even when it is wrong
        log.warning("stdio: dropped notification %r: %s", method, bad or sdk_error.errors()[0]["msg"])
        return None
    if bad is not None:
        return _error(request_id, INVALID_PARAMS, f"Invalid params: {bad}", param=bad.param)
    return _error(request_id, INVALID_REQUEST, f"Invalid request: {sdk_error.errors()[0]['msg']}")


def triage(raw: bytes) -> Verdict:
    """One line from the wire: passed on as the SDK would read it, answered here, or dropped (a blank line)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # refused, not replaced (the SDK decodes with replacement)
        return _error(None, PARSE_ERROR, f"Parse error: not UTF-8 (byte {exc.start} of the line)")
    if not line.strip():
        return None
    try:
        message = jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        return diagnose(line, exc)
    if isinstance(message, JSONRPCNotification) and "id" in json.loads(line):  # the SDK dropped the bad id
        return _error(None, INVALID_REQUEST, "Invalid request: id: must be a string or an integer")
    return line


class Outbox(Protocol):
    async def send(self, item: SessionMessage, /) -> None: ...


class GuardedStdin:
    """What the SDK's stdio reader iterates (`async for line in stdin`): the lines it should see. Each line is read
    and triaged on a worker thread (a 4 MiB line is parsed off the event loop); answers go out on the SDK's own
    write stream, so they never interleave with its messages on stdout."""

    def __init__(self, wire: BinaryIO) -> None:
        self._wire = wire
        self._outbox: Outbox | None = None
        self._ready = anyio.Event()

    def answer_to(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._ready.set()

    def __aiter__(self) -> GuardedStdin:
        return self

    async def __anext__(self) -> str:
        while True:
            verdict = await anyio.to_thread.run_sync(self._next)
            if verdict is _End.OF_INPUT:
                raise StopAsyncIteration
            if isinstance(verdict, str):
                return verdict
            if verdict is not None:
                log.warning("stdio: answered a line with %d: %s", verdict.error.code, verdict.error.message)
                await self._answer(verdict)

    def _next(self) -> Verdict | _End:
        raw = self._wire.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return _End.OF_INPUT
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # the rest of the line is read and dropped
                raw = self._wire.readline(1 << 16)
            return _error(None, INVALID_REQUEST, f"Invalid request: a line over {MAX_LINE_BYTES} bytes")
        return triage(raw)

    async def _answer(self, error: JSONRPCError) -> None:
        await self._ready.wait()
        assert self._outbox is not None
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):  # the server is closing
            await self._outbox.send(SessionMessage(error))


@contextmanager
def claimed_stdin() -> Iterator[BinaryIO]:
    """The wire on a private duplicate of fd 0, and fd 0 on the null device while serving, as the SDK does for a
    stdin it reads itself: a child or a library that reads stdin gets EOF, not the host's requests."""
    try:
        on_fd0 = sys.stdin.buffer.fileno() == 0
    except (AttributeError, OSError, ValueError):
        on_fd0 = False
    if not on_fd0:  # a replaced sys.stdin (embedded, tests): read it, divert nothing
        yield sys.stdin.buffer
        return
    private = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    try:
        yield os.fdopen(private, "rb", closefd=False)  # never closed: a blocked reading thread may outlive us
    finally:
        os.dup2(private, 0)


async def serve_stdio(server: MCPServer[Any]) -> None:
    """`server.run_stdio_async()`, with GuardedStdin in front of the SDK's reader (the SDK still claims stdout, so
    stray output from handlers and children goes to stderr)."""
    lowlevel = server._lowlevel_server  # what run_stdio_async runs; it takes no stdin of ours
    with claimed_stdin() as wire:
        stdin = GuardedStdin(wire)
        # the SDK only iterates its stdin (`async for line in stdin`), which GuardedStdin supports
        async with stdio_server(stdin=cast("anyio.AsyncFile[str]", stdin)) as (read_stream, write_stream):
            stdin.answer_to(write_stream)
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
