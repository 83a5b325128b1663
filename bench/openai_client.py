"""The clients of figure 8, run as their own process: `python -m bench.openai_client load|pairs --root URL ...`.

`load`: N concurrent clients, each with its own HTTP connection (as N separate applications would hold), opened
and one run made on it before the clock starts (load_client.drive); each takes runs from a shared quota until it is
spent or the deadline passes. A run is one non-streamed `POST /v1/chat/completions` with load_client's 3-step chain
as the `conductor.workflow`, so the runs are figure 4's. Prints START when the clock starts, then one JSON line
(load_client's keys).

`pairs`: the same 1-step run (`single:strong`) through MCP `solve` and through `/v1/chat/completions`, streamed
and not, interleaved, one after another on warm connections. Prints one JSON line of wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import httpx
from mcp import Client

from .load_client import TASK, WORKFLOW, Tally, drive


@asynccontextmanager
async def v1_session(root: str) -> AsyncIterator[httpx.AsyncClient]:
    """One client's own HTTP connection to the server at `root`, opened (GET /v1/models) before the clock."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=root, timeout=120, limits=limits) as http:
        (await http.get("/v1/models")).raise_for_status()  # the connection is open before the clock
        yield http


async def v1_run(http: httpx.AsyncClient, tally: Tally, body: dict[str, Any]) -> None:
    """One non-streamed POST /v1/chat/completions of `body`, counted in `tally`."""
    started = time.perf_counter()
    r = await http.post("/v1/chat/completions", json=body)
    ended = time.perf_counter()
    if r.status_code != 200:
        tally.errors[f"HTTP {r.status_code}"] += 1
        return
    status = (r.json().get("conductor") or {}).get("status")
    if status != "completed":
        tally.errors[f"run {status}"] += 1
        return
    tally.last_end = max(tally.last_end, ended)
    tally.latency.append(ended - started)


async def one_run(http: httpx.AsyncClient, tally: Tally, n: int) -> None:
    await v1_run(http, tally, {"model": "conductor", "messages": [{"role": "user", "content": f"{TASK} (run {n})"}],
                               "conductor": {"workflow": WORKFLOW}})


async def load(root: str, concurrency: int, runs: int, timeout_s: float, ramp_s: float) -> dict[str, Any]:
    return await drive(partial(v1_session, root), one_run, concurrency, runs, timeout_s, ramp_s)


async def pairs(root: str, n: int, warmup: int) -> dict[str, Any]:
    """Wall time of the same run three ways, interleaved so that drift in the machine's load hits all alike."""
    times: dict[str, list[float]] = {"mcp_solve": [], "v1": [], "v1_stream": []}
    body = {"model": "strong", "messages": [{"role": "user", "content": TASK}]}
    async with Client(f"{root}/mcp") as mcp, httpx.AsyncClient(base_url=root, timeout=60) as http:

        async def via_mcp() -> None:
            r = await mcp.call_tool("solve", {"task": TASK, "strategy": "single:strong", "wait_s": 60})
            if r.is_error or (r.structured_content or {}).get("status") != "completed":
                raise RuntimeError(f"MCP solve: {r.content}")

        async def via_v1() -> None:
            r = await http.post("/v1/chat/completions", json=body)
            if r.status_code != 200 or r.json()["conductor"]["status"] != "completed":
                raise RuntimeError(f"/v1: {r.status_code} {r.text[:300]}")

        async def via_v1_stream() -> None:
            async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                text = (await r.aread()).decode()
            if r.status_code != 200 or not text.endswith("data: [DONE]\n\n"):
                raise RuntimeError(f"/v1 stream: {r.status_code} {text[-300:]}")

        ways = {"mcp_solve": via_mcp, "v1": via_v1, "v1_stream": via_v1_stream}
        for i in range(warmup + n):
            order = list(ways) if i % 2 == 0 else list(reversed(ways))
            for name in order:
                t0 = time.perf_counter()
                await ways[name]()
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["load", "pairs"])
    parser.add_argument("--root", required=True, help="the server's root URL, e.g. http://127.0.0.1:8765")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0, help="stop starting runs after this many seconds")
    parser.add_argument("--ramp-s", type=float, default=0.0, help="load: the first runs spread over this long")
    args = parser.parse_args()
    if args.mode == "load":
        result = anyio.run(load, args.root, args.concurrency, args.runs, args.timeout, args.ramp_s, backend="asyncio")
    else:
        result = anyio.run(pairs, args.root, args.runs, args.warmup, backend="asyncio")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
