"""How a one-step run's CPU divides inside the engine: its five store calls, its worker's call, the rest.

`python -m bench.store_share [-n 1000] [--rounds 5]` prints JSON. One-step runs go through RunManager.solve and wait,
as the servers run them (bench.lean's engine child runs the same), against the scripted OpenAI-compatible server in
its own process, on a SQLite file. Each store call the run makes (the run inserted claimed, the attempt started, the
step completed, the run finished, the run read back) and the worker's call (workers/openai_http.http_complete: the
POST, with its request built and its reply parsed by the engine's own client, which figure 2 and bench.lean count as
overhead against a bare POST) are timed in CPU (time.process_time) where the engine makes them, and counted; the
rest is what the run costs beyond both. Figures are CPU ms a run, the median over `rounds` rounds of `n` runs (so
the parts' medians need not add up to the whole's). bench.store_floor times the same five calls out of the engine,
in a loop: inside runs they cost more (the caches are shared with everything else a run does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from conductor_mcp.models import Manifest, RunStatus
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.workers import pool
from conductor_mcp.workers.registry import build_registry

from .lean import ONE_STEP, TASK
from .scripted import ScriptedProcess, worker_specs
from .timed import Spent

CALLS = ("add_claimed_run", "attempt_started", "step_completed", "finish_run", "get_run")
HTTP = "http_complete"


async def measure(base_url: str, n: int, rounds: int, warm: int = 200) -> dict[str, Any]:
    spent = Spent()
    per_round: dict[str, list[float]] = {k: [] for k in ("run", *CALLS, "store", HTTP, "rest")}
    made: Counter[str] = Counter()  # calls of each kind over the measured rounds
    real_http = getattr(pool, HTTP)
    setattr(pool, HTTP, spent.timed_async(HTTP, real_http))  # the name WorkerPool calls it by
    try:
        with tempfile.TemporaryDirectory(prefix="bench-store-share-") as tmp:
            store = Store(Path(tmp) / "traces.db")
            for name in CALLS:
                setattr(store, name, spent.timed(name, getattr(store, name)))
            engine = Engine(build_registry(Manifest(workers=worker_specs(base_url, ("strong",))), "bench"), store)
            manager = RunManager(engine=engine)
            async with manager.running():
                for r in range(rounds + 1):  # round 0 warms up: imports, connections, SQLite pages
                    spent.clear()
                    started = time.process_time()
                    for _ in range(warm if r == 0 else n):
                        handle = await manager.solve(TASK, workflow=ONE_STEP)
                        await manager.wait(handle, None)
                        done = handle.final or manager.get(handle.run_id)
                        if done.status != RunStatus.COMPLETED:
                            raise RuntimeError(f"run ended {done.status}: {done.error}")
                    if r == 0:
                        continue
                    made.update(spent.made)
                    ms = {k: v / n * 1e3 for k, v in spent.items()}
                    run = (time.process_time() - started) / n * 1e3
                    store_ms = sum(ms.get(c, 0.0) for c in CALLS)
                    per_round["run"].append(run)
                    for c in CALLS:
                        per_round[c].append(ms.get(c, 0.0))
                    per_round["store"].append(store_ms)
                    per_round[HTTP].append(ms.get(HTTP, 0.0))
                    per_round["rest"].append(run - store_ms - ms.get(HTTP, 0.0))
            await engine.pool.aclose()
            store.close()
    finally:
        setattr(pool, HTTP, real_http)
    medians = {k: round(statistics.median(v), 4) for k, v in per_round.items()}
    return {"runs_per_round": n, "rounds": rounds, "cpu_ms_a_run": medians,
            "calls_a_run": {k: made[k] / (n * rounds) for k in (*CALLS, HTTP)},
            "store_share_beyond_http": round(medians["store"] / (medians["run"] - medians[HTTP]), 3),
            "per_round": {k: [round(x, 4) for x in v] for k, v in per_round.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="runs a round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with ScriptedProcess() as zero:
        print(json.dumps(anyio.run(measure, zero.base_url, args.n, args.rounds, backend="asyncio"), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
