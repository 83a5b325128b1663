"""The web view's routes, and the gate in front of them.

Every request passes the same Host check as `/mcp` (the transport's allowed hosts), and the same Origin check,
where the page's own origin also counts as allowed. With a token (CONDUCTOR_TOKEN; required off loopback) a
request needs `Authorization: Bearer <token>` or the session cookie that signing in at /ui/login sets. The
cookie is HttpOnly, SameSite=Strict, Secure over HTTPS, and holds no token: an HMAC of its issue time keyed by
the token, so it grants this view only and dies when the token changes. CSRF: every POST (sign in, sign out,
rating) must carry an Origin header naming this server; a browser always sends one with a form POST, and
another site's page can neither forge it nor, being cross-site, send the SameSite=Strict cookie along.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from importlib import resources

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ...errors import ConductorError, EvalNotFound, RunNotFound
from ...runs.request import InputError, check_text
from ...runs.run_manager import RunManager
from ...store import strategy_of
from . import pages
from .throttle import Throttle

COOKIE = "conductor_ui"
SESSION_DAYS = 30
PAGE_SIZE, MAX_PAGE_SIZE = 25, 100
EVALS_SHOWN = 200  # the evals page lists this many, newest first
MAX_FORM_BYTES = 16_384
STATIC_TYPES = {"mermaid.min.js": "text/javascript", "ui.js": "text/javascript", "ui.css": "text/css",
                "mermaid.LICENSE": "text/plain"}
# No inline script anywhere: a value that escaped escaping still could not run. Mermaid styles its SVG inline.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
                    "referrer-policy": "same-origin", "x-frame-options": "DENY"}

Endpoint = Callable[[Request], Awaitable[Response]]


def is_ui_path(path: str) -> bool:
    return path in ("/", "/ui") or path.startswith("/ui/")


def _matches(value: str, allowed: list[str]) -> bool:
    """The transport's rule for Host and Origin values: an exact entry, or an entry ending in `:*` (any port)."""
    return value in allowed or any(a.endswith(":*") and value.startswith(a[:-1]) for a in allowed)


class Gate:
    """Host, Origin, token and CSRF checks for the web view (see the module's docstring)."""

    def __init__(self, security: TransportSecuritySettings, token: str | None) -> None:
        self.security = security
        self.token = token

    def own_origin(self, request: Request) -> str:
        return f"{request.url.scheme}://{request.headers.get('host', '')}"

    def origin_ok(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        return origin is None or origin == self.own_origin(request) or _matches(origin, self.security.allowed_origins)

    def refuse_request(self, request: Request) -> Response | None:
        """421 for a foreign Host, 403 for a foreign Origin: as `/mcp` answers."""
        if not self.security.enable_dns_rebinding_protection:
            return None
        if not _matches(request.headers.get("host", ""), self.security.allowed_hosts):
            return Response("Invalid Host header", status_code=421, media_type="text/plain")
        if not self.origin_ok(request):
            return Response("Invalid Origin header", status_code=403, media_type="text/plain")
        return None

    def session_value(self, issued: int) -> str:
        assert self.token is not None
        mac = hmac.new(self.token.encode(), f"conductor-mcp web session {issued}".encode(), hashlib.sha256)
        return f"{issued}.{mac.hexdigest()}"

    def bearer_ok(self, request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return self.token is not None and hmac.compare_digest(given, f"Bearer {self.token}".encode())

    def cookie_ok(self, request: Request) -> bool:
        value = request.cookies.get(COOKIE, "")
        issued_text, _, _ = value.partition(".")
        if self.token is None or not issued_text.isascii() or not issued_text.isdigit():
            return False
        issued = int(issued_text)
        if not -60 <= time.time() - issued <= SESSION_DAYS * 86400:
            return False
        return hmac.compare_digest(value.encode(), self.session_value(issued).encode())

    def signed_in(self, request: Request) -> bool:
        return self.token is None or self.bearer_ok(request) or self.cookie_ok(request)

    def csrf_refusal(self, request: Request) -> Response | None:
        """A POST must say where it comes from, and be from here. A script with the bearer header (which no
        other site's page can send) may leave Origin out."""
        origin = request.headers.get("origin")
        if origin is None and self.bearer_ok(request):
            return None
        if origin is None or not self.origin_ok(request):
            return HTMLResponse(pages.message_page("Refused", "A form on this view must be sent from its own "
                                                   "pages (the request had no Origin header, or a foreign one)."),
                                status_code=403)
        return None

    def set_session(self, response: Response, request: Request) -> None:
        response.set_cookie(COOKIE, self.session_value(int(time.time())), max_age=SESSION_DAYS * 86400, path="/ui",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a path of this view only, never another site."""
    if value and value.startswith("/ui") and not value.startswith("//") and "\\" not in value and "://" not in value:
        return value
    return "/ui/"


class FormRefused(InputError):
    """A form that no surface accepts, with the field named: text that is not valid Unicode (400), or a form over
    MAX_FORM_BYTES (413, naming the field it was cut in)."""

    def __init__(self, param: str, message: str, status: int = 400) -> None:
        super().__init__(param, message)
        self.status = status


def _named(field: str) -> str:
    return field.encode("utf-8", "backslashreplace").decode("utf-8")  # a refusal must itself be valid Unicode


async def _form(request: Request) -> dict[str, str]:
    """The form's fields (the first of each name), every name and value valid Unicode text: refused, never
    repaired, as on every surface (runs/request.py)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    # bytes that are not UTF-8, sent raw or %-escaped, become lone surrogates, which check_text refuses
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "surrogateescape"), keep_blank_values=True,
                                   encoding="utf-8", errors="surrogateescape")
    if len(body) > MAX_FORM_BYTES:
        raise FormRefused(_named(pairs[-1][0]) if pairs else "form", f"the form is over {MAX_FORM_BYTES} bytes",
                          413)
    fields: dict[str, str] = {}
    for name, value in pairs:
        try:
            check_text(_named(name), name)
            check_text(_named(name), value)
        except InputError as exc:
            raise FormRefused(exc.param, str(exc).removeprefix(f"{exc.param}: ")) from None
        fields.setdefault(name, value)
    return fields


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={"cache-control": "no-store"})


def _read_view(manager: RunManager, run_id: str) -> pages.RunView:
    run = manager.get(run_id)
    options = manager.options(run_id)
    children = manager.children(run_id)
    rounds = {c.id: manager.options(c.id).round or 0 for c in children if c.parent_step is None}
    parent = manager.get(run.parent_run_id) if run.parent_run_id else None
    if parent is not None and run.parent_step is None:
        rounds[run.id] = options.round or 0
    return pages.RunView(run=run, strategy=strategy_of(run.plan.source, options),
                         seconds=manager.running_seconds(run_id), tree_usage=manager.tree_usage(run_id),
                         children=children, reviews=list(options.reviews), rounds=rounds, parent=parent)


def _read_list(manager: RunManager, limit: int, cursor: str | None) -> tuple[list[pages.ListRow], str | None]:
    summaries, after = manager.page(limit, cursor)
    rows = []
    for s in summaries:
        run = manager.get(s["run_id"])
        rows.append(pages.ListRow(run_id=run.id, status=s["status"], strategy=s["strategy"], task=s["task"],
                                  created_at=run.created_at, steps=len(run.steps), usage=manager.tree_usage(run.id),
                                  seconds=manager.running_seconds(run.id), reward=run.reward))
    return rows, after


def web_app(manager: RunManager, security: TransportSecuritySettings, token: str | None) -> Starlette:
    gate = Gate(security, token)
    signs_in = token is not None
    throttle = Throttle()  # wrong tokens at /ui/login, per client address

    def guarded(endpoint: Endpoint, *, public: bool = False) -> Endpoint:
        async def handle(request: Request) -> Response:
            refusal = gate.refuse_request(request)
            if refusal is None and request.method == "POST":
                refusal = gate.csrf_refusal(request)
            if refusal is None and not public and not gate.signed_in(request):
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    there = urllib.parse.quote(request.url.path + (f"?{request.url.query}" if request.url.query
                                                                   else ""))
                    return RedirectResponse(f"/ui/login?next={there}", status_code=303)
                refusal = JSONResponse({"error": "unauthorized: sign in at /ui/login, or send Authorization: Bearer "
                                                 "$CONDUCTOR_TOKEN"}, status_code=401,
                                       headers={"www-authenticate": "Bearer"})
            try:
                response = refusal if refusal is not None else await endpoint(request)
            except FormRefused as exc:  # before anything is compared or stored
                response = _html(pages.message_page("Bad request", str(exc)), exc.status)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return handle

    async def home(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    async def runs_list(request: Request) -> Response:
        limit_text = request.query_params.get("limit") or str(PAGE_SIZE)
        if not (limit_text.isascii() and limit_text.isdigit() and 1 <= int(limit_text) <= MAX_PAGE_SIZE):
            return _html(pages.message_page("Bad request", f"limit: give a whole number from 1 to {MAX_PAGE_SIZE}"),
                         400)
        cursor = request.query_params.get("cursor") or None
        try:
            rows, after = await anyio.to_thread.run_sync(_read_list, manager, int(limit_text), cursor)
        except RunNotFound as exc:
            return _html(pages.message_page("Bad request", str(exc)), 400)
        except ConductorError as exc:
            return _html(pages.message_page("Cannot read runs", str(exc)), 500)
        return _html(pages.runs_page(rows, after, cursor is None, int(limit_text), signs_in))

    async def view_of(request: Request) -> pages.RunView | Response:
        run_id = request.path_params["run_id"]
        try:
            return await anyio.to_thread.run_sync(_read_view, manager, run_id)
        except RunNotFound as exc:
            return _html(pages.message_page("No such run", str(exc)), 404)
        except ConductorError as exc:
            return _html(pages.message_page("Cannot read the run", str(exc)), 500)

    async def run_page(request: Request) -> Response:
        view = await view_of(request)
        if isinstance(view, Response):
            return view
        flash = {"rated": "Rating saved."}.get(request.query_params.get("done", ""), "")
        return _html(pages.run_page(view, signs_in, flash))

    async def run_state(request: Request) -> Response:
        view = await view_of(request)
        if isinstance(view, Response):
            return JSONResponse({"error": "no such run"}, status_code=view.status_code)
        return JSONResponse(pages.run_state(view), headers={"cache-control": "no-store"})

    async def rate(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        form = await _form(request)
        note = form.get("note", "").strip() or None
        try:
            score = float(form.get("score", ""))
        except ValueError:
            score = -1.0
        if not 0.0 <= score <= 1.0:
            return _html(pages.message_page("Not rated", "score: pick 1 (correct), 0.5 (wrong but well formed) or "
                                            "0 (unusable)"), 400)
        if note is not None and len(note) > 2000:
            return _html(pages.message_page("Not rated", "note: at most 2000 characters"), 400)
        try:
            await anyio.to_thread.run_sync(lambda: manager.rate(run_id, score, note, source="user"))
        except RunNotFound as exc:
            return _html(pages.message_page("No such run", str(exc)), 404)
        except ConductorError as exc:
            return _html(pages.message_page("Not rated", str(exc)), 409)
        return RedirectResponse(f"/ui/runs/{urllib.parse.quote(run_id)}?done=rated#rate", status_code=303)

    async def evals_list(request: Request) -> Response:
        try:
            evals = await anyio.to_thread.run_sync(manager.list_evals, EVALS_SHOWN)
        except ConductorError as exc:
            return _html(pages.message_page("Cannot read evals", str(exc)), 500)
        return _html(pages.evals_page(evals, signs_in))

    async def eval_page(request: Request) -> Response:
        eval_id = request.path_params["eval_id"]
        try:
            record = await anyio.to_thread.run_sync(manager.get_eval, eval_id)
        except EvalNotFound as exc:
            return _html(pages.message_page("No such eval", str(exc)), 404)
        except ConductorError as exc:
            return _html(pages.message_page("Cannot read the eval", str(exc)), 500)
        return _html(pages.eval_page(record, signs_in))

    async def login_form(request: Request) -> Response:
        if not signs_in:
            return RedirectResponse("/ui/", status_code=303)
        plain = request.url.scheme != "https" and not _loopback_host(request.headers.get("host", ""))
        return _html(pages.login_page(_safe_next(request.query_params.get("next")), secure_hint=plain))

    async def login(request: Request) -> Response:
        if not signs_in:
            return RedirectResponse("/ui/", status_code=303)
        client = request.client.host if request.client else "unknown"
        wait = throttle.retry_after(client)
        if wait is not None:  # refused before the token is even compared: no guess counts while it waits
            return HTMLResponse(pages.message_page("Too many tries", f"Too many wrong tokens from this address; "
                                                   f"try again in {wait} s."),
                                status_code=429, headers={"retry-after": str(wait)})
        form = await _form(request)
        given = form.get("token", "").encode()
        assert token is not None
        if not hmac.compare_digest(given, token.encode()):
            throttle.failed(client)
            return _html(pages.login_page(_safe_next(form.get("next")), error="That is not this server's token."),
                         401)
        response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
        gate.set_session(response, request)
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/ui/login" if signs_in else "/ui/", status_code=303)
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        media = STATIC_TYPES.get(name)
        if media is None:
            return Response("not found", status_code=404, media_type="text/plain")
        data = await anyio.to_thread.run_sync(_static_bytes, name)
        return Response(data, media_type=media, headers={"cache-control": "public, max-age=3600"})

    routes = [
        Route("/", guarded(home, public=True)),
        Route("/ui", guarded(home, public=True)),
        Route("/ui/", guarded(runs_list)),
        Route("/ui/runs/{run_id}", guarded(run_page)),
        Route("/ui/runs/{run_id}/state", guarded(run_state)),
        Route("/ui/runs/{run_id}/rate", guarded(rate), methods=["POST"]),
        Route("/ui/evals", guarded(evals_list)),
        Route("/ui/evals/{eval_id}", guarded(eval_page)),
        Route("/ui/login", guarded(login_form, public=True)),
        Route("/ui/login", guarded(login, public=True), methods=["POST"]),
        Route("/ui/logout", guarded(logout, public=True), methods=["POST"]),
        Route("/ui/static/{name}", guarded(static, public=True)),
    ]
    return Starlette(routes=routes)


def _static_bytes(name: str) -> bytes:
    return (resources.files("conductor_mcp.surfaces.web") / "static" / name).read_bytes()


def _loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in ("127.0.0.1", "localhost", "[::1]")


def with_web_ui(app: ASGIApp, manager: RunManager, security: TransportSecuritySettings,
                token: str | None) -> ASGIApp:
    """`app` (the MCP transport, behind its bearer check) with the web view beside it on `/` and `/ui/...`."""
    ui = web_app(manager, security, token)

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_ui_path(scope.get("path", "")):
            await ui(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


def ui_address(host: str, port: int) -> str:
    """The view's address for a browser on this machine (a wildcard bind is reached on loopback)."""
    name = host.strip("[]")
    if name in ("0.0.0.0", "::", ""):
        name = "127.0.0.1"
    shown = f"[{name}]" if ":" in name else name
    return f"http://{shown}:{port}/ui/"
