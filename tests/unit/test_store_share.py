"""bench.store_share: it times the store calls and the worker's HTTP call where the engine makes them, in real runs
over HTTP on a real SQLite file, so that its split of a run's CPU names every store call a one-step run makes."""

from __future__ import annotations

import anyio
import pytest

from bench.store_share import CALLS, HTTP, measure
from conductor_mcp.workers import pool

from ..servers.openai_server import ScriptedServer


def test_each_of_a_one_step_runs_store_calls_and_its_http_call_is_timed_inside_real_runs(
        server: ScriptedServer) -> None:
    real_http = getattr(pool, HTTP)
    result = anyio.run(measure, server.base_url, 20, 2, 5, backend="asyncio")
    assert getattr(pool, HTTP) is real_http  # put back
    ms = result["cpu_ms_a_run"]
    assert all(ms[c] > 0 for c in (*CALLS, HTTP)), ms  # each is made, where the bench looks for it
    assert ms["store"] == pytest.approx(sum(ms[c] for c in CALLS), abs=1e-3)
    for r in range(2):  # what is left is the run beyond both, round by round
        row = {k: v[r] for k, v in result["per_round"].items()}
        assert row["rest"] == pytest.approx(row["run"] - row["store"] - row[HTTP], abs=1e-3)
    assert 0 < result["store_share_beyond_http"] < 1
