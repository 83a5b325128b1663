"""The walk of one request from each surface to the store: which of the package's modules it enters.

A profile hook sees every Python call while one request is served in this process: a solve through the MCP
tools (in-memory client), through /v1/chat/completions (the ASGI app), through the CLI, and a run page of the
web view. For each it prints the modules entered and the crossings (a call from one module into another),
both counted in conductor_mcp only. The worker is the scripted OpenAI-compatible server in its own process.

    .venv/bin/python -m bench.walk [--out bench/out/walk.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import httpx

from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.surfaces import cli
from conductor_mcp.surfaces.mcp_server import build_server

from .scripted import ScriptedProcess, write_manifest

PACKAGE = "conductor_mcp"
TASK = "Add 2 and 3.\nREPLY: 5"


class Walk:
    """Modules entered and crossings between them while it is active (all threads)."""

    def __init__(self) -> None:
        self.modules: set[str] = set()
        self.crossings = 0
        self._lock = threading.Lock()

    def _hook(self, frame: FrameType, event: str, _: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(PACKAGE):
            return
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back is not None else ""
        with self._lock:
            self.modules.add(module)
            if caller != module:
                self.crossings += 1

    @contextlib.contextmanager
    def active(self) -> Iterator[Walk]:
        threading.setprofile(self._hook)
        sys.setprofile(self._hook)
        try:
            yield self
        finally:
            sys.setprofile(None)
            threading.setprofile(None)

    def figures(self) -> dict[str, Any]:
        return {"modules": len(self.modules), "crossings": self.crossings, "entered": sorted(self.modules)}


async def _asgi(app: Callable[..., Awaitable[None]], method: str, path: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        return await client.request(method, path, json=body, timeout=60)


def mcp(manifest: Path, db: Path) -> tuple[dict[str, Any], str]:
    from mcp import Client

    async def go() -> str:
        server = build_server(manifest, db)
        async with Client(server) as client:  # the lifespan (a task group, litellm's import) before the walk
            with Walk().active() as walk:
                result = await client.call_tool("solve", {"task": TASK, "strategy": "single:a", "wait_s": 60})
        assert not result.is_error, result
        figures["mcp"] = walk.figures()
        return str(result.structured_content["run_id"]) if result.structured_content else ""

    figures: dict[str, Any] = {}
    run_id = anyio.run(go)
    return figures["mcp"], run_id


def openai(manifest: Path, db: Path) -> dict[str, Any]:
    from conductor_mcp.surfaces.openai_api import OpenAIApp

    async def go() -> dict[str, Any]:
        runs = RunManager(manifest, db)
        async with runs.running():
            runs.registry  # noqa: B018 - the manifest loads before the walk, as a server's does at start
            with Walk().active() as walk:
                resp = await _asgi(OpenAIApp(runs), "POST", "/v1/chat/completions",
                                   {"model": "single:a", "messages": [{"role": "user", "content": TASK}]})
        assert resp.status_code == 200, resp.text
        return walk.figures()

    return anyio.run(go)


def command_line(manifest: Path, db: Path) -> dict[str, Any]:
    # the run's JSON goes to stderr: stdout is for the figures
    with Walk().active() as walk, contextlib.redirect_stdout(sys.stderr):
        code = cli.main(["solve", TASK, "--strategy", "single:a", "--json", "--workers", str(manifest),
                         "--db", str(db)])
    assert code == 0
    return walk.figures()


def web_view(manifest: Path, db: Path, run_id: str) -> dict[str, Any]:
    from mcp.server.transport_security import TransportSecuritySettings

    from conductor_mcp.surfaces.web.app import web_app

    async def go() -> dict[str, Any]:
        runs = RunManager(manifest, db)
        app = web_app(runs, TransportSecuritySettings(enable_dns_rebinding_protection=False), None)
        with Walk().active() as walk:
            resp = await _asgi(app, "GET", f"/ui/runs/{run_id}")
        assert resp.status_code == 200, resp.text[:300]
        return walk.figures()

    return anyio.run(go)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, ScriptedProcess() as worker:
        manifest = write_manifest(Path(tmp) / "workers.yaml", worker.base_url, ("a",), priced=False)
        db = Path(tmp) / "traces.db"
        mcp_figures, run_id = mcp(manifest, db)
        report = {"mcp": mcp_figures, "v1": openai(manifest, db), "cli": command_line(manifest, db),
                  "web": web_view(manifest, db, run_id)}
    print(f"{'surface':8} {'modules':>8} {'crossings':>10}")
    for surface, row in report.items():
        print(f"{surface:8} {row['modules']:>8} {row['crossings']:>10}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
