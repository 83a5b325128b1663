"""The direct httpx client and litellm record the same trace for the same worker, on the real scripted server.

Each case runs one workflow twice, with the workers forced to `client: litellm` and to `client: httpx`, each
into its own SQLite store, and compares the stored runs (statuses, outputs, usage and cost, every attempt and
its error; ids, timestamps and latencies left out) and the requests the server saw (model, key, cap, prompt).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest

from conductor_mcp.models import Manifest, Run, WorkerSpec
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.resilience import RetryPolicy
from conductor_mcp.store import Store
from conductor_mcp.workers.registry import build_registry

from ..conftest import solve
from ..servers.openai_server import ScriptedServer

pytestmark = pytest.mark.anyio
Client = Literal["litellm", "httpx"]
POLICY = RetryPolicy(attempts_per_worker=2, base_delay_s=0.01, max_delay_s=0.05)
KEY_ENV = "CONDUCTOR_TEST_PARITY_AUTH"
SECRET = "sk-proj-parityTEST0123456789abcdefXYZ"
PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 4.0}
CHAIN = {"steps": [
    {"worker": "a", "instruction": "Draft the answer", "access": "none"},
    {"worker": "b", "instruction": "Check the draft", "access": "none"},
    {"worker": "a", "instruction": "Write the final answer", "access": "all"},
]}
ONE_STEP = {"steps": [{"worker": "a", "instruction": "Answer it", "access": "none"}]}


def seed_for(failures: list[bool], rate: float, kinds: list[str]) -> int:
    """A fault seed whose draws fail exactly these requests, in order, as the server draws: whether a request
    fails, then (when it does) its kind."""
    for seed in range(10_000):
        rng = random.Random(seed)
        drawn = []
        for _ in failures:
            drawn.append(rng.random() < rate)
            if drawn[-1]:
                rng.choice(kinds)
        if drawn == failures:
            return seed
    raise AssertionError("no seed found")


def registry_workers(server: ScriptedServer, client: Client, **fields: Any) -> list[WorkerSpec]:
    """Workers a (falling back to b) and b, with `fields` on both."""
    common: dict[str, Any] = {"api_base": server.base_url, "client": client, "price": PRICE, "timeout_s": 5, **fields}
    return [WorkerSpec.model_validate({"id": "a", "model": "openai/scripted-a", "fallback": "b", **common}),
            WorkerSpec.model_validate({"id": "b", "model": "openai/scripted-b", **common})]


def trace(run: Run) -> dict[str, Any]:
    """What a run's trace says, without what differs between two runs of the same work (ids, times)."""
    return {
        "status": run.status, "answer": run.answer, "error": run.error, "usage": run.usage.model_dump(),
        "steps": [{"index": s.index, "worker": s.worker, "status": s.status, "output": s.output, "error": s.error,
                   "usage": s.usage.model_dump(),
                   "attempts": [(a.n, a.worker, a.status, a.error, a.usage.model_dump()) for a in s.attempts]}
                  for s in run.steps],
    }


async def run_with(client: Client, server: ScriptedServer, tmp_path: Path, workflow: dict[str, Any],
                   faults: dict[str, Any], **fields: Any) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """One solve of `workflow` with every worker on `client`: its trace, and the requests the server saw."""
    server.reset_stats()
    server.set_faults(**faults)
    store = Store(tmp_path / f"{client}.db")
    try:
        engine = Engine(build_registry(Manifest(workers=registry_workers(server, client, **fields)), "parity"),
                        store, policy=POLICY)
        run = await solve(engine, "parity task", workflow=workflow)
        await engine.pool.aclose()
    finally:
        store.close()
    with anyio.fail_after(5):  # a request the client gave up on (a hang) is recorded when the server sees it go
        while server.stats(include_calls=False)["in_flight"]:  # noqa: ASYNC110 (another thread's counter)
            await anyio.sleep(0.02)
    seen = [(c.model, c.outcome, c.status, c.authorization, c.max_tokens, c.prompt_sha256) for c in server.calls()]
    return trace(run), sorted(seen, key=repr)  # independent steps run concurrently: their order is the scheduler's


async def assert_same(server: ScriptedServer, tmp_path: Path, workflow: dict[str, Any], faults: dict[str, Any],
                      **fields: Any) -> dict[str, Any]:
    via_litellm, seen_litellm = await run_with("litellm", server, tmp_path, workflow, faults, **fields)
    via_httpx, seen_httpx = await run_with("httpx", server, tmp_path, workflow, faults, **fields)
    assert via_httpx == via_litellm
    assert seen_httpx == seen_litellm
    return via_httpx


async def test_chain_with_key_params_and_prices(server: ScriptedServer, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.set_api_key(SECRET)
    t = await assert_same(server, tmp_path, CHAIN, {}, api_key_env=KEY_ENV,
                          params={"temperature": 0.2, "max_tokens": 40})
    assert t["status"] == "completed" and t["usage"]["calls"] == 3 and t["usage"]["cost_usd"] > 0
    assert all(s["usage"]["completion_tokens"] <= 40 for s in t["steps"])  # the cap was sent, and honoured


async def test_429_then_success_is_retried(server: ScriptedServer, tmp_path: Path) -> None:
    faults = {"rate": 0.5, "kinds": ["429"], "seed": seed_for([True, False], 0.5, ["429"]), "retry_after": 0.01}
    t = await assert_same(server, tmp_path, ONE_STEP, faults)
    attempts = t["steps"][0]["attempts"]
    assert [(a[1], a[2]) for a in attempts] == [("a", "error"), ("a", "ok")]
    assert attempts[0][3] == "a: RateLimitError 429: Rate limit reached (scripted fault)."


async def test_500_falls_back(server: ScriptedServer, tmp_path: Path) -> None:
    t = await assert_same(server, tmp_path, ONE_STEP, {"fail_models": {"scripted-a": "500"}})
    assert [(a[1], a[2]) for a in t["steps"][0]["attempts"]] == [("a", "error"), ("a", "error"), ("b", "ok")]
    assert "InternalServerError 500" in t["steps"][0]["attempts"][0][3]


async def test_timeout_is_retried_then_falls_back(server: ScriptedServer, tmp_path: Path) -> None:
    t = await assert_same(server, tmp_path, ONE_STEP, {"fail_models": {"scripted-a": "hang"}, "hang_s": 5.0},
                          timeout_s=1.0)
    assert [a[3] for a in t["steps"][0]["attempts"]] == ["a: timed out after 1s"] * 2 + [None]


@pytest.mark.parametrize("kind", ["context_length", "401", "quota"])
async def test_refusal_is_not_retried(server: ScriptedServer, tmp_path: Path, kind: str) -> None:
    t = await assert_same(server, tmp_path, ONE_STEP, {"fail_models": {"scripted-a": kind}})
    assert [(a[1], a[2]) for a in t["steps"][0]["attempts"]] == [("a", "error"), ("b", "ok")]


async def test_every_worker_failing_fails_the_run_alike(server: ScriptedServer, tmp_path: Path) -> None:
    t = await assert_same(server, tmp_path, CHAIN, {"fail_models": {"scripted-a": "404", "scripted-b": "500"}})
    assert t["status"] == "failed" and t["steps"][2]["status"] == "skipped"


async def test_empty_completion_alike(server: ScriptedServer, tmp_path: Path) -> None:
    server.script(model="scripted-a", reply=lambda m: "")
    t = await assert_same(server, tmp_path, ONE_STEP, {})
    assert [a[3] for a in t["steps"][0]["attempts"]] == ["a: empty completion"] * 2 + [None]
