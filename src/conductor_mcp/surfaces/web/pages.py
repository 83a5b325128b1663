"""The web view's HTML, rendered on the server: the list of runs and a run's page.

Every value from the store goes through `text()`: keys masked (redact.py), then HTML-escaped, so a worker
output holding `<script>` shows as text. The page's dynamic parts (summary, steps, related runs, diagram)
are separate fragments, so that the live-progress poll can send them again as the run goes on; the rating form,
shown once a run has finished, is one too.
"""

from __future__ import annotations

import datetime
import html
import time
from dataclasses import dataclass, field
from typing import Any

from ... import __version__
from ...models import Review, Run, RunStatus, StepRecord, Usage
from ...redact import redact
from ...store import FINAL, EvalRecord, EvalSummary
from ..render import mermaid
from .plot import Point, scatter_svg

# a run in one of these may still change (a planned run may be started, an interrupted one resumed)
LIVE = frozenset({RunStatus.PLANNED, RunStatus.RUNNING})
STATIC = f"/ui/static/{{}}?v={__version__}"


def text(value: object) -> str:
    """A value from the store, safe to put in HTML (element content or a quoted attribute)."""
    return html.escape(redact("" if value is None else str(value)), quote=True)


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def when_short(ts: float, now: float | None = None) -> str:
    """The time alone for today's runs, else the date and minute."""
    moment = datetime.datetime.fromtimestamp(ts)
    today = datetime.datetime.fromtimestamp(now or time.time()).date()
    return moment.strftime("%H:%M:%S") if moment.date() == today else moment.strftime("%Y-%m-%d %H:%M")


def cost(usd: float | None) -> str:
    if usd is None:
        return "n/a"
    if usd == 0:
        return "$0"
    if usd < 0.0001:
        return "<$0.0001"
    return f"${usd:.4f}" if usd < 100 else f"${usd:,.2f}"


def headline(task: str, limit: int = 140) -> str:
    """A task's first line, cut to `limit` characters."""
    first = task.strip().splitlines()[0] if task.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"


def reward(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def status_badge(status: str) -> str:
    return f'<span class="badge s-{text(status)}">{text(status.replace("_", " "))}</span>'


def layout(title: str, body: str, *, scripts: tuple[str, ...] = (), signed_in: bool = False) -> str:
    """A whole page. `signed_in`: show the sign-out button (only where a token is in use)."""
    tags = "".join(f'<script src="{STATIC.format(s)}" defer></script>' for s in scripts)
    signout = ('<form method="post" action="/ui/logout" class="signout"><button type="submit">Sign out</button>'
               "</form>") if signed_in else ""
    return ("<!doctype html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, '
            f'initial-scale=1"><link rel="icon" href="data:,"><title>{text(title)} · conductor-mcp</title>'
            f'<link rel="stylesheet" href="{STATIC.format("ui.css")}">{tags}</head>'
            f'<body><header class="top"><a class="brand" href="/ui/">conductor-mcp</a>'
            f'<nav><a href="/ui/">Runs</a><a href="/ui/evals">Evals</a></nav>{signout}</header>'
            f"<main>{body}</main></body></html>\n")


# -- the list of runs ---------------------------------------------------------------------------------------


@dataclass
class ListRow:
    run_id: str
    status: str
    strategy: str
    task: str
    created_at: float
    steps: int
    usage: Usage
    seconds: float
    reward: float | None


def runs_page(rows: list[ListRow], next_cursor: str | None, first_page: bool, limit: int,
              signed_in: bool) -> str:
    if rows:
        body_rows = "".join(
            f'<tr><td class="task"><a href="/ui/runs/{text(r.run_id)}" title="{text(r.task)}">'
            f'{text(headline(r.task) or "(no task)")}</a><code class="id">{text(r.run_id)}</code></td>'
            f"<td>{status_badge(r.status)}</td><td>{text(r.strategy)}</td>"
            f'<td class="num">{r.steps}</td><td class="num">{r.usage.total_tokens:,}</td>'
            f'<td class="num">{cost(r.usage.cost_usd)}</td><td class="num">{seconds(r.seconds)}</td>'
            f'<td class="num">{reward(r.reward)}</td>'
            f'<td class="when" title="{when(r.created_at)}">{when_short(r.created_at)}</td></tr>'
            for r in rows)
        table = ('<table class="runs"><thead><tr><th>Task · run</th><th>Status</th><th>Strategy</th>'
                 '<th class="num">Steps</th><th class="num">Tokens</th><th class="num">Cost</th>'
                 '<th class="num">Time</th><th class="num">Reward</th><th>Created</th></tr></thead>'
                 f"<tbody>{body_rows}</tbody></table>")
    else:
        table = ('<p class="empty">No runs yet. Start one from an MCP host (the <code>solve</code> tool) or with '
                 "<code>mcp-conductor solve \"TASK\"</code> on this store.</p>" if first_page
                 else '<p class="empty">No older runs.</p>')
    pager = []
    if not first_page:
        pager.append(f'<a href="/ui/?limit={limit}">« Newest</a>')
    if next_cursor:
        pager.append(f'<a rel="next" href="/ui/?limit={limit}&amp;cursor={text(next_cursor)}">Older »</a>')
    body = (f'<h1>Runs</h1><p class="lede">Newest first; a run\'s tokens, cost and time count its planning, '
            f"child runs and review rounds.</p>{table}"
            f'<nav class="pager">{"".join(pager)}</nav>')
    return layout("Runs", body, signed_in=signed_in)


# -- a run's page -------------------------------------------------------------------------------------------


@dataclass
class RunView:
    """Everything a run's page shows, read from the store in one go."""

    run: Run
    strategy: str
    seconds: float  # time spent running: planning plus each execution (the CLI's `secs`)
    tree_usage: Usage
    children: list[Run] = field(default_factory=list)
    reviews: list[Review] = field(default_factory=list)
    rounds: dict[str, int] = field(default_factory=dict)  # child run id -> its round number
    parent: Run | None = None


def _fact(label: str, value: str, cls: str = "") -> str:
    return f'<div class="fact {cls}"><dt>{label}</dt><dd>{value}</dd></div>'


def summary_fragment(view: RunView) -> str:
    run, u = view.run, view.tree_usage
    own = run.usage
    facts = [
        _fact("Status", status_badge(run.status.value)),
        _fact("Strategy", text(view.strategy)),
        _fact("Planned by", text(run.plan.planner) if run.plan.planner == run.plan.source
              else f"{text(run.plan.planner)} <small>({text(run.plan.source)})</small>"),
        _fact("Time", seconds(view.seconds)),
        _fact("Tokens", f"{u.total_tokens:,} <small>{u.prompt_tokens:,} in, {u.completion_tokens:,} out; "
                        f"{u.calls} call{'s' if u.calls != 1 else ''}</small>"),
        _fact("Cost", cost(u.cost_usd)),
        _fact("Reward", (f"{reward(run.reward)} <small>by {text(run.reward_source)}</small>"
                         if run.reward is not None else '<span class="muted">not rated</span>'), "reward"),
    ]
    note = ""
    if u.calls != own.calls:
        note = (f'<p class="muted small">This run alone: {own.total_tokens:,} tokens, {own.calls} '
                f'call{"s" if own.calls != 1 else ""}, '
                f"{cost(own.cost_usd)}; the figures above add its child runs and reviews.</p>")
    out = [f'<dl class="facts">{"".join(facts)}</dl>{note}']
    if run.reward_note:
        out.append(f'<p class="reward-note">Rating note: {text(run.reward_note)}</p>')
    if run.error:
        out.append(f'<div class="error"><strong>Error</strong><pre>{text(run.error)}</pre></div>')
    return "".join(out)


def result_fragment(view: RunView) -> str:
    """The answer, beside the diagram; or what stands in for it until there is one."""
    run = view.run
    if run.answer is not None:
        return f'<h2>Answer</h2><div class="answer"><pre>{text(run.answer)}</pre></div>'
    if run.status == RunStatus.PLANNED:
        why = ('Planned, not started: run it with the <code>resume</code> tool or '
               f"<code>mcp-conductor resume {text(run.id)}</code>.")
    elif run.status == RunStatus.RUNNING:
        why = "Running: the answer shows here when the last step is done."
    else:
        why = f"No answer: the run ended {text(run.status.value.replace('_', ' '))}."
    return f'<h2>Answer</h2><div class="answer pending"><p class="muted">{why}</p></div>'


def _access(step: StepRecord) -> str:
    if step.access == "all":
        return "all earlier steps" if step.index else "nothing (first step)"
    if step.access == "none" or not step.access:
        return "only the task"
    return "steps " + ", ".join(str(i) for i in sorted(set(step.access)))


def _attempts(step: StepRecord) -> str:
    if not step.attempts:
        return ""
    rows = "".join(
        f'<tr><td class="num">{a.n}</td><td>{text(a.worker)}</td><td>{status_badge(a.status)}</td>'
        f'<td class="num">{seconds(a.latency_s)}</td><td class="num">{a.usage.total_tokens:,}</td>'
        f'<td class="num">{cost(a.usage.cost_usd) if a.usage.total_tokens else ""}</td>'
        f'<td class="err">{text(a.error or "")}</td></tr>' for a in step.attempts)
    return ('<table class="attempts"><thead><tr><th class="num">#</th><th>Worker</th><th>Status</th>'
            '<th class="num">Time</th><th class="num">Tokens</th><th class="num">Cost</th><th>Error</th></tr>'
            f"</thead><tbody>{rows}</tbody></table>")


def step_card(run: Run, step: StepRecord, children: list[Run], now: float | None = None) -> str:
    u = step.usage
    latency = step.latency_s
    if latency is None and step.started_at is not None and step.status.value == "running":
        latency = (now or time.time()) - step.started_at
    meta = [status_badge(step.status.value)]
    if latency is not None:
        meta.append(seconds(latency))
    if u.calls:
        meta.append(f"{u.total_tokens:,} tokens ({u.prompt_tokens:,} in, {u.completion_tokens:,} out)")
        meta.append(cost(u.cost_usd))
    n_attempts = len(step.attempts)
    meta.append(f"{n_attempts} attempt{'s' if n_attempts != 1 else ''}")
    if step.edited:
        meta.append("edited by the host")
    child_links = "".join(
        f'<p class="child">Child run of this step: <a href="/ui/runs/{text(c.id)}">{text(c.id)}</a> '
        f"{status_badge(c.status.value)}</p>" for c in children if c.parent_step == step.index)
    body = []
    if step.code is not None:  # a python worker's step: the program it ran, then what it printed
        body.append(f'<details class="program" id="code-{run.id}-{step.index}" open><summary>Program it ran '
                    f'<small>({len(step.code.splitlines()):,} lines)</small></summary><pre>{text(step.code)}</pre>'
                    "</details>")
    if step.output is not None:
        label = "What it printed" if step.code is not None else "Output"
        body.append(f'<details class="output" id="out-{run.id}-{step.index}" open><summary>{label} '
                    f'<small>({len(step.output):,} characters)</small></summary><pre>{text(step.output)}</pre>'
                    "</details>")
    if step.error:
        body.append(f'<div class="error"><strong>Error</strong><pre>{text(step.error)}</pre></div>')
    attempts = _attempts(step)
    if attempts:
        body.append(f'<details class="attempts-box" id="att-{run.id}-{step.index}"'
                    f'{" open" if any(a.status in ("error", "interrupted") for a in step.attempts) else ""}>'
                    f"<summary>Attempts</summary>{attempts}</details>")
    return (f'<article class="step st-{text(step.status.value)}" id="step-{step.index}">'
            f'<header><h3><span class="idx">{step.index}</span> <span class="worker">{text(step.worker)}</span>'
            f'</h3><p class="meta">{" · ".join(meta)}</p></header>'
            f'<p class="instruction">{text(step.instruction)}</p>'
            f'<p class="access">Sees: {_access(step)}</p>{child_links}{"".join(body)}</article>')


def steps_fragment(view: RunView, now: float | None = None) -> str:
    return "".join(step_card(view.run, s, view.children, now) for s in view.run.steps)


def related_fragment(view: RunView) -> str:
    run = view.run
    parts = []
    if view.children:
        items = []
        for c in view.children:
            if c.parent_step is not None:
                kind = f"recursion: step {c.parent_step} handed to the conductor"
            else:
                kind = f"review round {view.rounds.get(c.id, '?')}"
            items.append(f'<li><a href="/ui/runs/{text(c.id)}">{text(c.id)}</a> {status_badge(c.status.value)} '
                         f'<span class="muted">{text(kind)}</span> · {len(c.steps)} step'
                         f'{"s" if len(c.steps) != 1 else ""}</li>')
        parts.append(f'<h2>Child runs</h2><ul class="related">{"".join(items)}</ul>')
    if view.reviews:
        items = []
        by_round = {n: cid for cid, n in view.rounds.items()}
        for r in view.reviews:
            n = r.round
            tokens = r.info.usage.prompt_tokens + r.info.usage.completion_tokens
            if r.accepted:
                verdict = "accepted the answer"
            else:
                nxt = by_round.get(n + 1)
                link = f' <a href="/ui/runs/{text(nxt)}">round {n + 1}</a>' if nxt else f" round {n + 1}"
                verdict = f"asked for a correction:{link}"
            items.append(f"<li>Review of round {n}: {verdict} <span class=\"muted\">({tokens:,} tokens, "
                         f"{text(r.info.planner)})</span></li>")
        parts.append(f'<h2>Review rounds</h2><ul class="related">{"".join(items)}</ul>')
    if not parts and run.parent_run_id is None:
        return ""
    return "".join(parts)


def _mermaid_safe(value: str) -> str:
    """A label for Mermaid that stays text: `<`, `>` and `&` as Mermaid's numeric entity codes."""
    return value.replace("&", "#38;").replace("<", "#60;").replace(">", "#62;")


def diagram_source(view: RunView) -> str:
    """render.mermaid's flowchart of the run, its labels turned to text (Mermaid renders HTML in labels)."""

    def safe(run: Run) -> Run:
        return run.model_copy(update={
            "task": _mermaid_safe(redact(run.task)),
            "steps": [s.model_copy(update={"worker": _mermaid_safe(s.worker),
                                           "instruction": _mermaid_safe(redact(s.instruction))})
                      for s in run.steps]})

    return mermaid(safe(view.run), [safe(c) for c in view.children])


def rating_fragment(view: RunView, flash: str = "") -> str:
    """The rating form: for a root run that has finished (store.FINAL; Store.rate refuses any other), so it
    comes with the live poll's last state when a run the page watched ends."""
    run = view.run
    if run.parent_run_id is not None or run.status not in FINAL:
        return ""
    flash_html = f'<p class="flash" role="status">{text(flash)}</p>' if flash else ""
    current = run.reward
    options = "".join(
        f'<label class="choice"><input type="radio" name="score" value="{v}"'
        f'{" checked" if current is not None and abs(current - float(v)) < 1e-9 else ""} required> '
        f"<strong>{v}</strong> {label}</label>"
        for v, label in (("1", "correct"), ("0.5", "wrong but well formed"), ("0", "unusable")))
    return (f'<section class="rate" id="rate"><h2>Rate this run</h2>'
            f'<p class="muted">The same reward as the <code>rate_run</code> tool; the conductor learns from '
            f"it when it plans similar tasks. A new rating replaces the last one.</p>{flash_html}"
            f'<form method="post" action="/ui/runs/{text(run.id)}/rate">'
            f'<div class="choices">{options}</div>'
            f'<label class="note">Note <small>(optional)</small><textarea name="note" maxlength="2000" '
            f'rows="2">{text(run.reward_note or "")}</textarea></label>'
            f'<button type="submit">Save rating</button></form></section>')


def run_page(view: RunView, signed_in: bool, flash: str = "", now: float | None = None) -> str:
    run = view.run
    short = headline(run.task, 120) or run.id
    crumbs = [f'<a href="/ui/">Runs</a> / run <code>{text(run.id)}</code> · created {text(when(run.created_at))}']
    if view.parent is not None:
        part = (f"step {run.parent_step}" if run.parent_step is not None
                else f"review round {view.rounds.get(run.id, '')}".rstrip())
        crumbs.append(f' · part of <a href="/ui/runs/{text(view.parent.id)}">run {text(view.parent.id)}</a> '
                      f"({text(part)})")
    live = run.status in LIVE
    plan = run.plan
    plan_bits = [f"<p>{text(plan.source)} by {text(plan.planner)}, {plan.attempts} attempt"
                 f"{'s' if plan.attempts != 1 else ''}"
                 + (f", {seconds(plan.latency_s)}" if plan.latency_s is not None else "")
                 + f", {plan.usage.total_tokens:,} tokens</p>"]
    if plan.recipe is not None:
        plan_bits.append(f'<p class="recipe">Recipe: {text(plan.recipe.key)}</p>')
    if plan.prior is not None and plan.prior.changes:
        plan_bits.append("<p>What the outcomes said:</p><ul>"
                         + "".join(f"<li>{text(c)}</li>" for c in plan.prior.changes) + "</ul>")
    for label, items in (("Errors", plan.errors), ("Repairs", plan.repairs), ("Notes", plan.notes)):
        if items:
            plan_bits.append(f"<p>{label}:</p><ul>{''.join(f'<li>{text(i)}</li>' for i in items)}</ul>")
    if plan.raw:
        plan_bits.append(f"<details><summary>Raw plan</summary><pre>{text(plan.raw)}</pre></details>")
    body = (f'<p class="crumbs">{"".join(crumbs)}</p>'
            f'<h1 class="task-title">{text(short)}</h1>'
            f'<div id="run" data-run="{text(run.id)}" data-live="{"1" if live else "0"}">'
            f'<section id="summary" class="summary">{summary_fragment(view)}</section>'
            f'<details class="task"><summary>Task <small>({len(run.task):,} characters)</small></summary>'
            f"<pre>{text(run.task)}</pre></details>"
            f'<div class="overview"><section class="workflow"><h2>Workflow <span class="live-dot" id="live" '
            f'title="updating live"{"" if live else " hidden"}>live</span></h2>'
            f'<div id="diagram" class="diagram" aria-label="workflow diagram"></div>'
            f'<pre id="diagram-src" class="diagram-src" hidden>{html.escape(diagram_source(view))}</pre></section>'
            f'<section id="result" class="result">{result_fragment(view)}</section></div>'
            f'<section class="steps"><h2>Steps</h2><div id="steps">{steps_fragment(view, now)}</div></section>'
            f'<section id="related">{related_fragment(view)}</section>'
            f'<div id="rating">{rating_fragment(view, flash)}</div>'
            f'<section class="plan"><details><summary>How it was planned</summary>{"".join(plan_bits)}</details>'
            "</section></div>")
    return layout(f"run {run.id}", body, scripts=("mermaid.min.js", "ui.js"), signed_in=signed_in)


def run_state(view: RunView, now: float | None = None) -> dict[str, Any]:
    """What the live poll gets: the page's dynamic fragments, and whether to keep polling."""
    return {"status": view.run.status.value, "live": view.run.status in LIVE,
            "summary": summary_fragment(view), "result": result_fragment(view), "steps": steps_fragment(view, now),
            "related": related_fragment(view), "rating": rating_fragment(view), "diagram": diagram_source(view)}


def login_page(next_path: str, error: str = "", secure_hint: bool = False) -> str:
    err = f'<p class="error" role="alert">{text(error)}</p>' if error else ""
    hint = ('<p class="muted small">This server is reached over plain HTTP: the token and the session cookie '
            "cross the network unencrypted. Put it behind HTTPS (a reverse proxy) off a trusted network.</p>"
            if secure_hint else "")
    body = (f'<section class="login"><h1>Sign in</h1>{err}'
            '<p>This server needs its token (the <code>CONDUCTOR_TOKEN</code> it was started with). Signing in '
            "keeps a session cookie in this browser for 30 days; the token never goes in an address.</p>"
            '<form method="post" action="/ui/login">'
            '<input type="text" name="username" value="conductor-mcp" autocomplete="username" hidden>'
            '<label>Token <input type="password" name="token" autocomplete="current-password" required autofocus>'
            "</label>"
            f'<input type="hidden" name="next" value="{text(next_path)}">'
            f'<button type="submit">Sign in</button></form>{hint}</section>')
    return layout("Sign in", body)


def message_page(title: str, message: str) -> str:
    return layout(title, f'<h1>{text(title)}</h1><p>{text(message)}</p><p><a href="/ui/">All runs</a></p>')


# -- evals: the list, and an eval's page ---------------------------------------------------------------------


def evals_page(evals: list[EvalSummary], signed_in: bool) -> str:
    if evals:
        rows = "".join(
            f'<tr><td class="when"><a href="/ui/evals/{text(e.eval_id)}" title="{when(e.started_at)}">'
            f"{when_short(e.started_at)}</a></td><td>{text(e.command)}</td>"
            f'<td class="suite" title="{text(e.suite)}">{text(e.suite)}</td><td class="num">{e.tasks}</td>'
            f'<td class="strategies">{", ".join(text(s) for s in e.strategies)}</td>'
            f'<td class="num">{seconds(e.ended_at - e.started_at)}</td></tr>' for e in evals)
        table = ('<table class="runs evals"><thead><tr><th>When</th><th>Command</th><th>Suite</th>'
                 '<th class="num">Tasks</th><th>Strategies</th><th class="num">Took</th></tr></thead>'
                 f"<tbody>{rows}</tbody></table>")
    else:
        table = ('<p class="empty">No evals yet. Run <code>mcp-conductor eval SUITE.jsonl</code> or '
                 "<code>mcp-conductor calibrate SUITE.jsonl</code> on this store.</p>")
    body = ('<h1>Evals</h1><p class="lede">Newest first: each <code>eval</code> and <code>calibrate</code> '
            f"run on this store, its strategies compared on the same tasks.</p>{table}")
    return layout("Evals", body, signed_in=signed_in)


def _figure(value: object, shown: str) -> str:
    """A table cell with the report's figure as it is stored (data-value) and as it reads."""
    return f'<td class="num" data-value="{text(value)}">{shown}</td>'


def _strategy_row(name: str, s: dict[str, Any]) -> str:
    accuracy, tokens = float(s.get("accuracy", 0.0)), float(s.get("mean_tokens", 0.0))
    secs, steps = float(s.get("mean_seconds", 0.0)), float(s.get("mean_steps", 0.0))
    usd = s.get("mean_cost_usd")
    return (f'<tr data-strategy="{text(name)}"><td class="strategy">{text(name)}</td>'
            f'<td class="num correct">{int(s.get("correct", 0))}/{int(s.get("n", 0))}</td>'
            f"{_figure(accuracy, f'{accuracy:.1%}')}{_figure(tokens, f'{tokens:,.1f}')}"
            f"{_figure(secs, f'{secs:.2f} s')}{_figure(steps, f'{steps:.2f}')}"
            f"{_figure(usd, cost(None if usd is None else float(usd)))}</tr>")


def _strategies_table(summaries: dict[str, dict[str, Any]]) -> str:
    rows = "".join(_strategy_row(name, s) for name, s in summaries.items())
    return ('<table class="runs compare"><thead><tr><th>Strategy</th><th class="num">Correct</th>'
            '<th class="num">Accuracy</th><th class="num">Tokens / task</th><th class="num">Seconds / task</th>'
            '<th class="num">Steps / task</th><th class="num">Cost / task</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def accuracy_plot(summaries: dict[str, dict[str, Any]]) -> str:
    """Accuracy against mean tokens per task, one labelled point per strategy (names redacted, then escaped
    by the plot)."""
    points = [Point(redact(name), float(s.get("mean_tokens", 0.0)), float(s.get("accuracy", 0.0)))
              for name, s in summaries.items()]
    return scatter_svg(points, title="Accuracy against mean tokens per task", x_label="Mean tokens per task",
                       y_label="Accuracy (%)")


def _runs_matrix(strategies: list[str], runs: list[dict[str, Any]]) -> str:
    """Tasks down, strategies across: each run's score, linked to the run."""
    by_cell = {(str(r.get("task_id")), str(r.get("strategy"))): r for r in runs}
    tasks = list(dict.fromkeys(str(r.get("task_id")) for r in runs))
    rows = []
    for task in tasks:
        cells = []
        for name in strategies:
            r = by_cell.get((task, name))
            if r is None:
                cells.append('<td class="num muted">–</td>')
                continue
            score = float(r.get("score") or 0.0)
            status = "" if r.get("status") == "completed" else f" <small>{text(r.get('status'))}</small>"
            shown = f"{score:g}{status}"
            mark = "ok" if score >= 1.0 else "bad"
            link = (f'<a href="/ui/runs/{text(r["run_id"])}">{shown}</a>' if r.get("run_id") else shown)
            cells.append(f'<td class="num score {mark}" title="{text(r.get("detail"))}">{link}</td>')
        rows.append(f'<tr><td class="task-id">{text(task)}</td>{"".join(cells)}</tr>')
    head = "".join(f'<th class="num">{text(s)}</th>' for s in strategies)
    return (f'<table class="runs matrix"><thead><tr><th>Task</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _file_name(path: str) -> str:
    """A suite's file name for a heading (the whole path, as given, is among the facts)."""
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or path


def eval_page(record: EvalRecord, signed_in: bool) -> str:
    report = record.report
    summaries: dict[str, dict[str, Any]] = report.get("strategies") or {}
    runs: list[dict[str, Any]] = report.get("runs") or []
    n_tasks = len({r.get("task_id") for r in runs})
    facts = [_fact("Command", text(record.command)), _fact("Suite", text(record.suite)), _fact("Tasks", str(n_tasks)),
             _fact("Strategies", str(len(summaries))), _fact("Started", text(when(record.started_at))),
             _fact("Took", seconds(record.ended_at - record.started_at))]
    body = (f'<p class="crumbs"><a href="/ui/evals">Evals</a> / eval <code>{text(record.eval_id)}</code></p>'
            f'<h1 class="task-title">{text(record.command)} of {text(_file_name(record.suite))}</h1>'
            f'<dl class="facts">{"".join(facts)}</dl>'
            f"<h2>Strategies</h2>{_strategies_table(summaries)}"
            '<p class="muted small">Tokens, seconds, steps and cost are means per task; tokens include the '
            "conductor's own. A run counts as correct when its grade is 1.</p>"
            f'<h2>Accuracy against tokens</h2><figure class="plot">{accuracy_plot(summaries)}</figure>'
            f'<h2 id="runs">Runs</h2><p class="muted small">Each run\'s grade; open one for its trace.</p>'
            f"{_runs_matrix(list(summaries), runs)}")
    return layout(f"eval {record.eval_id}", body, signed_in=signed_in)
