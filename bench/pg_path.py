"""The hot path on a PostgreSQL store (the one that replicas share): this tree against another, side by side.

`python -m bench.pg_path --before-src DIR [--rounds 12]` prints JSON and writes it to bench/out/pg_path.json. A
throwaway PostgreSQL cluster (tests/servers/postgres_server.py: the installed server binaries) holds a fresh database
for each side and measure. Sides alternate from round to round, each running with its own src first on PYTHONPATH
(bench.lean's side_env).

- engine: a child process per side and round makes 200 one-step runs (RunManager.solve, then wait for its end, as
  the servers run one) on the scripted worker that answers at once; the medians of its wall and CPU ms a run.
- served: `python -m conductor_mcp serve --transport http` per side, on its own database. Each round sends 50
  sequential one-step runs over /v1/chat/completions (the server's CPU a run, from /proc, as bench.lean's), then
  figure 4's 3-step chain of 50 ms workers from 10 clients, 200 runs (bench.openai_client: p50 and p99 beyond the
  150 ms of worker time, and the server's CPU a 3-step run).

Medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx

from .lean import ONE_STEP, TASK, _cpu_of, _v1_runs, side_env, write_manifest
from .load import WORKER_PATH_S, HttpServer, run_client
from .procfs import task_cpu_seconds
from .profiles import OUT_DIR
from .scripted import ROOT, ScriptedProcess, worker_specs

RUNS = 200


async def _child(base_url: str, url: str, n: int) -> dict[str, float]:
    from conductor_mcp.models import Manifest
    from conductor_mcp.runs.engine import Engine
    from conductor_mcp.runs.run_manager import RunManager
    from conductor_mcp.store import open_store
    from conductor_mcp.workers.registry import build_registry

    engine = Engine(build_registry(Manifest(workers=worker_specs(base_url, ("strong",))), "bench"), open_store(url))
    manager = RunManager(engine=engine)
    walls, cpus = [], []
    async with manager.running():
        for i in range(30 + n):  # the first 30: warm-up (imports, connections, prepared statements)
            c0, t0 = time.process_time(), time.perf_counter()
            handle = await manager.solve(TASK, workflow=ONE_STEP)
            await manager.wait(handle, None)
            if i >= 30:
                walls.append((time.perf_counter() - t0) * 1e3)
                cpus.append((time.process_time() - c0) * 1e3)
    engine.store.close()
    return {"wall_ms": statistics.median(walls), "cpu_ms": statistics.median(cpus)}


def _served(src: Path, manifest: Path, url: str, log: Path) -> HttpServer:
    env = side_env(src)
    env.update(CONDUCTOR_WORKERS=str(manifest), CONDUCTOR_DB=url)
    return HttpServer([sys.executable, "-m", "conductor_mcp"], env, log, 60, 0.02)


def _ten_clients(server: HttpServer) -> dict[str, float]:
    marks: dict[str, float] = {}

    def on_start() -> None:
        marks["cpu"] = task_cpu_seconds(server.proc.pid)

    out = run_client(server.root, 10, RUNS, 90.0, on_start, ("bench.openai_client", "load", "--root"), WORKER_PATH_S)
    beyond = sorted((x - WORKER_PATH_S) * 1e3 for x in out["latency_s"])
    return {"p50_ms": statistics.median(beyond), "p99_ms": beyond[int(0.99 * (len(beyond) - 1))],
            "cpu_ms_3_steps": (task_cpu_seconds(server.proc.pid) - marks["cpu"]) * 1e3 / max(out["completed"], 1),
            "errors": float(sum(out["errors"].values()))}


def measure(srcs: dict[str, Path], rounds: int) -> dict[str, Any]:
    from tests.servers.postgres_server import PostgresServer

    rows: dict[str, dict[str, list[float]]] = {s: {} for s in srcs}

    def add(side: str, figures: dict[str, float]) -> None:
        for k, v in figures.items():
            rows[side].setdefault(k, []).append(v)

    with ExitStack() as stack:
        zero = stack.enter_context(ScriptedProcess(latency_ms=0))
        fifty = stack.enter_context(ScriptedProcess(latency_ms=50))
        pg = stack.enter_context(PostgresServer())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pg-path-")))
        servers = {}
        for side, src in srcs.items():
            for kind, workers in (("zero", zero), ("fifty", fifty)):
                manifest = write_manifest(tmp / f"{side}-{kind}.yaml", workers.base_url)
                servers[side, kind] = _served(src, manifest, pg.new_database(), tmp / f"{side}-{kind}.log")
                stack.callback(servers[side, kind].stop)
        for server in servers.values():  # warm-up
            with httpx.Client(base_url=server.root, timeout=60) as http:
                _v1_runs(http, 20)
        for r in range(rounds):
            for side in (list(srcs) if r % 2 == 0 else list(srcs)[::-1]):
                child = subprocess.run([sys.executable, "-m", "bench.pg_path", "--child", zero.base_url,
                                        pg.new_database()], cwd=ROOT, env=side_env(srcs[side]), capture_output=True,
                                       text=True, timeout=600)
                if child.returncode != 0:
                    raise RuntimeError(f"{side} child exited {child.returncode}: {child.stderr[-2000:]}")
                add(side, {f"engine_{k}": v for k, v in json.loads(child.stdout.splitlines()[-1]).items()})
                server = servers[side, "zero"]
                with httpx.Client(base_url=server.root, timeout=60) as http:
                    cpu, _ = _cpu_of(server.proc.pid, lambda: _v1_runs(http, 50), 50)
                add(side, {"v1_server_cpu_ms": cpu, **_ten_clients(servers[side, "fifty"])})
            print(json.dumps({"round": r, **{s: {k: round(v[-1], 2) for k, v in f.items()} for s, f in rows.items()}}),
                  file=sys.stderr, flush=True)
    return {"rounds": rounds, "runs": RUNS, "srcs": {s: str(p) for s, p in srcs.items()},
            "median": {s: {k: statistics.median(v) for k, v in f.items()} for s, f in rows.items()}, "all": rows}


def _sides(before: Path) -> Iterator[tuple[str, Path]]:
    yield "before", before.resolve()
    yield "after", ROOT / "src"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-src", type=Path, help="the src folder to compare this tree with")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--child", nargs=2, metavar=("WORKER_URL", "DB_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        worker_url, db_url = args.child
        print(json.dumps(anyio.run(_child, worker_url, db_url, RUNS, backend="asyncio")))
        return 0
    if args.before_src is None:
        parser.error("--before-src: the src folder to compare with (git worktree add, or git archive)")
    text = json.dumps(measure(dict(_sides(args.before_src)), args.rounds), indent=1)
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "pg_path.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
