"""Figure 4: load over streamable HTTP, three processes: the MCP server, the scripted workers, the client.

The server is `mcp-conductor serve --transport http` as a host would run it, with a manifest whose
workers are the scripted server (50 ms a call) in its own process. The load client (bench.load_client)
is a third process. Levels run a fixed number of runs each, with a deadline, so the figure is bounded in
time; the last level is repeated to see whether the server's memory stays flat.
"""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conductor_mcp.models import RunStatus
from conductor_mcp.store import Store

from .figures import Figure
from .load_client import START
from .procfs import cpu_seconds, status_kib
from .profiles import OUT_DIR
from .scripted import ROOT, ScriptedProcess, bench_env, write_manifest
from .stacks import by_entry_package, by_leaf_function, by_leaf_package, by_project_function, parse, shares
from .stats import summarise

WORKER_MS = 50.0
WORKER_PATH_S = 3 * WORKER_MS / 1000  # the chain's own critical path
CONSOLE_SCRIPT = Path(sys.executable).parent / "mcp-conductor"
PYSPY = Path(sys.executable).parent / "py-spy"
PYSPY_RAW = OUT_DIR / "server_pyspy.txt"
SERVER_LOG = OUT_DIR / "server_stderr.txt"
# the event loop and the HTTP/MCP plumbing every request passes through: skipped when asking "who asked"
PLUMBING = ("stdlib asyncio", "stdlib threading", "stdlib concurrent", "stdlib selectors", "stdlib contextlib",
            "anyio", "uvicorn", "starlette", "mcp", "sse_starlette", "runpy", "mcp-conductor", "cli")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpServer:
    """`COMMAND serve --transport http` on a free loopback port, its stderr to `log`, listening within `timeout_s`
    (polled every `poll_s`); stopped with SIGINT. `spawned_at`: perf_counter just before the spawn."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, timeout_s: float, poll_s: float) -> None:
        self.port = free_port()
        self._log = log.open("w")
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen([*command, "serve", "--transport", "http", "--host", "127.0.0.1",
                                      "--port", str(self.port)], env=env, stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}; see {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not listen within {timeout_s:.0f} s") from None
                time.sleep(poll_s)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/mcp"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class McpServer(HttpServer):
    """`mcp-conductor serve --transport http` on a free loopback port, stopped with SIGINT on exit."""

    def __init__(self, manifest: Path, db: Path) -> None:
        self.db = db
        env = bench_env()
        env.update(CONDUCTOR_WORKERS=str(manifest), CONDUCTOR_DB=str(db))
        OUT_DIR.mkdir(exist_ok=True)
        super().__init__([str(CONSOLE_SCRIPT)], env, SERVER_LOG, 30, 0.05)


def run_client(url: str, concurrency: int, runs: int, timeout_s: float,
               on_start: Callable[[], None] | None = None, client: tuple[str, ...] = ("bench.load_client", "--url"),
               ramp_s: float = 0.0) -> dict[str, Any]:
    """Run a load client (bench.load_client, or `client`: module and arguments before the URL) in its own
    process; `on_start` is called when its clock starts; `ramp_s`: its sessions' first runs spread over this long."""
    cmd = [sys.executable, "-m", *client, url, "-c", str(concurrency), "-n", str(runs), "--timeout", str(timeout_s)]
    if ramp_s:  # bench.replicas' own client takes no ramp
        cmd += ["--ramp-s", str(ramp_s)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    if first == START and on_start is not None:
        on_start()
    try:
        rest, err = proc.communicate(timeout=timeout_s + 180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode != 0 or first != START:
        raise RuntimeError(f"load client exited {proc.returncode}: {err[-2000:]}")
    result: dict[str, Any] = json.loads(rest.strip().splitlines()[-1])
    return result


def server_side(db: Path, since: float) -> dict[str, Any]:
    """From the trace store: how the server itself saw the runs created since `since` (wall clock).

    worker_call: one attempt as the engine timed it (50 ms scripted latency + litellm + loop delay);
    engine_gaps: a run's first step start to last step end, minus its attempts (scheduling, store);
    queued: plan stored to first step started (resume's round trip and launch)."""
    store = Store(db)
    try:
        runs = [r for r in (store.get_run(found.run_id) for found in store.find_runs(100_000)) if r.created_at >= since]
    finally:
        store.close()
    calls: list[float] = []
    gaps: list[float] = []
    queued: list[float] = []
    for run in runs:
        steps = run.steps
        if run.status != RunStatus.COMPLETED or steps[0].started_at is None or steps[-1].ended_at is None:
            continue
        latencies = [a.latency_s or 0.0 for s in steps for a in s.attempts]
        calls.extend(latencies)
        gaps.append(steps[-1].ended_at - steps[0].started_at - sum(latencies))
        queued.append(steps[0].started_at - run.created_at)
    return {"runs": len(runs), "worker_call_s": summarise(calls).as_dict() if calls else None,
            "engine_gaps_s": summarise(gaps).as_dict() if gaps else None,
            "queued_s": summarise(queued).as_dict() if queued else None}


def level(server: McpServer, workers: ScriptedProcess, concurrency: int, runs: int,
          timeout_s: float, client: tuple[str, ...] = ("bench.load_client", "--url"),
          url: str | None = None) -> dict[str, Any]:
    pid = server.proc.pid
    marks: dict[str, float] = {}

    def on_start() -> None:  # the server side counts the runs from here: the clients' warm-up runs are before
        marks.update(server=cpu_seconds(pid), workers=cpu_seconds(workers.pid), t=time.perf_counter(),
                     since=time.time())

    out = run_client(url or server.url, concurrency, runs, timeout_s, on_start, client)
    span = max(time.perf_counter() - marks["t"], 1e-9)  # the client's window plus closing its sessions
    wall = out["wall_s"]
    lat = out.pop("latency_s")
    plan, resume = out.pop("plan_s"), out.pop("resume_s")
    out.update(
        throughput_runs_s=out["completed"] / wall if wall > 0 else 0.0,
        latency_s=summarise(lat).as_dict() if lat else None,
        beyond_workers_s=summarise([x - WORKER_PATH_S for x in lat]).as_dict() if lat else None,
        plan_workflow_s=summarise(plan).as_dict() if plan else None,
        resume_s=summarise(resume).as_dict() if resume else None,
        # CPU in cores over the measured window: 1.0 is one Python thread flat out
        server_cpu_cores=(cpu_seconds(pid) - marks["server"]) / span,
        server_cpu_ms_per_run=(cpu_seconds(pid) - marks["server"]) * 1e3 / max(out["completed"], 1),
        workers_cpu_cores=(cpu_seconds(workers.pid) - marks["workers"]) / span,
        client_cpu_cores=out["client_cpu_s"] / max(wall, 1e-9),
        server_rss_kib=status_kib(pid, "VmRSS"), server_peak_rss_kib=status_kib(pid, "VmHWM"),
        server_side=server_side(server.db, marks["since"]),
    )
    return out


def profile_level(server: McpServer, concurrency: int, runs: int, timeout_s: float) -> dict[str, Any] | None:
    """One more level with py-spy sampling the server (absent py-spy: no profile)."""
    if not PYSPY.exists() and shutil.which("py-spy") is None:
        return None
    exe = str(PYSPY) if PYSPY.exists() else "py-spy"
    spy = subprocess.Popen([exe, "record", "--pid", str(server.proc.pid), "--rate", "200", "--gil", "--format", "raw",
                            "--full-filenames", "--nolineno", "--output", str(PYSPY_RAW)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let py-spy attach before the load starts
    try:
        run_client(server.url, concurrency, runs, timeout_s)
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            err = b""
    if not PYSPY_RAW.exists():
        return {"error": err.decode(errors="replace")[-500:]}
    stacks = parse(PYSPY_RAW)
    return {"samples": sum(n for _, n in stacks), "concurrency": concurrency,
            "leaf_package": shares(by_leaf_package(stacks)),
            "entry_package": shares(by_entry_package(stacks, PLUMBING)),
            "project_function": shares(by_project_function(stacks)),
            "leaf_function": shares(by_leaf_function(stacks), 10)}


def saturation(levels: list[dict[str, Any]]) -> str:
    """Where throughput stops growing: the first level that gains less than 20% over the one before."""
    for prev, cur in itertools.pairwise(levels):
        if cur["throughput_runs_s"] < 1.2 * prev["throughput_runs_s"]:
            return (f"throughput stops growing between concurrency {prev['concurrency']} "
                    f"({prev['throughput_runs_s']:.1f} runs/s) and {cur['concurrency']} "
                    f"({cur['throughput_runs_s']:.1f} runs/s)")
    last = levels[-1]
    return f"throughput still growing at concurrency {last['concurrency']} ({last['throughput_runs_s']:.1f} runs/s)"


def fmt(rows: list[tuple[str, float]]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in rows)


def _ms(summary: dict[str, Any] | None, key: str = "median") -> str:
    return "n/a" if summary is None else f"{summary[key] * 1e3:.0f} ms"


def _fmt(lv: dict[str, Any]) -> str:
    side = lv["server_side"]
    return (f"c={lv['concurrency']}: {lv['throughput_runs_s']:.1f} runs/s, beyond-workers p50 "
            f"{_ms(lv['beyond_workers_s'])} p99 {_ms(lv['beyond_workers_s'], 'p99')} (plan_workflow p50 "
            f"{_ms(lv['plan_workflow_s'])}; server-side: worker call p50 {_ms(side['worker_call_s'])}, "
            f"engine gaps p50 {_ms(side['engine_gaps_s'])}, plan-to-first-step p50 {_ms(side['queued_s'])}), "
            f"{lv['completed']}/{lv['runs_asked']} ok, errors {sum(lv['errors'].values())}, CPU cores: "
            f"server {lv['server_cpu_cores']:.2f}, client {lv['client_cpu_cores']:.2f}, "
            f"workers {lv['workers_cpu_cores']:.2f}; server CPU {lv['server_cpu_ms_per_run']:.1f} ms/run; "
            f"server RSS {lv['server_rss_kib'] / 1024:.0f} MiB")


def measure(concurrencies: list[int], runs_for: int, rounds_at_top: int = 2, timeout_s: float = 90.0,
            profile: bool = True) -> Figure:
    with ScriptedProcess(latency_ms=WORKER_MS) as workers, tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        manifest = write_manifest(Path(tmp) / "workers.yaml", workers.base_url, max_concurrency=1024)
        server = McpServer(manifest, Path(tmp) / "traces.db")
        try:
            run_client(server.url, 2, 4, timeout_s)  # warm-up: imports, litellm's client, SQLite pages
            levels = []
            plan = [*concurrencies, *[concurrencies[-1]] * (rounds_at_top - 1)]
            for c in plan:
                levels.append(level(server, workers, c, max(runs_for, 2 * c), timeout_s))
            top = [lv for lv in levels if lv["concurrency"] == concurrencies[-1]]
            profiled = profile_level(server, 50, 150, timeout_s) if profile else None
        finally:
            server.stop()
    distinct = levels[:len(concurrencies)]
    best = max(distinct, key=lambda lv: lv["throughput_runs_s"])
    errors = sum(sum(lv["errors"].values()) for lv in levels)
    rss = [lv["server_rss_kib"] / 1024 for lv in top]
    growth_kib = top[-1]["server_rss_kib"] - top[0]["server_rss_kib"] if len(top) > 1 else 0
    peak = max(lv["server_peak_rss_kib"] for lv in levels) / 1024
    value = "; ".join(
        f"c={lv['concurrency']}: {lv['throughput_runs_s']:.1f}/s p50 "
        f"{(lv['beyond_workers_s'] or {}).get('median', float('nan')) * 1e3:.0f} ms p99 "
        f"{(lv['beyond_workers_s'] or {}).get('p99', float('nan')) * 1e3:.0f} ms" for lv in distinct)
    value += f"; errors {errors}; peak RSS {peak:.0f} MiB; RSS after rounds at c={concurrencies[-1]}: " + \
        " → ".join(f"{r:.0f}" for r in rss) + " MiB"
    notes = ["Load levels: " + " | ".join(_fmt(lv) for lv in levels) + ".",
             f"Load: {saturation(distinct)}; best {best['throughput_runs_s']:.1f} runs/s at "
             f"c={best['concurrency']} with the server process at {best['server_cpu_cores']:.2f} cores of CPU "
             f"({best['server_cpu_ms_per_run']:.1f} ms of server CPU per run, so one event loop tops out near "
             f"{1e3 / max(best['server_cpu_ms_per_run'], 1e-9):.0f} runs/s) and the machine's 2 cores shared by "
             "the server, the workers' process and the client.",
             f"Memory: server RSS after the rounds at c={concurrencies[-1]}: "
             + " → ".join(f"{lv['server_rss_kib']} KiB" for lv in top)
             + f" ({growth_kib:+d} KiB over {top[-1]['completed']} more runs); peak (VmHWM) {peak:.0f} MiB."]
    if profiled and "samples" in profiled:
        notes.append(f"Server profile (py-spy, {profiled['samples']} samples at c=50, bench/out/server_pyspy.txt): "
                     f"CPU by innermost package: {fmt(profiled['leaf_package'])}; by the first package below the "
                     f"event loop and MCP/ASGI plumbing: {fmt(profiled['entry_package'])}; charged to project "
                     f"functions: {fmt(profiled['project_function'])} (transports.serve stands for the uvicorn, "
                     "starlette and MCP layers that run under it).")
    elif profiled:
        notes.append(f"Server profile failed: {profiled.get('error')}")
    return Figure(
        4, "Load over streamable HTTP (plan_workflow + resume of a 3-step chain, 50 ms workers)", value,
        "no target; memory flat across rounds", None,
        f"server, scripted workers and load client in 3 processes; one MCP session per concurrent client, "
        f"opened, its tools listed and one run made before the clock, all starting at once; the client's and the "
        f"workers' heaps frozen (gc.freeze); each level runs max({runs_for}, 2×c) runs (deadline {timeout_s:.0f} s); "
        "latency beyond workers = plan_workflow + resume(wait_s=60) time − 150 ms (3 × 50 ms chain); "
        "RSS from /proc/PID/status (VmRSS, VmHWM)",
        {"levels": levels, "profile": profiled, "saturation": saturation(distinct), "worker_ms": WORKER_MS,
         "workflow": "3-step chain: cheap (none) → coder ([0]) → strong ([1])",
         "sessions": "one per concurrent client"},
        notes,
    )
