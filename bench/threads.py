"""Planner threads under load: plan time of the bundled conductor by llama.cpp thread count, on the machine
as it is and beside one process that holds a core, as the server's event loop, a bundled worker or any
other program would. Sets LocalModel's default thread count (local_model.default_threads).

    python -m bench.threads [--plans 5] [--threads 1,2] [--limit 120] [--no-write]

Each setting runs in a fresh process (clean llama.cpp/OpenMP state): the model is loaded, then the busy
process starts (a Python busy loop pinned to the last usable core) and the conductor plans `--plans` tasks
as the engine would: the first evaluates its whole prompt (cold), the rest reuse the prompt's prefix. A
plan is cut at plan_timeout_s (60 s) like any plan, and a setting stops taking new tasks after `--limit`
seconds, so a stalled setting costs minutes, not hours. The section "Planner threads under load" of
BENCHMARKS.md is rewritten with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import anyio

from conductor_mcp.planners.gguf import GGUFPlanner
from conductor_mcp.workers.local_model import default_threads, usable_cores
from conductor_mcp.workers.registry import bundled_gguf_path

from .child import emit, run_rows
from .scripted import ROOT, worker_specs
from .stats import summarise
from .tasks import TASKS

PLAN_TIMEOUT_S = 60.0
SECTION = "## Planner threads under load (python -m bench.threads)"
REPORT = ROOT / "BENCHMARKS.md"


def burner() -> subprocess.Popen[bytes]:
    """A process that holds one core: a busy loop pinned to the last usable core."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.sched_setaffinity(proc.pid, {max(os.sched_getaffinity(0))})
    return proc


async def child(threads: int, busy: bool, plans: int, out: TextIO) -> None:
    planner = GGUFPlanner(bundled_gguf_path(), n_threads=threads)
    planner.plan_timeout_s = PLAN_TIMEOUT_S
    planner.model.load()
    specs = worker_specs("http://127.0.0.1:9/v1")  # never called: planning only reads the descriptions
    load = burner() if busy else None
    try:
        await anyio.sleep(0.3)  # let the busy loop take its core
        for i, task in enumerate(TASKS[:plans]):
            before = os.getloadavg()[0]
            started = time.perf_counter()
            result = await planner.plan(task, specs, 5, True)
            emit(out, {"threads": threads, "busy": busy, "i": i, "wall_s": time.perf_counter() - started,
                       "source": result.info.source, "steps": len(result.workflow.steps),
                       "completion_tokens": result.info.usage.completion_tokens,
                       "cut": any("plan_timeout_s" in n for n in result.info.notes),
                       "load_before": before, "load_after": os.getloadavg()[0]})
    finally:
        if load is not None:
            load.kill()
            load.wait()


def setting(threads: int, busy: bool, plans: int, limit_s: float) -> dict[str, Any]:
    rows, finished = run_rows("bench.threads", ["child", str(threads), str(int(busy)), str(plans)], limit_s)
    cold = [r for r in rows if r["i"] == 0]
    warm = [r for r in rows if r["i"] > 0]
    return {"threads": threads, "busy": busy, "rows": rows, "finished": finished,
            "cold_s": cold[0]["wall_s"] if cold else None, "cold_cut": bool(cold and cold[0]["cut"]),
            "warm": summarise([r["wall_s"] for r in warm]).as_dict() if warm else None,
            "cut": sum(r["cut"] for r in rows), "load": [r["load_before"] for r in rows]}


def _s(value: float | None) -> str:
    return "did not finish" if value is None else f"{value:.1f} s"


def section(results: list[dict[str, Any]], plans: int, limit_s: float) -> str:
    cores = usable_cores()
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {cores} usable cores; the bundled SmolLM2-135M conductor "
             f"planning {plans} benchmark tasks over 3 described workers (5 steps at most, recursion allowed, as the "
             "engine plans) in a fresh process per row. Cold: the first plan, which evaluates the whole prompt; warm: "
             "the others, which reuse its prefix (median and min–max). Busy: one more process holds a core (a busy "
             f"loop pinned to the last core). A plan is cut at {PLAN_TIMEOUT_S:.0f} s (plan_timeout_s) and a row "
             f"stops taking tasks after {limit_s:.0f} s. The machine was shared with other work: the 1-minute load "
             "average before each plan is listed.", "",
             "| threads | beside a busy process | cold plan | warm plans (median, min–max) | plans done | cut | "
             "load avg |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        warm = r["warm"]
        warm_text = "—" if warm is None else f"{warm['median']:.1f} s ({warm['min']:.1f}–{warm['max']:.1f})"
        cold = _s(r["cold_s"]) + (" (cut)" if r["cold_cut"] else "")
        load = ", ".join(f"{x:.1f}" for x in r["load"]) or "—"
        lines.append(f"| {r['threads']} | {'yes' if r['busy'] else 'no'} | {cold} | {warm_text} | "
                     f"{len(r['rows'])}/{plans} | {r['cut']} | {load} |")
    lines += ["", "Per plan (s): " + "; ".join(
        f"{r['threads']} thread(s){' busy' if r['busy'] else ''}: "
        + (", ".join(f"{x['wall_s']:.1f}{'*' if x['cut'] else ''}" for x in r["rows"]) or "none")
        for r in results) + " (* cut at plan_timeout_s).", "", conclusion(), ""]
    return "\n".join(lines)


def conclusion() -> str:
    return (f"LocalModel's default is half the usable cores (local_model.default_threads; {default_threads()} "
            f"here, where it was every core, {usable_cores()}): llama.cpp's threads meet at a barrier every token, so "
            "one thread that loses its core to another process holds up the rest. Half also leaves a core to the "
            "event loop and to a second model instance (the bundled worker). `conductor.n_threads` overrides it.")


def write_section(text: str) -> None:
    """Replace the section in BENCHMARKS.md (up to the next `## ` heading), or append it."""
    report = REPORT.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", report) if pattern.search(report) else report.rstrip("\n") + "\n\n" + text
    REPORT.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        threads, busy, plans, rows_file = int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), Path(sys.argv[5])
        with rows_file.open("w") as out:
            anyio.run(child, threads, busy, plans, out)
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.threads")
    parser.add_argument("--plans", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="thread counts to compare, comma-separated")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds per setting")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    results = []
    for busy in (False, True):
        for threads in (int(t) for t in args.threads.split(",")):
            results.append(setting(threads, busy, args.plans, args.limit))
            r = results[-1]
            sys.stderr.write(f"threads {threads} busy {busy}: cold {_s(r['cold_s'])}, warm "
                             f"{r['warm']['median'] if r['warm'] else None}, {len(r['rows'])} plans, {r['cut']} cut\n")
    text = section(results, args.plans, args.limit)
    print(text)
    print(json.dumps([{k: v for k, v in r.items() if k != "rows"} for r in results]), file=sys.stderr)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
