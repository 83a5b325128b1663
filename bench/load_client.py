"""The load client for figure 4, run as its own process: `python -m bench.load_client --url ... -c N`.

Each of the N concurrent workers holds its own MCP session (as N separate hosts would), opened, its tools listed
and one run made on it before the clock starts (drive). Workers take runs from a shared quota until it is spent or
the deadline passes; each run is plan_workflow (a fixed host workflow: no planning) then resume(wait_s=60). Prints
START when the clock starts, then one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import anyio
from mcp import Client

# A sequential chain: each step sees the one before it, so the workers' own critical path is 3 × latency.
WORKFLOW: dict[str, Any] = {"steps": [
    {"worker": "cheap", "instruction": "List the facts the task depends on.", "access": "none"},
    {"worker": "coder", "instruction": "Work the task out from those facts.", "access": [0]},
    {"worker": "strong", "instruction": "Check the working and give the final answer.", "access": [1]},
]}
START = "START"
TASK = "How many litres of paint cover the walls of a 4 m × 5 m room with 2.5 m ceilings?"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Tally:
    def __init__(self, runs: int) -> None:
        self.left = runs
        self.latency: list[float] = []
        self.plan: list[float] = []
        self.resume: list[float] = []
        self.errors: Counter[str] = Counter()
        self.last_end = 0.0  # the clock stops at the last completed run, not at the sessions' close

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def one_run(client: Client, tally: Tally, n: int) -> None:
    started = time.perf_counter()
    planned = await client.call_tool("plan_workflow", {"task": f"{TASK} (run {n})", "workflow": WORKFLOW})
    if planned.is_error or planned.structured_content is None:
        tally.errors["plan_workflow error"] += 1
        return
    mid = time.perf_counter()
    done = await client.call_tool("resume", {"run_id": planned.structured_content["run_id"], "wait_s": 60})
    ended = time.perf_counter()
    status = (done.structured_content or {}).get("status")
    if done.is_error or status != "completed":
        tally.errors[f"resume: {status or 'error'}"] += 1
        return
    tally.last_end = max(tally.last_end, ended)
    tally.latency.append(ended - started)
    tally.plan.append(mid - started)
    tally.resume.append(ended - mid)


class Gate:
    """Sessions report in when open and warmed up (or failed); the clock starts once all have, then `go` opens."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.settled = 0
        self.opened = 0
        self.warmed = 0  # sessions whose run before the clock completed
        self.all_settled = anyio.Event()
        self.go = anyio.Event()
        self.deadline = float("inf")

    def settle(self, opened: bool) -> None:
        self.settled += 1
        self.opened += opened
        if self.settled == self.expected:
            self.all_settled.set()


C = TypeVar("C")  # what a session gives its runs: an MCP Client, an httpx.AsyncClient
OneRun = Callable[[C, Tally, int], Awaitable[None]]  # one run on a session: (client, tally, runs left)


async def _session(open_session: Callable[[], AbstractAsyncContextManager[C]], one_run: OneRun[C], tally: Tally,
                   gate: Gate, offset_s: float) -> None:
    settled = False
    try:
        async with open_session() as client:
            # one run before the clock, as a steady load has had: a client's first calls do one-off work (the MCP
            # SDK's client compiles a validator per tool at its first call of it), all N sessions at once otherwise
            warm = Tally(1)
            try:
                await one_run(client, warm, 0)
            except Exception as exc:
                warm.errors[type(exc).__name__] += 1
            tally.errors.update({f"warm-up: {k}": v for k, v in warm.errors.items()})
            gate.warmed += len(warm.latency)
            gate.settle(True)
            settled = True
            await gate.go.wait()
            await anyio.sleep(offset_s)
            while time.perf_counter() < gate.deadline and tally.take():
                try:
                    await one_run(client, tally, tally.left)
                except Exception as exc:  # counted, not fatal: the figure is the error count
                    tally.errors[type(exc).__name__] += 1
    except Exception as exc:
        tally.errors[f"session: {type(exc).__name__}"] += 1
        if not settled:
            gate.settle(False)


async def drive(open_session: Callable[[], AbstractAsyncContextManager[C]], one_run: OneRun[C], concurrency: int,
                runs: int, timeout_s: float, ramp_s: float = 0.0) -> dict[str, Any]:
    """N concurrent sessions (each `open_session()`, all open and each having made one run before the clock starts:
    `warm_up_runs` in the figures) take runs from a shared quota, each run `one_run(client, tally, n)`, until it is
    spent or the deadline passes. Prints START when the clock starts; returns the figures (plan_s and resume_s stay
    empty where one_run does not fill them).
    `ramp_s`: the sessions' first runs start spread evenly over this long (0: all at once), as independent
    clients would, rather than in lock-step through the first runs."""
    tally = Tally(runs)
    gate = Gate(concurrency)
    connect_started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(concurrency):
            tg.start_soon(_session, open_session, one_run, tally, gate, k * ramp_s / concurrency)
        with anyio.move_on_after(60):
            await gate.all_settled.wait()
        connect_s = time.perf_counter() - connect_started
        # The client's own collections of its start-up heap (mcp, pydantic, httpx) took tens of ms and held up
        # all N sessions at once, which the figure counted as the server's latency: out of the count from here.
        gc.freeze()
        started = time.perf_counter()
        cpu_started = _cpu()
        gate.deadline = started + timeout_s
        sys.stdout.write(START + "\n")  # the parent samples the server's CPU time from here
        sys.stdout.flush()
        gate.go.set()
    wall = (tally.last_end or time.perf_counter()) - started
    return {"concurrency": concurrency, "runs_asked": runs, "completed": len(tally.latency),
            "errors": dict(tally.errors), "wall_s": wall, "connect_s": connect_s, "sessions": gate.opened,
            "warm_up_runs": gate.warmed,
            "latency_s": tally.latency, "plan_s": tally.plan, "resume_s": tally.resume,
            "client_cpu_s": _cpu() - cpu_started}


@asynccontextmanager
async def mcp_session(url: str) -> AsyncIterator[Client]:
    """One host's MCP session, open and its tools listed, as hosts list them at connect (the SDK's client lists
    them at its first call_tool otherwise, in the clock, all N sessions at once)."""
    async with Client(url, read_timeout_seconds=120) as client:
        await client.list_tools()
        yield client


async def main_async(url: str, concurrency: int, runs: int, timeout_s: float, ramp_s: float) -> dict[str, Any]:
    return await drive(partial(mcp_session, url), one_run, concurrency, runs, timeout_s, ramp_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("-c", "--concurrency", type=int, required=True)
    parser.add_argument("-n", "--runs", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=120.0, help="stop starting runs after this many seconds")
    parser.add_argument("--ramp-s", type=float, default=0.0, help="spread the sessions' first runs over this long")
    args = parser.parse_args()
    result = anyio.run(main_async, args.url, args.concurrency, args.runs, args.timeout, args.ramp_s, backend="asyncio")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
