"""What the bundled conductor writes on a suite, planning only (nothing is run): steps written and kept,
instructions rejected, steps pruned, final workers; with the workers shown under their ids and under
neutral names (worker-0, ...), as the paper's conductor saw them. Prints one JSON object and writes it
to bench/out/plans.json.

    python -m bench.plans [SUITE] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import anyio

from conductor_mcp.evals.grading import load_suite
from conductor_mcp.planners.gguf import GGUFPlanner
from conductor_mcp.workers.registry import bundled_gguf_path

from .plans_compare import WORKERS


async def measure(planner: GGUFPlanner, suite: Path, limit: int | None) -> dict[str, object]:
    kept, written, pruned, sources, finals, rejected, seconds = [], [], 0, Counter[str](), Counter[str](), 0, []
    for task in load_suite(suite)[:limit]:
        result = await planner.plan(task.task, WORKERS, 5)
        info = result.info
        raw = json.loads(info.raw) if info.raw and info.source != "fallback" else None
        written.append(len(raw["steps"]) if raw else 0)
        kept.append(len(result.workflow.steps))
        pruned += sum(1 for r in info.repairs if r.startswith("pruned"))
        rejected += sum(1 for e in info.errors if "instruction" in e)
        sources[info.source] += 1
        finals[result.workflow.steps[-1].worker] += 1
        seconds.append(info.latency_s or 0.0)
    n = len(kept)
    return {"suite": str(suite), "plans": n, "mean_steps_written": sum(written) / n, "mean_steps_kept": sum(kept) / n,
            "plans_pruned": pruned, "instructions_rejected": rejected, "sources": dict(sources),
            "final_workers": dict(finals), "median_plan_s": sorted(seconds)[n // 2]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("suite", nargs="?", default=str(Path(__file__).parent.parent / "evals" / "mixed-24.jsonl"))
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()
    planner = GGUFPlanner(bundled_gguf_path())
    report: dict[str, object] = {}
    for names in ("ids", "neutral"):
        planner.worker_names = names
        report[names] = anyio.run(measure, planner, Path(args.suite), args.limit)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "plans.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
