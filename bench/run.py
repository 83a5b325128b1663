"""Run the benchmarks and write BENCHMARKS.md and bench/results.json.

    python -m bench.run            # every figure, full repetitions (a few minutes on 2 cores)
    python -m bench.run --quick    # fewer repetitions
    python -m bench.run --only 2,4 # some figures; the others keep their previous results
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

# before anything imports litellm: its price list from the package, not the network
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from . import cold_start, engine_overhead, gpu, load, openai_load, parallel, planning, report, tokens
from .figures import Figure, failed


@dataclass(frozen=True)
class Bench:
    name: str
    target: str
    how: str
    full: Callable[[], Figure]
    quick: Callable[[], Figure]


BENCHES: dict[int, Bench] = {
    1: Bench("Cold start", "< 1 s", "spawn to tools/list over stdio",
             lambda: cold_start.measure(7), lambda: cold_start.measure(3)),
    2: Bench("Engine overhead per step", "median < 1 ms", "1-step run vs direct litellm",
             lambda: engine_overhead.measure(200, warmup=30), lambda: engine_overhead.measure(60, warmup=10)),
    3: Bench("Parallel efficiency", "≥ 0.95", "4 × 200 ms + aggregator",
             lambda: parallel.measure(5), lambda: parallel.measure(3)),
    4: Bench("Load over streamable HTTP", "—", "plan_workflow + resume at rising concurrency",
             lambda: load.measure([1, 10, 50, 200], 20), lambda: load.measure([1, 10, 50, 200], 10)),
    5: Bench("Planning (GGUF)", "5-step plan < 4 s", "GGUFPlanner cold, reused, reset",
             lambda: planning.measure(6, 2, 3, 300), lambda: planning.measure(4, 1, 2, 180)),
    6: Bench("Tokens per task", "—", "conductor vs moa vs single",
             lambda: tokens.measure(20, 300), lambda: tokens.measure(5, 120)),
    7: Bench("GPU", "—", "from CONDUCTOR_BENCH_GPU_JSON", gpu.measure, gpu.measure),
    8: Bench("OpenAI-compatible endpoint", "—", "/v1 vs MCP solve; load on /v1/chat/completions",
             lambda: openai_load.measure(40, [1, 10, 50], 20), lambda: openai_load.measure(15, [1, 10, 50], 10)),
}


def parse_only(text: str | None) -> list[int]:
    if not text:
        return sorted(BENCHES)
    keys = sorted({int(k) for k in text.replace(" ", "").split(",") if k})
    unknown = [k for k in keys if k not in BENCHES]
    if unknown:
        raise SystemExit(f"--only: no figure {unknown}; figures are {sorted(BENCHES)}")
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (noisier figures)")
    parser.add_argument("--only", metavar="N,M", help="run only these figures (1-8)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    mode = "quick" if args.quick else "full"
    started = time.perf_counter()
    figures: list[Figure] = []
    for key in parse_only(args.only):
        bench = BENCHES[key]
        print(f"[{key}] {bench.name} ({mode}) ...", flush=True)
        t0 = time.perf_counter()
        load_before = os.getloadavg()[0]
        try:
            figure = (bench.quick if args.quick else bench.full)()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            logging.exception("figure %d failed", key)
            figure = failed(key, bench.name, bench.target, bench.how, exc)
        # the machine may be shared (a test suite): the load average says how noisy a figure may be
        figure.data["loadavg_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
        figure.data["elapsed_s"] = time.perf_counter() - t0
        figures.append(figure)
        met = "" if figure.met is None else (" [target met]" if figure.met else " [target NOT met]")
        print(f"[{key}] {figure.value}{met}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        for note in figure.notes:
            print(f"    {note}", flush=True)
    elapsed = time.perf_counter() - started
    report.write(figures, mode, elapsed)
    print(f"wrote {report.REPORT.name} and bench/{report.RESULTS.name} in {elapsed:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
