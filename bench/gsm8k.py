"""Suites drawn from GSM8K's training split (never its test split), for the quality benchmark.

    python -m bench.gsm8k --n 12 --seed 1 --exclude evals/gsm8k-train-40.jsonl > suite.jsonl

Problems are drawn uniformly at random (`random.Random(seed).sample`) among those with an integer answer and
no id in the `--exclude` suites, so a suite keeps GSM8K's own mix of easy and hard problems (evals/
gsm8k-train-40.jsonl, by contrast, keeps only problems solved in at most two lines). Ids and tasks are
written as in evals/README.md: `gsm8k-train-<line number>` (1-based), the question and "Reason step by
step, then give the final number on its own line after ####."
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
SUFFIX = " Reason step by step, then give the final number on its own line after ####."


def problems(path: Path = TRAIN) -> list[dict[str, object]]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        item = json.loads(line)
        answer = item["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
        if answer.lstrip("-").isdigit():
            rows.append({"id": f"gsm8k-train-{line_no}", "task": item["question"].strip() + SUFFIX,
                         "check": {"type": "number", "answer": int(answer)}})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--exclude", nargs="*", default=[], help="suites whose ids are left out")
    ap.add_argument("--train", default=str(TRAIN))
    args = ap.parse_args(argv)
    taken = {json.loads(line)["id"] for p in args.exclude for line in Path(p).read_text().splitlines() if line}
    pool = [p for p in problems(Path(args.train)) if p["id"] not in taken]
    for item in random.Random(args.seed).sample(pool, args.n):
        sys.stdout.write(json.dumps(item) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
