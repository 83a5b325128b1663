"""bench.store_share: it times the store calls and the worker's call where the engine makes them, in real runs over
HTTP on a real SQLite file, so that its split of a run's CPU names every store call a one-step run makes, once."""

from __future__ import annotations

import anyio

from bench.store_share import CALLS, HTTP, measure
from conductor_mcp.workers import pool

from ..servers.openai_server import ScriptedServer


def test_each_store_call_and_the_workers_call_of_a_one_step_run_is_timed_once_a_run(server: ScriptedServer) -> None:
    real_http = getattr(pool, HTTP)
    result = anyio.run(measure, server.base_url, 20, 3, 5, backend="asyncio")
    assert getattr(pool, HTTP) is real_http  # put back
    # each is made once a run, where the bench times it (a renamed or a dropped call shows as 0, one made twice as 2)
    assert result["calls_a_run"] == {c: 1.0 for c in (*CALLS, HTTP)}, result["calls_a_run"]
    ms = result["cpu_ms_a_run"]
    assert all(ms[c] > 0 for c in (*CALLS, HTTP)) and ms["run"] > ms["store"] + ms[HTTP], ms
