"""A server told to stop (RunManager.drain): no new runs, /readyz says so, and /v1 answers 503 with a retry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conductor_mcp.errors import ShuttingDown
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.surfaces.openai_chat import error_for
from conductor_mcp.surfaces.probes import Probes
from conductor_mcp.surfaces.transports import grace_period

pytestmark = pytest.mark.anyio


async def test_a_draining_manager_takes_no_new_runs(tmp_path: Path) -> None:
    manager = RunManager(db=tmp_path / "traces.db")
    async with manager.running():
        manager.drain()
        with pytest.raises(ShuttingDown, match="shutting down"):
            await manager.solve("a task")
        with pytest.raises(ShuttingDown):
            await manager.plan("a task")
        with pytest.raises(ShuttingDown):
            await manager.run_step("run", 0)
        assert await manager.handed_back(0.1)


def test_v1_answers_503_with_a_retry_while_shutting_down() -> None:
    err = error_for(ShuttingDown("this server is shutting down"))
    assert (err.status, err.code, err.retry) == (503, "shutting_down", True)


async def call(app: Any, method: str, path: str) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "headers": []}, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"] or b"{}")


async def test_readyz_says_shutting_down_and_healthz_stays_up(tmp_path: Path) -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a probe reached the app")

    manager = RunManager(db=tmp_path / "traces.db")
    probes = Probes(inner, manager)
    assert await call(probes, "GET", "/readyz") == (200, {"status": "ready"})
    manager.drain()
    assert await call(probes, "GET", "/readyz") == (503, {"status": "not ready", "reason": "shutting down"})
    assert await call(probes, "GET", "/healthz") == (200, {"status": "ok"})


def test_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONDUCTOR_GRACE_S", raising=False)
    assert grace_period(None) == 10.0
    monkeypatch.setenv("CONDUCTOR_GRACE_S", "25")
    assert grace_period(None) == 25.0
    assert grace_period(3.5) == 3.5
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv("CONDUCTOR_GRACE_S", bad)
        with pytest.raises(Exception, match="grace period"):
            grace_period(None)
