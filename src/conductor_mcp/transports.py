"""Serve the MCP server over stdio, SSE or streamable HTTP.

HTTP transports check Host and Origin on every bind address (the SDK only does so by itself for
loopback), and off loopback they require a bearer token from CONDUCTOR_TOKEN: the SDK's own auth
settings are for OAuth, so a plain token is a small ASGI layer around its apps.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import os
import sys
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ConfigError
from .run_manager import RunManager
from .server import build_server

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerToken:
    """Answer 401 to any HTTP request without `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = json.dumps({"error": "unauthorized: send Authorization: Bearer $CONDUCTOR_TOKEN"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def security_settings(host: str, port: int, allowed_hosts: list[str],
                      allowed_origins: list[str]) -> TransportSecuritySettings:
    hosts = {f"{host}:{port}", host, *allowed_hosts}
    origins = set(allowed_origins)
    if is_loopback(host) or host in ("0.0.0.0", "::"):
        for name in ("127.0.0.1", "localhost", "[::1]"):
            hosts |= {f"{name}:{port}", name}
            origins |= {f"http://{name}:{port}", f"http://{name}"}
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=sorted(hosts),
                                     allowed_origins=sorted(origins))


def http_app(manager: RunManager, transport: str, host: str, port: int, allowed_hosts: list[str],
             allowed_origins: list[str], token: str | None) -> Any:
    server = build_server(manager=manager)
    security = security_settings(host, port, allowed_hosts, allowed_origins)
    if transport == "http":
        app: Any = server.streamable_http_app(transport_security=security, host=host)
    else:
        app = server.sse_app(transport_security=security, host=host)
    return BearerToken(app, token) if token else app


def serve(args: argparse.Namespace) -> None:
    manager = RunManager(args.workers, args.db)
    if args.transport == "stdio":
        server = build_server(manager=manager)

        async def run_stdio() -> None:
            async with manager.running():
                await server.run_stdio_async()

        anyio.run(run_stdio)
        return
    token = os.environ.get("CONDUCTOR_TOKEN") or None
    if not is_loopback(args.host) and not token:
        raise ConfigError(f"--host {args.host} is not loopback: set CONDUCTOR_TOKEN so that clients must send "
                          "`Authorization: Bearer <token>`, or bind to 127.0.0.1")
    import uvicorn

    app = http_app(manager, args.transport, args.host, args.port, args.allowed_host, args.allowed_origin, token)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", lifespan="on")
    path = "/mcp" if args.transport == "http" else "/sse"
    sys.stderr.write(f"conductor-mcp: serving {args.transport} on http://{args.host}:{args.port}{path}\n")

    async def run_http() -> None:
        async with manager.running():
            await uvicorn.Server(config).serve()

    anyio.run(run_http)
