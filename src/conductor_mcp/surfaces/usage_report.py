"""Where the tokens and the money went: usage over the trace store, by worker, strategy or day.

A run tree's usage is counted as `tree_usage` counts it: every step of the run and its children, plus
the conductor's own planning and review calls (shown as the worker `conductor`). A group whose calls
include one with no known price shows its cost as unknown rather than a silent undercount.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import UsageError
from ..models import CONDUCTOR_WORKER, PlanInfo, RunOptions, Usage
from ..store import strategy_of

if TYPE_CHECKING:
    from ..runs.run_manager import RunManager

By = Literal["worker", "strategy", "day"]
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str | None, now: float | None = None) -> float:
    """`7d`, `24h`, `30m`, `2w` ago, or an ISO date/time; None: everything."""
    if not text:
        return 0.0
    now = time.time() if now is None else now
    span = _SPAN.match(text.strip())
    if span:
        return now - float(span[1]) * _UNIT_S[span[2]]
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(f"--since: {text!r}; give a span such as 7d, 24h or 30m, or a date such as "
                             "2026-11-01") from None


@dataclass
class Group:
    key: str
    usage: Usage = field(default_factory=Usage)
    roots: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        u = self.usage
        return {"key": self.key, "runs": len(self.roots), "calls": u.calls, "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens, "cost_usd": u.cost_usd}


def usage_report(runs: RunManager, since: float, by: By) -> list[dict[str, Any]]:
    """One row per worker, strategy or day (local time), most tokens first (days: newest first)."""
    groups: dict[str, Group] = {}

    def add(key: str, root: str, usage: Usage) -> None:
        group = groups.setdefault(key, Group(key))
        group.usage = group.usage + usage
        group.roots.add(root)

    for row in runs.usage_rows(since):
        strategy = strategy_of(row["root_source"], RunOptions.load(json.loads(row["root_options"])))
        day = datetime.datetime.fromtimestamp(row["created_at"]).strftime("%Y-%m-%d")
        parts: list[tuple[str, Usage]] = []
        planning = PlanInfo.model_validate_json(row["plan"]).usage
        for review in RunOptions.load(json.loads(row["options"])).reviews:
            planning = planning + review.info.usage
        if planning.calls:
            parts.append((CONDUCTOR_WORKER, planning))
        for worker, prompt, completion, cost, calls in json.loads(row["steps"] or "[]"):
            if calls and worker != CONDUCTOR_WORKER:  # a recursion step's usage is on its child run
                parts.append((worker, Usage(prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost,
                                            calls=calls)))
        for worker, usage in parts:
            add({"worker": worker, "strategy": strategy, "day": day}[by], row["root"], usage)
    rows = [g.as_dict() for g in groups.values()]
    if by == "day":
        return sorted(rows, key=lambda r: r["key"], reverse=True)
    return sorted(rows, key=lambda r: (-r["total_tokens"], r["key"]))


def usage_table(rows: list[dict[str, Any]], by: By, since_text: str | None) -> str:
    width = max([len(by), *(len(r["key"]) for r in rows)])
    head = (f"{by:<{width}}  {'runs':>5}  {'calls':>6}  {'prompt':>10}  {'completion':>10}  {'total':>10}  "
            f"{'cost':>10}")
    lines = [head]
    for r in rows:
        cost = "unknown" if r["cost_usd"] is None else f"${r['cost_usd']:.4f}"
        lines.append(f"{r['key']:<{width}}  {r['runs']:>5}  {r['calls']:>6}  {r['prompt_tokens']:>10,}  "
                     f"{r['completion_tokens']:>10,}  {r['total_tokens']:>10,}  {cost:>10}")
    if not rows:
        lines.append(f"(no runs{' since ' + since_text if since_text else ''})")
    return "\n".join(lines)
