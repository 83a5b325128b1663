"""Issue 20, "orchestration that costs nothing next to the models": this tree against the version before it, side
by side in one run.

`python -m bench.lean [--quick] [--before a8aa56e]` prints a markdown section and writes bench/out/lean.json;
`--before-src DIR --parts cpu,engine` compares this tree with any src folder, some measures only (one change at a
time; written to bench/out/lean_partial.json).

The version before is `git archive`d into a temporary folder and run from there (PYTHONPATH first: it wins over
the editable install; each side's child prints the conductor_mcp it imported, kept in the JSON). Both sides use
the same venv, manifest, scripted workers (tests.servers.openai_server in their own processes) and clients.

1. Server CPU per one-step run: two `python -m conductor_mcp serve --transport http` processes at once (before,
   after); each round sends `runs` sequential one-step runs to each (the order alternating between rounds) over
   /v1/chat/completions (`model: strong`, non-streamed) and over MCP (plan_workflow of a 1-step host workflow +
   resume(wait_s=60), one session a round, its handshake included; and since 2026-12-07 as one call, solve with
   `strategy: single:strong`, the same one-step run /v1's `model: strong` is); the server's CPU time from
   /proc/PID/task/*/schedstat (nanoseconds) before and after: CPU ms a run, one figure a round, medians over rounds.
   Runs per second on one server core = 1000 / that. Also each server's start (spawn to listening, its CPU from
   /proc/PID/stat), its RSS after the runs, and which C parts (uvloop, httptools) it loaded. A before side whose
   pyproject.toml does not name httptools gets a stub that hides the venv's (uvicorn would take it otherwise):
   each side runs with the dependencies its own install had.
2. Engine overhead per step (figure 2): in a child process per side, a 1-step run (host workflow) as the servers
   run one (RunManager.solve, then wait for its end; until 2026-12-07 this was plan + drive, which reads the run
   back), interleaved with the bare call of the client the engine uses for that worker (a POST through the direct
   client's own `Channel` when `engine.pool.endpoint(id)` names an endpoint, else litellm.acompletion; until
   2026-12-07 the former was `httpx.AsyncClient.post`, about 0.4 ms dearer); paired differences of
   wall and CPU. Children alternate sides, `chunks` times each: 10 children of 60 pairs a side since 2026-12-07
   15:00, 3 of 200 before (with the same code on both sides, 3 children put the sides up to 22 % apart in 9 runs,
   10 children at most 5.6 %). Also a 5-step chain of the same step (each sees the one before, so each call is the
   bare call's plus about 0.6 kB of prompt): (5-step − 1-step − 4 bare) / 4 is a step's own overhead, with the
   run's (planning, claim, end, the final read) cancelled out.
3. Parallel efficiency (figure 3): in a child per side, four 200 ms steps side by side then a 200 ms aggregator;
   efficiency = 0.400 s / execute wall.
4. p99 beyond workers at 10 clients (figures 4 and 8): figure 4's 3-step chain of 50 ms workers, 10 concurrent
   clients in their own process (bench.load_client over MCP, bench.openai_client over /v1), `load_runs` runs a
   level; beyond workers = request time − 150 ms. Rounds alternate sides. Since 2026-12-07 also the share of
   that inside the server's runs, from each side's own trace: from a run's first worker call to its end, less the
   worker calls the server timed (the HTTP around a run, the client's process and the workers' server make the
   rest). Since 2026-12-07 (later) the clients no longer count their own start-up as the server's tail: each session
   lists the tools (MCP, as hosts do at connect) and makes one run before the clock, the client freezes its heap
   when the clock starts, the scripted workers freeze theirs once serving, and the 10 sessions' first runs spread
   over 150 ms (LOAD_RAMP_S) instead of all starting in the same millisecond.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import yaml

from .load import WORKER_PATH_S, HttpServer, run_client
from .procfs import cpu_seconds, status_kib, task_cpu_seconds
from .profiles import OUT_DIR
from .scripted import ROOT, ScriptedProcess, bench_env, worker_specs
from .stats import summarise
from .tasks import PARALLEL_DAG

OUT_JSON = OUT_DIR / "lean.json"
BEFORE = "a8aa56e"
SIDES = ("before", "after")
TASK = "Summarise the trade-offs between optimistic and pessimistic locking in two short paragraphs."
ONE_STEP: dict[str, Any] = {"steps": [{"worker": "strong", "instruction": TASK, "access": "none"}]}
# five steps in a chain, each seeing the one before (so they run one at a time, as figure 4's do): a step's
# prompt is ONE_STEP's plus the previous answer (about 0.6 kB), so that a bare call prices each, nearly
CHAIN: dict[str, Any] = {"steps": [{"worker": "strong", "instruction": TASK, "access": [i - 1] if i else "none"}
                                   for i in range(5)]}
PARALLEL_STEP_S = 0.200
PARALLEL = PARALLEL_DAG
LOAD_RAMP_S = WORKER_PATH_S
TARGETS = {"server_cpu_ms": 4.0, "engine_overhead_ms": 0.5, "parallel_efficiency": 0.95, "p99_ms": 50.0,
           "runs_per_core_ratio": 3.0}


def side_env(src: Path) -> dict[str, str]:
    """bench_env with `src` first on PYTHONPATH: that side's conductor_mcp, this tree's bench and tests."""
    env = bench_env()
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@contextmanager
def before_tree(commit: str) -> Iterator[Path]:
    """The src folder of `commit`, extracted (git archive) into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="bench-lean-before-") as tmp:
        archive = Path(tmp) / "src.tar"
        subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit, "src"], cwd=ROOT, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        src = Path(tmp) / "src"
        declared = subprocess.run(["git", "show", f"{commit}:pyproject.toml"], cwd=ROOT, capture_output=True,
                                  text=True, check=True).stdout
        if "httptools" not in declared:
            # uvicorn would take the venv's httptools for this side too, which its own install never had: hide it
            (src / "httptools").mkdir()
            (src / "httptools" / "__init__.py").write_text(f'raise ImportError("not a dependency at {commit}")\n')
        yield src


def imported_from(src: Path) -> str:
    """The conductor_mcp file a process started with side_env(src) imports."""
    out = subprocess.run([sys.executable, "-c", "import conductor_mcp; print(conductor_mcp.__file__)"],
                         env=side_env(src), capture_output=True, text=True, check=True)
    return out.stdout.strip()


def write_manifest(path: Path, base_url: str) -> Path:
    """The pool without a `client` key (the version before has none): `auto` picks the client after."""
    workers = [s.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
               for s in worker_specs(base_url, max_concurrency=1024)]
    path.write_text(yaml.safe_dump({"workers": workers}, sort_keys=False))
    return path


class Served(HttpServer):
    """`python -m conductor_mcp serve --transport http` of one side, on a free loopback port; SIGINT on stop."""

    def __init__(self, src: Path, manifest: Path, db: Path, log: Path) -> None:
        self.db = db
        env = side_env(src)
        env.update(CONDUCTOR_WORKERS=str(manifest), CONDUCTOR_DB=str(db))
        super().__init__([sys.executable, "-m", "conductor_mcp"], env, log, 60, 0.02)
        # spawn to listening (the lifespan, litellm's warm-up included, runs before uvicorn listens)
        self.listen_s = time.perf_counter() - self.spawned_at
        self.listen_cpu_s = cpu_seconds(self.proc.pid)
        with open(f"/proc/{self.proc.pid}/maps") as maps:  # which of the C parts it loaded
            mapped = maps.read()
        self.c_parts = [name for name in ("uvloop", "httptools") if f"/{name}/" in mapped]


# -- 1. server CPU per one-step run ---------------------------------------------------------------------------
def _v1_run(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"model": "strong", "messages": [{"role": "user", "content": TASK}]})
    if r.status_code != 200 or r.json()["conductor"]["status"] != "completed":
        raise RuntimeError(f"/v1: {r.status_code} {r.text[:300]}")


def _v1_runs(http: httpx.Client, n: int) -> None:
    for _ in range(n):
        _v1_run(http)


async def _mcp_runs(url: str, n: int, one_call: bool = False) -> None:
    """`n` one-step runs in one session: plan_workflow + resume, or (`one_call`) as /v1's `model: strong` is one
    request, solve with `strategy: single:strong` (no planner)."""
    from mcp import Client

    async with Client(url, read_timeout_seconds=120) as client:
        for _ in range(n):
            if one_call:
                done = await client.call_tool("solve", {"task": TASK, "strategy": "single:strong", "wait_s": 60})
            else:
                planned = await client.call_tool("plan_workflow", {"task": TASK, "workflow": ONE_STEP})
                if planned.is_error or planned.structured_content is None:
                    raise RuntimeError(f"plan_workflow: {planned.content}")
                done = await client.call_tool("resume", {"run_id": planned.structured_content["run_id"],
                                                         "wait_s": 60})
            if (done.structured_content or {}).get("status") != "completed":
                raise RuntimeError(f"{'solve' if one_call else 'resume'}: {done.content}")


def _cpu_of(pid: int, fn: Callable[[], None], runs: int) -> tuple[float, float]:
    """CPU ms and wall ms a run of the server `pid` while fn() sends `runs` runs."""
    cpu0, t0 = task_cpu_seconds(pid), time.perf_counter()
    fn()
    return (task_cpu_seconds(pid) - cpu0) * 1e3 / runs, (time.perf_counter() - t0) * 1e3 / runs


def server_cpu(served: dict[str, Served], runs: int, rounds: int) -> dict[str, Any]:
    cpu: dict[str, list[float]] = {f"{s}_{t}": [] for s in SIDES for t in ("v1", "mcp", "mcp_solve")}
    wall: dict[str, list[float]] = {k: [] for k in cpu}
    https = {s: httpx.Client(base_url=served[s].root, timeout=60) for s in SIDES}
    try:
        for s in SIDES:  # warm-up: lazy imports, connections, SQLite pages
            for _ in range(20):
                _v1_run(https[s])
            anyio.run(_mcp_runs, served[s].url, 10)
            anyio.run(_mcp_runs, served[s].url, 10, True)
        for r in range(rounds):
            for s in (SIDES if r % 2 == 0 else SIDES[::-1]):
                pid, http, url = served[s].proc.pid, https[s], served[s].url
                c, w = _cpu_of(pid, partial(_v1_runs, http, runs), runs)
                cpu[f"{s}_v1"].append(c)
                wall[f"{s}_v1"].append(w)
                c, w = _cpu_of(pid, partial(anyio.run, _mcp_runs, url, runs), runs)
                cpu[f"{s}_mcp"].append(c)
                wall[f"{s}_mcp"].append(w)
                c, w = _cpu_of(pid, partial(anyio.run, _mcp_runs, url, runs, True), runs)
                cpu[f"{s}_mcp_solve"].append(c)
                wall[f"{s}_mcp_solve"].append(w)
    finally:
        for h in https.values():
            h.close()
    return {"cpu_ms_per_run": cpu, "wall_ms_per_run": wall,
            "median_cpu_ms": {k: statistics.median(v) for k, v in cpu.items()},
            "median_wall_ms": {k: statistics.median(v) for k, v in wall.items()},
            "rss_mib": {s: status_kib(served[s].proc.pid, "VmRSS") / 1024 for s in SIDES},
            "c_parts": {s: served[s].c_parts for s in SIDES},
            "listen_s": {s: served[s].listen_s for s in SIDES},
            "listen_cpu_s": {s: served[s].listen_cpu_s for s in SIDES}}


# -- 4. p99 beyond workers at 10 clients -------------------------------------------------------------------------
def load_level(server: Served, concurrency: int, runs: int, transport: str, ramp_s: float = LOAD_RAMP_S
               ) -> dict[str, Any]:
    pid = server.proc.pid
    marks: dict[str, float] = {}

    def on_start() -> None:
        marks["cpu"], marks["began"] = task_cpu_seconds(pid), time.time()

    # the first runs spread over `ramp_s` (one chain's length), as 10 independent clients start (since 2026-12-07)
    if transport == "mcp":
        out = run_client(server.url, concurrency, runs, 90.0, on_start, ramp_s=ramp_s)
    else:
        out = run_client(server.root, concurrency, runs, 90.0, on_start, ("bench.openai_client", "load", "--root"),
                         ramp_s)
    lat = out["latency_s"]
    beyond = summarise([(x - WORKER_PATH_S) * 1e3 for x in lat]) if lat else None
    in_runs = in_run_beyond_calls_ms(server.db, marks["began"], time.time())  # the clients' warm-up runs left out
    inside = summarise(in_runs) if in_runs else None
    return {"concurrency": concurrency, "completed": out["completed"], "errors": out["errors"],
            "runs_s": out["completed"] / out["wall_s"] if out["wall_s"] > 0 else 0.0,
            "beyond_workers_ms": beyond.as_dict() if beyond else None,
            "in_run_beyond_calls_ms": inside.as_dict() if inside else None,
            "server_cpu_ms_per_run": (task_cpu_seconds(pid) - marks["cpu"]) * 1e3 / max(out["completed"], 1)}


def in_run_beyond_calls_ms(db: Path, since: float, until: float) -> list[float]:
    """From the side's own trace: each run created in [since, until], from its first worker call's start to its end,
    less the worker calls the server timed (attempts.latency_s, which holds the worker's own queueing and our
    reading of its answer): the engine's share of the tail, apart from the HTTP in front of it (and, over MCP, the
    client's turn between plan_workflow and resume), the client and the workers' server. bench.load.server_side's
    engine gaps measure the same through a Store, but opening one would migrate the before side's database under
    its running server: hence a read-only query."""
    import sqlite3

    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        rows = con.execute("SELECT r.updated_at - MIN(a.started_at) - SUM(a.latency_s) FROM runs r "
                           "JOIN attempts a ON a.run_id = r.id WHERE r.created_at BETWEEN ? AND ? "
                           "AND r.status = 'completed' GROUP BY r.id", (since, until)).fetchall()
    return [row[0] * 1e3 for row in rows]


def load(served: dict[str, Served], concurrency: int, runs: int, rounds: int, ramp_s: float = LOAD_RAMP_S
         ) -> dict[str, Any]:
    levels: dict[str, list[dict[str, Any]]] = {f"{s}_{t}": [] for s in SIDES for t in ("v1", "mcp")}
    for s in SIDES:  # warm-up: the chain's first runs
        for t in ("mcp", "v1"):
            load_level(served[s], 2, 4, t)
    for r in range(rounds):
        for s in (SIDES if r % 2 == 0 else SIDES[::-1]):
            for t in ("mcp", "v1"):
                levels[f"{s}_{t}"].append(load_level(served[s], concurrency, runs, t, ramp_s))
    return {"levels": levels, "p99_ms": {k: statistics.median(lv["beyond_workers_ms"]["p99"] for lv in v)
                                         for k, v in levels.items()},
            "p50_ms": {k: statistics.median(lv["beyond_workers_ms"]["median"] for lv in v)
                       for k, v in levels.items()},
            "in_run_p99_ms": {k: statistics.median([lv["in_run_beyond_calls_ms"]["p99"] for lv in v
                                                    if lv["in_run_beyond_calls_ms"]] or [float("nan")])
                              for k, v in levels.items()},
            "errors": {k: sum(sum(lv["errors"].values()) for lv in v) for k, v in levels.items()}}


# -- 2 and 3: in a child process per side ------------------------------------------------------------------------
def run_child(src: Path, what: str, base_url: str, n: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.lean", "--child", what, "--base-url", base_url,
                           "-n", str(n)], cwd=ROOT, env=side_env(src), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} child exited {proc.returncode}: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


async def _child_engine(base_url: str, pairs: int) -> dict[str, Any]:
    """Figure 2 in this process: a 1-step run, a 5-step run and the bare call of the engine's own client."""
    import conductor_mcp
    from conductor_mcp.models import Manifest, RunStatus, Workflow
    from conductor_mcp.runs.engine import Engine, worker_messages
    from conductor_mcp.runs.run_manager import RunManager
    from conductor_mcp.store import Store
    from conductor_mcp.workers.llm import completion_cap, litellm_module
    from conductor_mcp.workers.registry import build_registry

    with tempfile.TemporaryDirectory(prefix="bench-lean-engine-") as tmp:
        registry = build_registry(Manifest(workers=worker_specs(base_url, ("strong",))), "bench")
        engine = Engine(registry, Store(Path(tmp) / "traces.db"))
        spec = registry.spec("strong")
        messages = worker_messages(TASK, Workflow.model_validate(ONE_STEP), 0, {})
        endpoint_of = getattr(engine.pool, "endpoint", None)  # the version before has only litellm
        target = endpoint_of("strong") if endpoint_of is not None else None
        llm: Any = litellm_module() if target is None else None
        channel: Any = None
        if target is not None:  # the engine's own channel class: the very request code its steps send through
            from conductor_mcp.workers.openai_http import Channel
            channel = Channel(target.base_url, "none")

        async def bare() -> None:
            if target is None:
                response = await llm.acompletion(model=spec.model, messages=messages, api_base=spec.api_base,
                                                 api_key="none", max_tokens=completion_cap(spec),
                                                 timeout=spec.timeout_s, max_retries=0, num_retries=0)
                text = response.choices[0].message.content
            else:
                r = await channel.post({"model": target.model, "messages": messages,
                                        "max_tokens": completion_cap(spec)}, spec.timeout_s)
                text = r.json()["choices"][0]["message"]["content"]
            if not text:
                raise RuntimeError("bare call returned no text")

        manager = RunManager(engine=engine)

        async def run(workflow: dict[str, Any] = ONE_STEP) -> None:  # as the servers run one: solve, then wait
            handle = await manager.solve(TASK, workflow=workflow)
            await manager.wait(handle, None)
            done = getattr(handle, "final", None) or manager.get(handle.run_id)  # as /v1 reads it on each side
            if done.status != RunStatus.COMPLETED:
                raise RuntimeError(f"run ended {done.status}: {done.error}")

        calls: dict[str, Callable[[], Awaitable[None]]] = {"run": run, "bare": bare, "chain": partial(run, CHAIN)}
        samples: dict[str, list[float]] = {f"{k}_{u}": [] for k in calls for u in ("cpu", "wall")}
        async with manager.running():
            for _ in range(30):
                for call in calls.values():
                    await call()
            for i in range(pairs):
                order = list(calls)[i % 3:] + list(calls)[:i % 3]  # each first in turn
                for what in order:
                    c0, t0 = time.process_time(), time.perf_counter()
                    await calls[what]()
                    samples[f"{what}_wall"].append((time.perf_counter() - t0) * 1e3)
                    samples[f"{what}_cpu"].append((time.process_time() - c0) * 1e3)
        if channel is not None:
            await channel.aclose()
        if hasattr(engine.pool, "aclose"):
            await engine.pool.aclose()
        engine.store.close()
    return {"imported": conductor_mcp.__file__, "client": "litellm" if llm is not None else "httpx", **samples}


async def _child_parallel(base_url: str, repeats: int) -> dict[str, Any]:
    import conductor_mcp
    from conductor_mcp.models import Manifest, RunStatus
    from conductor_mcp.runs.engine import Engine
    from conductor_mcp.runs.run_manager import RunManager
    from conductor_mcp.store import Store
    from conductor_mcp.workers.registry import build_registry

    with tempfile.TemporaryDirectory(prefix="bench-lean-parallel-") as tmp:
        engine = Engine(build_registry(Manifest(workers=worker_specs(base_url)), "bench"),
                        Store(Path(tmp) / "traces.db"))

        async def one() -> float:
            planned = await engine.plan(TASK, workflow=PARALLEL)
            started = time.perf_counter()
            done = await RunManager(engine=engine).drive(planned.id)
            if done.status != RunStatus.COMPLETED:
                raise RuntimeError(f"run ended {done.status}: {done.error}")
            return time.perf_counter() - started

        await one()  # warm-up: imports, the clients' connections
        walls = [await one() for _ in range(repeats)]
        engine.store.close()
    return {"imported": conductor_mcp.__file__, "wall_s": walls}


def engine_overhead(srcs: dict[str, Path], base_url: str, pairs: int, chunks: int) -> dict[str, Any]:
    raw: dict[str, dict[str, list[float]]] = {s: {} for s in SIDES}
    clients: dict[str, str] = {}
    for c in range(chunks):
        for s in (SIDES if c % 2 == 0 else SIDES[::-1]):
            out = run_child(srcs[s], "engine", base_url, pairs)
            clients[s] = out.pop("client")
            out.pop("imported")
            for k, v in out.items():
                raw[s].setdefault(k, []).extend(v)
    result: dict[str, Any] = {"client": clients}
    for s in SIDES:
        cpu = raw[s]
        # a step beyond the first: a 5-step run less a 1-step run and 4 bare calls, over 4 (per-run work cancels)
        result[f"{s}_step_overhead_cpu_ms"] = summarise(
            [(c - r - (len(CHAIN["steps"]) - 1) * b) / (len(CHAIN["steps"]) - 1)
             for c, r, b in zip(cpu["chain_cpu"], cpu["run_cpu"], cpu["bare_cpu"], strict=True)]).as_dict()
        result[f"{s}_chain_cpu_ms"] = summarise(cpu["chain_cpu"]).as_dict()
        for unit in ("cpu", "wall"):
            diff = [a - b for a, b in zip(raw[s][f"run_{unit}"], raw[s][f"bare_{unit}"], strict=True)]
            result[f"{s}_overhead_{unit}_ms"] = summarise(diff).as_dict()
            result[f"{s}_run_{unit}_ms"] = summarise(raw[s][f"run_{unit}"]).as_dict()
            result[f"{s}_bare_{unit}_ms"] = summarise(raw[s][f"bare_{unit}"]).as_dict()
    return result


def parallel(srcs: dict[str, Path], base_url: str, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in SIDES:
        walls = run_child(srcs[s], "parallel", base_url, repeats)["wall_s"]
        out[s] = {"efficiency": summarise([2 * PARALLEL_STEP_S / w for w in walls]).as_dict(),
                  "wall_ms": summarise([w * 1e3 for w in walls]).as_dict()}
    return out


# -- report -------------------------------------------------------------------------------------------------------
def _load_avg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def markdown(res: dict[str, Any]) -> list[str]:
    cpu, eng, par, ld = res["server_cpu"]["median_cpu_ms"], res["engine"], res["parallel"], res["load"]
    t = TARGETS

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    rows = [("Server CPU per one-step run, /v1 (ms)", cpu["before_v1"], cpu["after_v1"], f"≤ {t['server_cpu_ms']:g}",
             met(cpu["after_v1"] <= t["server_cpu_ms"])),
            ("Server CPU per one-step run, MCP plan_workflow + resume (ms)", cpu["before_mcp"], cpu["after_mcp"],
             f"≤ {t['server_cpu_ms']:g}", met(cpu["after_mcp"] <= t["server_cpu_ms"]))]
    if "before_mcp_solve" in cpu:  # measured since 2026-12-07 (lean.json files before lack it)
        rows.append(("Server CPU per one-step run, MCP solve, one call (single:strong, as /v1's) (ms)",
                     cpu["before_mcp_solve"], cpu["after_mcp_solve"], f"≤ {t['server_cpu_ms']:g}",
                     met(cpu["after_mcp_solve"] <= t["server_cpu_ms"])))
    for tr, label in (("v1", "/v1"), ("mcp", "MCP plan + resume"), ("mcp_solve", "MCP solve")):
        if f"before_{tr}" not in cpu:
            continue
        b, a = 1e3 / cpu[f"before_{tr}"], 1e3 / cpu[f"after_{tr}"]
        rows.append((f"Runs/s per server core, {label} (1000 / CPU ms)", b, a,
                     f"≥ 3 × before ({3 * b:.0f})", met(a >= t["runs_per_core_ratio"] * b)))
    eb, ea = eng["before_overhead_cpu_ms"]["median"], eng["after_overhead_cpu_ms"]["median"]
    wb, wa = eng["before_overhead_wall_ms"]["median"], eng["after_overhead_wall_ms"]["median"]
    rows.append(("Engine overhead a step, CPU, over its own client (ms)", eb, ea, f"< {t['engine_overhead_ms']:g}",
                 met(ea < t["engine_overhead_ms"])))
    rows.append(("Engine overhead a step, wall, over its own client (ms)", wb, wa, f"< {t['engine_overhead_ms']:g}",
                 met(wa < t["engine_overhead_ms"])))
    sb, sa = eng["before_step_overhead_cpu_ms"]["median"], eng["after_step_overhead_cpu_ms"]["median"]
    rows.append(("Engine overhead a step beyond a run's first (5-step run), CPU (ms)", sb, sa,
                 f"< {t['engine_overhead_ms']:g}", met(sa < t["engine_overhead_ms"])))
    pb, pa = par["before"]["efficiency"]["median"], par["after"]["efficiency"]["median"]
    rows.append(("Parallel efficiency (figure 3)", pb, pa, f"≥ {t['parallel_efficiency']:g}",
                 met(pa >= t["parallel_efficiency"])))
    for tr in ("v1", "mcp"):
        b, a = ld["p99_ms"][f"before_{tr}"], ld["p99_ms"][f"after_{tr}"]
        rows.append((f"p99 beyond workers at 10 clients, {'/v1' if tr == 'v1' else 'MCP'} (ms)", b, a,
                     f"< {t['p99_ms']:g}", met(a < t["p99_ms"])))
    for tr in ("v1", "mcp") if "in_run_p99_ms" in ld else ():  # measured since 2026-12-07
        b, a = ld["in_run_p99_ms"][f"before_{tr}"], ld["in_run_p99_ms"][f"after_{tr}"]
        rows.append((f"… of which inside the run, beyond its worker calls (trace), {'/v1' if tr == 'v1' else 'MCP'}"
                     " (ms)", b, a, "(its share)", ""))
    lines = ["| measure | before | after | after / before | target | |", "|---|---:|---:|---:|---|---|"]
    for name, b, a, target, verdict in rows:
        digits = 3 if "efficiency" in name else 2
        lines.append(f"| {name} | {b:.{digits}f} | {a:.{digits}f} | {a / b:.2f} | {target} | {verdict} |")
    srv = res["server_cpu"]
    lines += [
        "",
        f"Before: {res['before']} (`{res['imported']['before']}`); after: this tree (`{res['imported']['after']}`); "
        f"engine clients: before {eng['client']['before']}, after {eng['client']['after']}. "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average (1/5/15 min) at the "
        f"start {res['load_start']}, at the end {res['load_end']}; {res['seconds']:.0f} s in all.",
        f"Server CPU: {srv['rounds']} rounds × {srv['runs']} sequential runs a side and transport; per-round ms: "
        + "; ".join(f"{k} " + ", ".join(f"{x:.2f}" for x in v) for k, v in srv["cpu_ms_per_run"].items())
        + ". Request wall ms (median): " + ", ".join(f"{k} {v:.2f}" for k, v in srv["median_wall_ms"].items())
        + ". Server start (spawn to listening; CPU): " + ", ".join(
            f"{s} {srv['listen_s'][s]:.2f} s ({srv['listen_cpu_s'][s]:.2f} s CPU)" for s in SIDES)
        + "; RSS after the runs: " + ", ".join(f"{s} {srv['rss_mib'][s]:.0f} MiB" for s in SIDES)
        + "; C parts loaded (uvloop, httptools): " + ", ".join(
            f"{s} {' + '.join(srv.get('c_parts', {}).get(s) or ['none'])}" for s in SIDES) + ".",
        f"Engine: {eng['pairs']} pairs × {eng['chunks']} children a side; run CPU before "
        f"{eng['before_run_cpu_ms']['median']:.2f} ms, after {eng['after_run_cpu_ms']['median']:.2f} ms; bare call "
        f"CPU before {eng['before_bare_cpu_ms']['median']:.2f} ms, after {eng['after_bare_cpu_ms']['median']:.2f} ms; "
        f"overhead p99 CPU before {eng['before_overhead_cpu_ms']['p99']:.2f}, after "
        f"{eng['after_overhead_cpu_ms']['p99']:.2f} ms; a 5-step run's CPU before "
        f"{eng['before_chain_cpu_ms']['median']:.2f} ms, after {eng['after_chain_cpu_ms']['median']:.2f} ms.",
        f"Parallel: {par['after']['efficiency']['n']} runs a side; execute wall median before "
        f"{par['before']['wall_ms']['median']:.1f} ms, after {par['after']['wall_ms']['median']:.1f} ms.",
        f"Load: {ld['rounds']} rounds × {ld['runs']} runs at c={ld['concurrency']} a side and transport (3-step "
        "chain, 50 ms workers); p50 beyond workers: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ld["p50_ms"].items())
        + "; runs/s: " + ", ".join(f"{k} {statistics.median(lv['runs_s'] for lv in v):.1f}"
                                   for k, v in ld["levels"].items())
        + "; server CPU ms a 3-step run: " + ", ".join(
            f"{k} {statistics.median(lv['server_cpu_ms_per_run'] for lv in v):.2f}" for k, v in ld["levels"].items())
        + f"; errors: {ld['errors']}.",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help="the commit to compare with")
    parser.add_argument("--before-src", type=Path, help="a src folder to compare with instead (one change at a time)")
    parser.add_argument("--parts", default="cpu,load,engine,parallel", help="which measures (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="fewer runs: a smoke test, not figures")
    parser.add_argument("--ramp-s", type=float, default=LOAD_RAMP_S,
                        help="load: the 10 sessions' first runs spread over this long (0: all at once)")
    parser.add_argument("--child", choices=("engine", "parallel"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = _child_engine if args.child == "engine" else _child_parallel
        print(json.dumps(anyio.run(child, args.base_url, args.n, backend="asyncio")))
        return 0
    q = args.quick
    runs, rounds = (20, 2) if q else (50, 10)
    pairs, chunks = (50, 1) if q else (60, 10)  # many children: one side's processes differ more than its runs
    repeats = 3 if q else 15
    load_runs, load_rounds = (40, 1) if q else (200, 3)
    started, load_start = time.time(), _load_avg()
    OUT_DIR.mkdir(exist_ok=True)
    parts = set(args.parts.split(","))
    cpu: dict[str, Any] = {}
    levels: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    par: dict[str, Any] = {}
    with ExitStack() as stack:
        before = args.before_src or stack.enter_context(before_tree(args.before))
        srcs = {"before": before.resolve(), "after": ROOT / "src"}
        imported = {s: imported_from(srcs[s]) for s in SIDES}
        zero = stack.enter_context(ScriptedProcess(latency_ms=0))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-lean-")))
        if "cpu" in parts:
            served = {}
            for s in SIDES:
                served[s] = Served(srcs[s], write_manifest(tmp / f"{s}0.yaml", zero.base_url), tmp / f"{s}0.db",
                                   OUT_DIR / f"lean_server_{s}.txt")
                stack.callback(served[s].stop)
            cpu = {**server_cpu(served, runs, rounds), "runs": runs, "rounds": rounds}
            for s in SIDES:
                served[s].stop()
        if "load" in parts:
            fifty = stack.enter_context(ScriptedProcess(latency_ms=50))
            loaded = {}
            for s in SIDES:
                loaded[s] = Served(srcs[s], write_manifest(tmp / f"{s}50.yaml", fifty.base_url), tmp / f"{s}50.db",
                                   OUT_DIR / f"lean_load_server_{s}.txt")
                stack.callback(loaded[s].stop)
            levels = {**load(loaded, 10, load_runs, load_rounds, args.ramp_s), "runs": load_runs,
                      "rounds": load_rounds, "concurrency": 10, "ramp_s": args.ramp_s}
            for s in SIDES:
                loaded[s].stop()
        if "engine" in parts:
            engine = {**engine_overhead(srcs, zero.base_url, pairs, chunks), "pairs": pairs, "chunks": chunks}
        if "parallel" in parts:
            slow = stack.enter_context(ScriptedProcess(latency_ms=PARALLEL_STEP_S * 1000))
            par = parallel(srcs, slow.base_url, repeats)
    res = {"before": str(args.before_src) if args.before_src else args.before, "imported": imported, "quick": q,
           "server_cpu": cpu, "engine": engine,
           "parallel": par, "load": levels, "targets": TARGETS, "load_start": load_start, "load_end": _load_avg(),
           "seconds": time.time() - started, "started": started}
    res["markdown"] = markdown(res) if parts >= {"cpu", "load", "engine", "parallel"} else [
        json.dumps({"server_cpu_ms": cpu.get("median_cpu_ms"), "p99_ms": levels.get("p99_ms"),
                    "engine_overhead_cpu_ms": {s: engine[f"{s}_overhead_cpu_ms"]["median"] for s in SIDES} if engine
                    else None, "parallel": {s: par[s]["efficiency"]["median"] for s in SIDES} if par else None})]
    out = OUT_JSON if parts >= {"cpu", "load", "engine", "parallel"} and not args.before_src else \
        OUT_DIR / "lean_partial.json"  # a partial or one-change comparison leaves the full figures alone
    out.write_text(json.dumps(res, indent=1))
    print("\n".join(res["markdown"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
