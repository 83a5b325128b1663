"""Runs as text for people (CLI), as JSON for programs, and as a Mermaid diagram."""

from __future__ import annotations

import datetime
import textwrap
from typing import Any

from ..models import Run, StepRecord, Usage, Workflow
from ..store import Store


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "cost_usd": usage.cost_usd, "calls": usage.calls}


def run_summary(run: Run, usage: Usage | None = None) -> dict[str, Any]:
    """What `solve --json` prints: the answer, the workflow, the usage (of the whole run tree if given)."""
    return {
        "run_id": run.id,
        "status": run.status.value,
        "answer": run.answer,
        "error": run.error,
        "task": run.task,
        "workflow": run.workflow.model_dump(),
        "plan": {"source": run.plan.source, "planner": run.plan.planner, "attempts": run.plan.attempts,
                 "latency_s": run.plan.latency_s},
        "steps": [{"index": s.index, "worker": s.worker, "status": s.status.value,
                   "latency_s": s.latency_s, "attempts": len(s.attempts)} for s in run.steps],
        "usage": usage_dict(usage or run.usage),
        "reward": run.reward,
    }


def run_trace(run: Run, children: list[dict[str, Any]] | None = None,
              options: dict[str, Any] | None = None, usage: Usage | None = None) -> dict[str, Any]:
    """The whole trace: every step with its instruction, output, error, usage, timings and attempts;
    the run's options (workers, budget, kind, reviews) and its child runs (recursion and rounds)."""
    data = run.model_dump(mode="json")
    data["usage"] = usage_dict(run.usage)
    data["total_usage"] = usage_dict(usage or run.usage)
    data["options"] = options or {}
    for step, record in zip(data["steps"], run.steps, strict=True):
        step["latency_s"] = record.latency_s
    data["children"] = children or []
    return data


def trace_tree(store: Store, run_id: str) -> dict[str, Any]:
    """A run's trace with its children's traces nested, as the CLI and the MCP resource show it."""
    run = store.get_run(run_id)
    children = [trace_tree(store, c) for c in store.children(run_id)]
    return run_trace(run, children, store.options(run_id), store.tree_usage(run_id))


def _cost(usage: Usage) -> str:
    return "n/a" if usage.cost_usd is None else f"${usage.cost_usd:.4f}"


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


# the store keeps epoch seconds; JSON for people and programs gets ISO 8601 (UTC, with its offset)
TIMESTAMP_KEYS = frozenset({"created_at", "updated_at", "heartbeat_at", "started_at", "ended_at", "rated_at"})


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


def with_iso_times(data: Any) -> Any:
    """`data` with every timestamp field (TIMESTAMP_KEYS, at any depth) as an ISO 8601 string."""
    if isinstance(data, dict):
        return {k: iso(v) if k in TIMESTAMP_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
                else with_iso_times(v) for k, v in data.items()}
    if isinstance(data, list):
        return [with_iso_times(v) for v in data]
    return data


def workflow_text(workflow: Workflow) -> str:
    lines = []
    for i, s in enumerate(workflow.steps):
        access = s.access if isinstance(s.access, str) else f"steps {s.access}"
        lines.append(f"  {i}. [{s.worker}] (sees {access}) {s.instruction}")
    return "\n".join(lines)


def run_text(run: Run, full: bool = True, usage: Usage | None = None, running_s: float | None = None,
             strategy: str | None = None) -> str:
    u = usage or run.usage
    ran = f"  ran {running_s:.1f}s" if running_s is not None else ""
    lines = [
        f"run {run.id}  {run.status.value}  {_when(run.created_at)}{ran}"
        + (f"  strategy {strategy}" if strategy else ""),
        f"task: {run.task}",
        f"plan: {run.plan.source} by {run.plan.planner}"
        + (f" in {run.plan.latency_s:.2f}s" if run.plan.latency_s is not None else "")
        + (f", recipe {run.plan.recipe.key}" if run.plan.recipe is not None else ""),
        "workflow:",
        workflow_text(run.workflow),
        f"usage: {u.total_tokens} tokens ({u.prompt_tokens} in, {u.completion_tokens} out), {u.calls} calls, "
        f"cost {_cost(u)}",
    ]
    if run.plan.errors:
        lines.append("plan errors: " + " | ".join(run.plan.errors))
    if run.reward is not None:
        lines.append(f"reward: {run.reward:g} ({run.reward_source})" + (f": {run.reward_note}" if run.reward_note
                                                                       else ""))
    if full:
        for s in run.steps:
            lat = f" {s.latency_s:.2f}s" if s.latency_s is not None else ""
            lines.append(f"\n--- step {s.index} [{s.worker}] {s.status.value}{lat}, "
                         f"{len(s.attempts)} attempt(s){' (edited)' if s.edited else ''}")
            for a in s.attempts:
                if a.status != "ok":
                    lines.append(f"    attempt {a.n} on {a.worker}: {a.status} {a.error or ''}".rstrip())
            if s.code is not None:
                lines += ["    program:", textwrap.indent(s.code.rstrip(), "      "), "    printed:"]
            if s.output:
                lines.append(textwrap.indent(s.output.strip(), "    "))
            if s.error:
                lines.append(f"    error: {s.error}")
    if run.error:
        lines.append(f"\nerror: {run.error}")
    if run.answer is not None:
        lines += ["", "answer:", run.answer.strip()]
    return "\n".join(lines)


def runs_table(runs: list[tuple[Run, Usage, str, float]]) -> str:
    """One line a run: status, calls, tokens, cost of its whole tree, seconds spent running, its strategy.
    Columns are as wide as their widest cell, so whole ids line up; the task comes last, cut short."""
    head = ["run id", "status", "created", "strategy", "steps", "calls", "tokens", "cost", "secs", "reward"]
    right = {"steps", "calls", "tokens", "cost", "secs", "reward"}
    cells = [[r.id, r.status.value, _when(r.created_at), strategy, str(len(r.steps)), str(u.calls),
              str(u.total_tokens), _cost(u), f"{secs:.1f}", "" if r.reward is None else f"{r.reward:g}"]
             for r, u, strategy, secs in runs]
    widths = [max(len(row[i]) for row in [head, *cells]) for i in range(len(head))]

    def line(row: list[str], task: str) -> str:
        parts = [cell.rjust(w) if name in right else cell.ljust(w) for name, cell, w in zip(head, row, widths,
                                                                                             strict=True)]
        return "  ".join(parts) + "  " + task

    rows = [line(head, "task")]
    for (r, _, _, _), row in zip(runs, cells, strict=True):
        task = " ".join(r.task.split())
        rows.append(line(row, task if len(task) <= 50 else task[:47] + "..."))
    return "\n".join(rows)


def _label(text: str, limit: int = 40) -> str:
    """Text for a quoted Mermaid label. `%` becomes Mermaid's entity `#37;`: Mermaid takes `%%{...}%%` for a
    directive wherever it stands, inside a quoted label too, so a task could otherwise restyle or break the chart."""
    short = text if len(text) <= limit else text[: limit - 3] + "..."
    return short.replace('"', "'").replace("\n", " ").replace("[", "(").replace("]", ")").replace("%", "#37;")


def _node(s: StepRecord) -> str:
    """A step's label: worker, instruction and status; a python step also shows what it ran and printed."""
    ran = ""
    if s.code is not None:
        first = next((ln.strip() for ln in s.code.splitlines() if ln.strip()), "")
        printed = (s.output or "").strip().splitlines()
        ran = (f"<br/>ran {len(s.code.splitlines())} line(s): {_label(first, 30).replace('<', '#lt;')}"
               f"<br/>printed: {_label(printed[-1] if printed else '', 30).replace('<', '#lt;')}")
    return f"{s.index}. {_label(s.worker, 30)}<br/>{_label(s.instruction)}{ran}<br/><i>{s.status.value}</i>"


def mermaid(run: Run, children: list[Run] | None = None) -> str:
    """The workflow as a Mermaid flowchart: steps labelled with worker and instruction, access as edges;
    a `conductor` step's child workflow and correction rounds as linked subgraphs."""
    lines = ["flowchart TD", f'    task(["task: {_label(run.task)}"])']
    for s in run.steps:
        lines.append(f'    s{s.index}["{_node(s)}"]:::{s.status.value}')
    for s in run.steps:
        seen = run.workflow.visible(s.index)
        if not seen:
            lines.append(f"    task --> s{s.index}")
        for j in seen:
            lines.append(f"    s{j} --> s{s.index}")
    last_node = f"s{len(run.steps) - 1}"
    rounds = 1  # the run itself is round 1; its correction rounds are numbered among rounds only
    for n, child in enumerate(children or []):
        if child.parent_step is not None:
            kind = f"child of step {child.parent_step}"
        else:
            rounds += 1
            kind = f"round {rounds}"
        lines.append(f'    subgraph c{n}["{kind}: {child.status.value}"]')
        for s in child.steps:
            lines.append(f'        c{n}s{s.index}["{_node(s)}"]:::{s.status.value}')
        for s in child.steps:
            for j in child.workflow.visible(s.index):
                lines.append(f"        c{n}s{j} --> c{n}s{s.index}")
        lines.append("    end")
        if child.parent_step is not None:
            lines.append(f"    s{child.parent_step} -.-> c{n}")
        else:
            lines.append(f"    {last_node} -.-> c{n}")
            if child.steps:
                last_node = f"c{n}s{len(child.steps) - 1}"
    lines.append(f'    answer(["answer ({run.status.value})"])')
    lines.append(f"    {last_node} --> answer")
    lines += [
        "    classDef completed fill:#d4edda,stroke:#2e7d32",
        "    classDef running fill:#fff3cd,stroke:#b08800",
        "    classDef failed fill:#f8d7da,stroke:#c62828",
        "    classDef skipped fill:#eeeeee,stroke:#9e9e9e",
        "    classDef pending fill:#ffffff,stroke:#607d8b",
    ]
    return "\n".join(lines)
