"""What the bundled conductor writes on a suite, judged the same way for any version of the planner: run it
once with this checkout and once with another on PYTHONPATH (say the version before plans were checked),
and compare. Planning only; nothing is run.

    git worktree add /tmp/before 52ff90e
    PYTHONPATH=/tmp/before/src python -m bench.plans_compare --label before
    python -m bench.plans_compare --label after

Only `GGUFPlanner(path).plan(task, workers, max_steps)` is used, which every version has. Each workflow is
judged from its steps alone: how many; how many cannot reach the answer (the final step does not see them,
directly or through others: paid for, then thrown away); whether a final step that compares or checks
sees nothing; how many instructions copy the old examples' subject (trains, average speeds, capitals,
sorted lists) into a task that has none of it; and which worker answers. Appends one JSON line a run to
bench/out/plans-compare.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import anyio

import conductor_mcp
from conductor_mcp.models import WorkerSpec
from conductor_mcp.planners.gguf import GGUFPlanner
from conductor_mcp.workers.registry import bundled_gguf_path

# the quality benchmark's pool, described as a user would (strongest first)
WORKERS = [WorkerSpec(id="qwen-1.5b", model="openai/a", description="the strongest here, good at code and maths"),
           WorkerSpec(id="qwen-0.5b", model="openai/b", description="fast, fair at simple code"),
           WorkerSpec(id="smollm2-135m", model="openai/c", description="tiny, weak at reasoning")]

EXAMPLE_SUBJECT = re.compile(r"average speed|\btrain\b|capital city|australia|sorted lists?", re.I)
COMPARES = re.compile(r"\b(compare|verify|check|review|fix)\b", re.I)


def reaching(steps: list[dict[str, Any]]) -> set[int]:
    """The steps whose output reaches the last step: the last one and, through access, all it sees."""
    def sees(i: int) -> list[int]:
        access = steps[i].get("access", "none")
        return list(range(i)) if access == "all" else [] if access == "none" else [int(j) for j in access]

    keep, todo = set(), [len(steps) - 1]
    while todo:
        i = todo.pop()
        if i not in keep:
            keep.add(i)
            todo.extend(sees(i))
    return keep


def judge(task: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    last = steps[-1]
    return {"steps": len(steps), "wasted": len(steps) - len(reaching(steps)),
            "blind_compare": len(steps) > 1 and last.get("access", "none") == "none"
            and bool(COMPARES.search(last["instruction"])),
            "copied": sum(1 for s in steps if EXAMPLE_SUBJECT.search(s["instruction"])
                          and not EXAMPLE_SUBJECT.search(task)),
            "final": last["worker"]}


async def measure(tasks: list[str], workers: list[WorkerSpec]) -> dict[str, Any]:
    planner = GGUFPlanner(bundled_gguf_path())
    rows = []
    for task in tasks:
        started = time.perf_counter()
        result = await planner.plan(task, workers, 5)
        steps = [s.model_dump(mode="json") for s in result.workflow.steps]
        rows.append({**judge(task, steps), "source": result.info.source,
                     "seconds": round(time.perf_counter() - started, 2)})
    n = len(rows)
    return {"plans": n, "mean_steps": sum(r["steps"] for r in rows) / n,
            "wasted_steps": sum(r["wasted"] for r in rows), "plans_with_waste": sum(r["wasted"] > 0 for r in rows),
            "blind_compare": sum(r["blind_compare"] for r in rows),
            "copied_instructions": sum(r["copied"] for r in rows),
            "final_workers": dict(Counter(r["final"] for r in rows)),
            "sources": dict(Counter(r["source"] for r in rows)),
            "median_plan_s": sorted(r["seconds"] for r in rows)[n // 2], "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("suite", nargs="?", default=str(Path(__file__).parent.parent / "evals" / "mixed-24.jsonl"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--label", required=True, help="what this run measures, e.g. before or after")
    args = ap.parse_args()
    # the suite is read here, not through its loader: older versions have none
    tasks = [json.loads(line)["task"] for line in Path(args.suite).read_text().splitlines() if line.strip()]
    report = anyio.run(measure, tasks[: args.limit], WORKERS)
    report = {"label": args.label, "code": str(Path(conductor_mcp.__file__).parent), "suite": args.suite, **report}
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    with (out / "plans-compare.jsonl").open("a") as f:
        f.write(json.dumps(report) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
