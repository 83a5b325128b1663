"""Figure 8: the OpenAI-compatible endpoint. What `/v1/chat/completions` adds over MCP `solve` for the same run,
and figure 4's load levels on `/v1/chat/completions`.

Three processes, as in figure 4: `mcp-conductor serve --transport http`, the scripted workers (50 ms a call),
and the client (bench.openai_client). The same 1-step run (`single:strong`) is timed through MCP `solve`, a
non-streamed and a streamed completion, interleaved on warm connections; then load levels of figure 4's 3-step
chain (sent as the request's `conductor.workflow`), one HTTP connection per concurrent client, each level run over
MCP as figure 4 runs it just before, so that both meet the same machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .figures import Figure
from .load import WORKER_MS, WORKER_PATH_S, McpServer, level
from .report import _cpu_model
from .scripted import ROOT, ScriptedProcess, bench_env, write_manifest
from .stats import summarise

CLIENT = ("bench.openai_client", "load", "--root")
ONE_STEP_S = WORKER_MS / 1000  # a 1-step run's own worker time


def pairs(root: str, n: int, warmup: int) -> dict[str, list[float]]:
    proc = subprocess.run([sys.executable, "-m", "bench.openai_client", "pairs", "--root", root, "-n", str(n),
                           "--warmup", str(warmup)], cwd=ROOT, env=bench_env(), capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"pairs client exited {proc.returncode}: {proc.stderr[-2000:]}")
    result: dict[str, list[float]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _ms(summary: dict[str, Any] | None, key: str = "median") -> str:
    return "n/a" if summary is None else f"{summary[key] * 1e3:.0f} ms"


def measure(n_pairs: int, concurrencies: list[int], runs_for: int, timeout_s: float = 90.0) -> Figure:
    with ScriptedProcess(latency_ms=WORKER_MS) as workers, tempfile.TemporaryDirectory(prefix="bench-v1-") as tmp:
        manifest = write_manifest(Path(tmp) / "workers.yaml", workers.base_url, max_concurrency=1024)
        server = McpServer(manifest, Path(tmp) / "traces.db")
        root = server.url.removesuffix("/mcp")
        try:
            times = pairs(root, n_pairs, warmup=5)
            level(server, workers, 2, 4, timeout_s, CLIENT, root)  # warm-up: the chain's first runs
            level(server, workers, 2, 4, timeout_s)  # and over MCP
            levels, mcp_levels = [], []
            for c in concurrencies:  # each level over MCP too, in the same minutes: the machine is shared
                mcp_levels.append(level(server, workers, c, max(runs_for, 2 * c), timeout_s))
                levels.append(level(server, workers, c, max(runs_for, 2 * c), timeout_s, CLIENT, root))
        finally:
            server.stop()
    mcp, v1, stream = (summarise(times[k]) for k in ("mcp_solve", "v1", "v1_stream"))
    added = summarise([a - b for a, b in zip(times["v1"], times["mcp_solve"], strict=True)])
    added_stream = summarise([a - b for a, b in zip(times["v1_stream"], times["mcp_solve"], strict=True)])
    errors = sum(sum(lv["errors"].values()) for lv in levels)
    value = (f"over MCP solve, same 1-step run: {added.median * 1e3:+.1f} ms median (streamed "
             f"{added_stream.median * 1e3:+.1f} ms); /v1 load: " + "; ".join(
                 f"c={lv['concurrency']}: {lv['throughput_runs_s']:.1f}/s p50 {_ms(lv['beyond_workers_s'])} p99 "
                 f"{_ms(lv['beyond_workers_s'], 'p99')} (MCP {_ms(m['beyond_workers_s'], 'p99')})"
                 for lv, m in zip(levels, mcp_levels, strict=True)) + f"; errors {errors}")
    notes = [
        f"Endpoint vs MCP solve, {mcp.n} interleaved triples of the same 1-step run (single:strong, one 50 ms "
        f"worker call): MCP solve p50 {mcp.median * 1e3:.1f} ms ({mcp.spread(1e3, 1)}), /v1 p50 "
        f"{v1.median * 1e3:.1f} ms ({v1.spread(1e3, 1)}), /v1 streamed to [DONE] p50 {stream.median * 1e3:.1f} ms "
        f"({stream.spread(1e3, 1)}); paired difference /v1 − MCP p50 {added.median * 1e3:+.1f} ms "
        f"({added.spread(1e3, 1)}), streamed − MCP p50 {added_stream.median * 1e3:+.1f} ms "
        f"({added_stream.spread(1e3, 1)}). Beyond the worker: MCP {(mcp.median - ONE_STEP_S) * 1e3:.1f} ms, "
        f"/v1 {(v1.median - ONE_STEP_S) * 1e3:.1f} ms.",
        "Load levels on /v1/chat/completions: " + " | ".join(
            f"c={lv['concurrency']}: {lv['throughput_runs_s']:.1f} runs/s, beyond-workers p50 "
            f"{_ms(lv['beyond_workers_s'])} p99 {_ms(lv['beyond_workers_s'], 'p99')} (server-side: worker call "
            f"p50 {_ms(lv['server_side']['worker_call_s'])}, engine gaps p50 {_ms(lv['server_side']['engine_gaps_s'])}"
            f", plan-to-first-step p50 {_ms(lv['server_side']['queued_s'])}), {lv['completed']}/{lv['runs_asked']} "
            f"ok, errors {sum(lv['errors'].values())} {lv['errors'] or ''}, server CPU "
            f"{lv['server_cpu_ms_per_run']:.1f} ms/run ({lv['server_cpu_cores']:.2f} cores), client "
            f"{lv['client_cpu_cores']:.2f} cores" for lv in levels) + ".",
        "The same levels over MCP (plan_workflow + resume, one session per client), run just before each /v1 "
        "level: " + " | ".join(
            f"c={m['concurrency']}: {m['throughput_runs_s']:.1f} runs/s, beyond-workers p50 "
            f"{_ms(m['beyond_workers_s'])} p99 {_ms(m['beyond_workers_s'], 'p99')}, errors "
            f"{sum(m['errors'].values())}, server CPU {m['server_cpu_ms_per_run']:.1f} ms/run" for m in mcp_levels)
        + ".",
    ]
    return Figure(
        8, "OpenAI-compatible endpoint (/v1/chat/completions)", value, "no target", None,
        f"server, scripted workers (50 ms) and client in 3 processes; {n_pairs} interleaved triples after 5 "
        "warm-ups: MCP solve(strategy=single:strong), POST /v1/chat/completions model=strong, the same streamed; "
        "load: figure 4's 3-step chain as conductor.workflow, one HTTP connection per client (one run on it "
        f"before the clock; the client's heap frozen), max({runs_for}, "
        f"2×c) runs a level (deadline {timeout_s:.0f} s), each level also over MCP just before; beyond workers = "
        f"request time − 150 ms; on {os.cpu_count()} CPUs ({_cpu_model()})",
        {"pairs": {k: summarise(v).as_dict() for k, v in times.items()}, "added": added.as_dict(),
         "added_stream": added_stream.as_dict(), "levels": levels, "mcp_levels": mcp_levels, "worker_ms": WORKER_MS,
         "chain_worker_path_s": WORKER_PATH_S},
        notes,
    )
