"""MCP over HTTP where a refused body is told what stdio tells it (stdio_guard.triage).

The SDK's streamable HTTP transport answers a body its parser refuses with 400 and -32700 "Parse error ... line 1
column N", with no id, whatever the cause: a lone surrogate in a tool's argument, nesting past its parser's depth.
This layer keeps each POST's body as it passes and, only when the SDK answers 400, reads the body the way the stdio
guard reads a line; where that names a cause (-32602 naming the parameter, -32600, -32700 with a reason), its
answer replaces the SDK's, with the request's id where it can be read. A request the SDK takes costs nothing more.
"""

from __future__ import annotations

from mcp_types import JSONRPCError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .stdio_guard import triage


class NamedRefusals:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        held: Message | None = None  # the SDK's 400 start, until its body says whether to replace it
        replaced = False

        async def recording() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def answering(message: Message) -> None:
            nonlocal held, replaced
            if replaced:
                return  # the rest of the SDK's answer, already replaced
            if message["type"] == "http.response.start" and message["status"] == 400:
                held = message
                return
            if held is not None:
                verdict = triage(b"".join(chunks))
                if isinstance(verdict, JSONRPCError):
                    await _send_error(send, verdict)
                    replaced = True
                    return
                await send(held)
                held = None
            await send(message)

        await self.app(scope, recording, answering)


async def _send_error(send: Send, error: JSONRPCError) -> None:
    body = error.model_dump_json(by_alias=True, exclude_unset=True).encode()  # keeps `"id": null`
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
