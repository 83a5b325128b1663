"""Serve the MCP server over stdio, SSE or streamable HTTP, with the OpenAI-compatible API beside it.

HTTP transports check Host and Origin on every bind address (the SDK only does so by itself for
loopback), and off loopback they require a strong bearer token from CONDUCTOR_TOKEN: the SDK's own auth
settings are for OAuth, so a plain token is a small ASGI layer around its apps. `/v1/*` (openai_api.py)
is served by both HTTP transports under the same checks and token. Browsers' CORS preflights are answered
for allowed origins only, before the token check (a preflight never carries one).

Behind a round-robin load balancer (replicas on one store) `--stateless` serves each MCP request on its own,
with no session to find again; `/healthz` and `/readyz` (probes.py) answer the balancer's or Kubernetes' probes.
On SIGTERM a server takes no new runs, hands its running runs back to the store for another to resume at once,
and exits within CONDUCTOR_GRACE_S seconds (Replica).
"""

from __future__ import annotations

import argparse
import gc
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError
from ..runs.replicas import adopt_every, adopt_orphans
from ..runs.run_manager import RunManager
from .http_guard import NamedRefusals
from .mcp_server import build_server
from .openai_api import OpenAIApp, send_error
from .openai_chat import ApiError
from .probes import Probes
from .stdio_guard import serve_stdio
from .web import announce, with_web_ui

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
                # OpenAI's envelope, which OpenAI clients read (an openai SDK's api_key is the token)
                body = json.dumps(ApiError(401, "unauthorized: send Authorization: Bearer $CONDUCTOR_TOKEN (an "
                                           "OpenAI client's api_key)", code="invalid_api_key").body()).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# 32 characters of token_urlsafe or hex carry 128 bits or more; a short or repetitive token on an open bind is
# guessable, which is worse than none because it looks like protection.
MIN_TOKEN_CHARS = 32
MIN_TOKEN_DISTINCT = 8
TOKEN_HOWTO = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def check_token(token: str) -> None:
    if len(token) < MIN_TOKEN_CHARS or len(set(token)) < MIN_TOKEN_DISTINCT:
        raise ConfigError(f"CONDUCTOR_TOKEN is too weak ({len(token)} characters, {len(set(token))} distinct): "
                          f"use at least {MIN_TOKEN_CHARS} random characters (128 bits or more), for example "
                          f"from `{TOKEN_HOWTO}`")


def host_forms(name: str, port: int) -> set[str]:
    """The Host headers that reach us for `name`: a client sends `name:port` (RFC 9110), a proxy on the scheme's
    default port sends the bare name. A name given with its own port or a `:*` wildcard is kept as it is."""
    try:
        if ipaddress.ip_address(name).version == 6:
            name = f"[{name}]"  # Host headers bracket IPv6 addresses
    except ValueError:
        pass
    if re.search(r"(^[^:\[\]]+|\]):(\d+|\*)$", name):
        return {name}
    return {name, f"{name}:{port}"}


def security_settings(host: str, port: int, allowed_hosts: list[str],
                      allowed_origins: list[str]) -> TransportSecuritySettings:
    """`port` must be the bound one: with `--port 0` the OS picks it, and clients send it in Host."""
    hosts = host_forms(host, port).union(*(host_forms(h, port) for h in allowed_hosts))
    origins = set(allowed_origins)
    if is_loopback(host) or host in ("0.0.0.0", "::"):
        for name in ("127.0.0.1", "localhost", "[::1]"):
            hosts |= {f"{name}:{port}", name}
            origins |= {f"http://{name}:{port}", f"http://{name}"}
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=sorted(hosts),
                                     allowed_origins=sorted(origins))


def _allowed(value: str, allowed: list[str]) -> bool:
    """The SDK's rule for Host and Origin: an exact match, or `name:*` for any port."""
    return value in allowed or any(a.endswith(":*") and value.startswith(a[:-1]) for a in allowed)


def host_allowed(security: TransportSecuritySettings, host: str | None) -> bool:
    return bool(host) and _allowed(host or "", security.allowed_hosts)


def origin_allowed(security: TransportSecuritySettings, origin: str | None) -> bool:
    """A request without Origin is not from a browser page of another origin; one with it must be allowed."""
    return not origin or _allowed(origin, security.allowed_origins)


class HostOriginCheck:
    """The DNS-rebinding checks the SDK makes on /mcp, for apps of our own (/v1), in OpenAI's error envelope."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            if not host_allowed(self.security, headers.get("host")):
                await send_error(send, ApiError(421, f"Host header {headers.get('host')!r} is not allowed; start the "
                                                "server with --allowed-host for a name of your own",
                                                code="invalid_host"))
                return
            if not origin_allowed(self.security, headers.get("origin")):
                await send_error(send, ApiError(403, f"Origin {headers.get('origin')!r} is not allowed; start the "
                                                "server with --allowed-origin to accept it", code="invalid_origin"))
                return
        await self.app(scope, receive, send)


class PathRouter:
    """`/v1/...` to the OpenAI-compatible app; everything else (MCP, and the lifespan) to the MCP app."""

    def __init__(self, mcp_app: ASGIApp, v1_app: ASGIApp) -> None:
        self.mcp_app = mcp_app
        self.v1_app = v1_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/v1" or path.startswith("/v1/"):
            await self.v1_app(scope, receive, send)
        else:
            await self.mcp_app(scope, receive, send)


CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "Accept", "Mcp-Session-Id", "Mcp-Protocol-Version",
                      "Last-Event-ID")
CORS_EXPOSE_HEADERS = "Mcp-Session-Id, Mcp-Protocol-Version"
CORS_MAX_AGE_S = 600


class Cors:
    """Browser-based clients: a preflight (OPTIONS with Origin and Access-Control-Request-Method) from an allowed
    origin gets 204 with what it may send, from any other origin 403 without CORS headers; answers to an allowed
    origin say that it may read them and the MCP session id. A preflight carries no token, so this sits outside
    BearerToken; the request that follows carries one."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if scope["method"] == "OPTIONS" and origin and "access-control-request-method" in headers:
            await self._preflight(headers, origin, send)
            return
        if not origin or not origin_allowed(self.security, origin):
            await self.app(scope, receive, send)
            return
        vary = (b"vary", b"Origin")

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), vary,
                                                  (b"access-control-allow-origin", origin.encode()),
                                                  (b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, headers: Headers, origin: str, send: Send) -> None:
        if not host_allowed(self.security, headers.get("host")):
            await send_error(send, ApiError(421, f"Host header {headers.get('host')!r} is not allowed",
                                            code="invalid_host"))
            return
        if not origin_allowed(self.security, origin):
            await send_error(send, ApiError(403, f"Origin {origin!r} is not allowed; start the server with "
                                            "--allowed-origin to accept it", code="invalid_origin"))
            return
        asked = [h.strip() for h in headers.get("access-control-request-headers", "").split(",") if h.strip()]
        # the openai SDKs add their own x-stainless-* headers to every request
        extra = [h for h in asked if h.lower().startswith("x-stainless-")]
        allow = ", ".join([*CORS_ALLOW_HEADERS, *extra])
        await send({"type": "http.response.start", "status": 204, "headers": [
            (b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"),
            (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
            (b"access-control-allow-headers", allow.encode()),
            (b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode()),
            (b"access-control-max-age", str(CORS_MAX_AGE_S).encode())]})
        await send({"type": "http.response.body", "body": b""})


def http_app(manager: RunManager, transport: str, host: str, port: int, allowed_hosts: list[str],
             allowed_origins: list[str], token: str | None, stateless: bool = False) -> Any:
    """`stateless`: streamable HTTP with no MCP session (replicas behind a round-robin balancer; see serve)."""
    server = build_server(manager=manager)
    security = security_settings(host, port, allowed_hosts, allowed_origins)
    if transport == "http":
        mcp_app: Any = NamedRefusals(server.streamable_http_app(transport_security=security, host=host,
                                                                 stateless_http=stateless))
    elif stateless:
        raise ConfigError("--stateless needs --transport http: SSE keeps each client's stream in one process")
    else:
        mcp_app = server.sse_app(transport_security=security, host=host)
    app: ASGIApp = PathRouter(mcp_app, HostOriginCheck(OpenAIApp(manager), security))
    if token:
        app = BearerToken(app, token)
    # the web view of runs (web/) on `/` and `/ui/...`: outside CORS and BearerToken, with a sign-in of its own
    app = with_web_ui(Cors(app, security), manager, security, token)
    return Probes(app, manager)  # /healthz, /readyz: outside every check, for probes that send no token or Host


def bind(host: str, port: int) -> socket.socket:
    """Bind before building the app, so that the Host check and the printed address carry the real port. uvicorn
    listens on it once start-up is done, so a connection that succeeds is one that will be served."""
    address = host.strip("[]")
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on accepted sockets whose protocol is TCP, and without it an
    # answer written in two parts (headers, then body) waits for the client's delayed ACK: about 40 ms
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if os.name != "nt":  # on Windows SO_REUSEADDR would let another process take the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


STREAMS_SETTLE_S = 0.5  # after the hand-back: calls that waited on the runs send their answers
DEFAULT_GRACE_S = 10.0  # docker stop waits 10 s before SIGKILL; Kubernetes 30 s (terminationGracePeriodSeconds)


def grace_period(value: str | float | None) -> float:
    """Seconds a stopped server has to exit (--grace-s, else CONDUCTOR_GRACE_S, else DEFAULT_GRACE_S)."""
    if value is None or value == "":
        value = os.environ.get("CONDUCTOR_GRACE_S") or DEFAULT_GRACE_S
    try:
        grace = float(value)
    except ValueError:
        grace = -1.0
    if not 1.0 <= grace <= 3600.0:
        raise ConfigError(f"grace period {value!r} (--grace-s or CONDUCTOR_GRACE_S): give seconds, 1 to 3600")
    return grace


def _force_exit(grace_s: float) -> None:
    sys.stderr.write(f"mcp-conductor: still running {grace_s:g} s after it was told to stop: exiting now\n")
    sys.stderr.flush()
    os._exit(1)


def replica_server(config: Any, manager: RunManager, grace_s: float) -> Any:
    """uvicorn's server, stopped as a replica behind a balancer is. On SIGTERM (or Ctrl-C) it takes no new runs and
    hands the running ones back at once (each left `interrupted` with no owner, so another server on the same store
    resumes it without waiting for a heartbeat to go stale; /readyz answers 503 meanwhile), then closes its listener,
    lets open requests end and exits: within grace_s seconds of the signal, forced if it must be."""
    import uvicorn
    from sse_starlette.sse import AppStatus

    # sse-starlette ends every event stream the moment uvicorn is told to exit, so a tool call waiting on a run got
    # its stream cut with no answer; here the streams end once the runs are handed back and the answers sent
    AppStatus.enable_automatic_graceful_drain = False

    class Replica(uvicorn.Server):
        deadline: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.deadline is None:  # the first signal starts the clock
                self.deadline = time.monotonic() + grace_s
                timer = threading.Timer(grace_s, _force_exit, args=(grace_s,))
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            deadline = self.deadline if self.deadline is not None else time.monotonic() + grace_s
            running = sum(1 for h in manager.handles.values() if not h.done.is_set())
            manager.drain()
            if not await manager.handed_back(max(0.0, (deadline - time.monotonic()) / 2)):
                log.warning("some runs were not handed back in time; a server resumes them once their heartbeat "
                            "is stale")
            if running:
                sys.stderr.write(f"mcp-conductor: stopping: {running} run(s) handed back for any server to resume\n")
                sys.stderr.flush()
            await anyio.sleep(min(STREAMS_SETTLE_S, max(0.0, deadline - time.monotonic() - 1)))
            AppStatus.should_exit = True  # what still streams (an MCP session's GET stream) ends now
            # open requests (a tool call's stream, an MCP session's GET stream) get what is left, less a margin
            self.config.timeout_graceful_shutdown = max(1, int(deadline - time.monotonic() - 1))
            await super().shutdown(sockets)

    return Replica(config)


def warm_first_run() -> None:
    """Import and make what the first run would (the engine, its worker clients, httpx, the TLS context): an HTTP
    server's first request waited about 100 ms on them. Not over stdio, where it would delay the host's first
    answers (initialize, tools/list) instead."""
    import httpcore  # noqa: F401  (httpx imports it with its first client: 80 ms where trio is installed)

    from ..runs import engine  # noqa: F401
    from ..workers import pool  # noqa: F401
    from ..workers.openai_http import tls_context

    tls_context()


def settle_heap() -> None:
    """Leave what start-up built (modules, schemas, the app: about 100,000 objects) out of the collector's full
    passes: each of them walked it all, which cost a served one-step run about 0.06 ms of CPU on average. No
    collection first: it would delay the first answer by about 60 ms, to free a few start-up cycles."""
    gc.freeze()


def loop_options() -> dict[str, Any]:
    """uvloop for the HTTP server's event loop where it is installed (a dependency off Windows): a served
    one-step run costs less CPU on it than on asyncio's own loop (BENCHMARKS.md, "uvloop and httptools")."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def serve(args: argparse.Namespace) -> None:
    manager = RunManager(args.workers, args.db)
    manager.adopt_s = adopt_every(getattr(args, "adopt_s", None), default_on=args.transport != "stdio")
    if args.transport == "stdio":
        server = build_server(manager=manager)

        async def run_stdio() -> None:
            async with manager.running() as runs:
                if runs.adopt_s:
                    runs.background(adopt_orphans, runs, runs.adopt_s)
                await serve_stdio(server)  # every line answered as JSON-RPC asks (stdio_guard)

        settle_heap()
        anyio.run(run_stdio)
        return
    token = os.environ.get("CONDUCTOR_TOKEN") or None
    if not is_loopback(args.host) and not token:
        raise ConfigError(f"--host {args.host} is not loopback: set CONDUCTOR_TOKEN so that clients must send "
                          f"`Authorization: Bearer <token>` (make one with `{TOKEN_HOWTO}`), or bind to 127.0.0.1")
    if token:
        check_token(token)
    stateless = bool(getattr(args, "stateless", False))
    grace_s = grace_period(getattr(args, "grace_s", None))
    import uvicorn

    sock = bind(args.host, args.port)
    port = int(sock.getsockname()[1])
    app = http_app(manager, args.transport, args.host, port, args.allowed_host, args.allowed_origin, token,
                   stateless=stateless)
    config = uvicorn.Config(app, host=args.host, port=port, log_level="warning", lifespan="on")
    path = "/mcp" if args.transport == "http" else "/sse"
    shown = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
    sys.stderr.write(f"mcp-conductor: serving {args.transport} on http://{shown}:{port}{path} "
                     f"(OpenAI-compatible API: http://{shown}:{port}/v1)\n")
    sys.stderr.flush()
    announce(args.host, port, token=token is not None, to_stdout=getattr(args, "command", None) == "ui",
             open_browser=bool(getattr(args, "open", False)))

    async def run_http() -> None:
        async with manager.running() as runs:
            if runs.adopt_s:
                runs.background(adopt_orphans, runs, runs.adopt_s)
            await replica_server(config, manager, grace_s).serve(sockets=[sock])

    warm_first_run()
    config.load()  # uvicorn's protocol modules, imported before the heap settles
    loop = loop_options()  # and uvloop's
    settle_heap()
    anyio.run(run_http, backend_options=loop)
