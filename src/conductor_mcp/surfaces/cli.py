"""mcp-conductor serve | ui | solve | plan | resume | runs | show | usage | rate | eval | calibrate | pull | doctor.

Results go to stdout; logs and errors go to stderr. `serve` over stdio must keep stdout for protocol.
Exit status: 0 done, 1 the work failed (a failed run, a worker, the store, the manifest), 2 the command
line is wrong (see UsageError), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio

from .. import __version__
from ..errors import ConductorError, UsageError, internal_message, leaf_error
from ..redact import RedactingFormatter

if TYPE_CHECKING:
    from ..models import Budget, Run
    from ..runs.run_manager import RunManager
    from ..workers.registry import Registry

log = logging.getLogger("conductor_mcp")


def emit(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _manager(args: argparse.Namespace, calls_workers: bool = True) -> RunManager:
    """The RunManager, the door every surface plans, runs and reads runs through. For solve and plan, what the
    command line names is checked against the registry before the store opens or a model loads."""
    from ..runs.run_manager import RunManager
    from ..workers.llm import litellm_module
    from ..workers.pool import uses_litellm
    from ..workers.registry import load_registry

    registry = load_registry(args.workers)
    if hasattr(args, "use"):
        _check_request(registry, args)
    if registry.conductor.model or (calls_workers and uses_litellm(registry)):
        # litellm's import takes seconds on the event loop: inside the first call it would eat that call's
        # time limit, and on a busy machine time it out
        litellm_module()
    return RunManager(registry, args.db)


def _reader(args: argparse.Namespace) -> RunManager:
    """A RunManager for commands that only read or rate stored runs: it opens the store, not the registry."""
    from ..runs.run_manager import RunManager

    return RunManager(getattr(args, "workers", None), args.db)


def _progress(args: argparse.Namespace) -> Callable[[Any], Coroutine[Any, Any, None]] | None:
    """Planning (a tick a second while the conductor writes) and step progress on stderr; none with --json."""
    if args.json:
        return None

    async def show(event: Any) -> None:
        sys.stderr.write(event.message + "\n")

    return show


# where each argument of a request is on the command line
_FLAGS = {"task": "task", "workers": "--use", "strategy": "--strategy", "max_steps": "--max-steps",
          "workflow": "workflow"}


def _read_task(args: argparse.Namespace) -> None:
    """`-` reads the task from stdin; an empty task is a usage error, found before anything loads."""
    from ..runs.request import RequestError, check_task

    if args.task == "-":
        args.task = sys.stdin.read()
    try:
        args.task = check_task(args.task)
    except RequestError as exc:
        raise UsageError(str(exc)) from None


def _check_request(registry: Registry, args: argparse.Namespace) -> None:
    """Worker ids and a strategy named on the command line that the pool lacks are usage errors."""
    from ..runs.request import RequestError, check_request

    try:
        check_request(registry, args.task, args.use, args.max_steps, args.strategy)
    except RequestError as exc:
        raise UsageError(str(exc) if exc.param == "task" else f"{_FLAGS[exc.param]}: {exc}") from None


def _resolve(resolve: Callable[[str], str], ref: str) -> str:
    """A run id from the command line: a whole id, the start of exactly one, or `last` (`resolve`: the
    RunManager's or a Store's)."""
    from ..errors import RunNotFound

    try:
        return str(resolve(ref))
    except RunNotFound as exc:
        raise UsageError(str(exc)) from None


async def _solve(args: argparse.Namespace) -> int:
    _read_task(args)
    runs = _manager(args)
    run = await runs.plan(args.task, args.use, args.max_steps, strategy=args.strategy, budget=_budget(runs, args),
                          prefer=args.prefer, on_plan=_progress(args))
    args.started_run = run.id  # what Ctrl-C from here on tells the user to resume
    if not args.json:
        sys.stderr.write(f"run {run.id}: planned {len(run.workflow.steps)} step(s) ({run.plan.source})\n")
        for note in run.plan.notes:
            sys.stderr.write(f"  note: {note}\n")
    run = await runs.drive(run.id, _progress(args))
    return _report(runs, run, args)


def _budget(runs: RunManager, args: argparse.Namespace, run_id: str | None = None) -> Budget | None:
    """The limits given on the command line, over the run's stored budget (the RunManager merges them)."""
    return runs.budget(run_id, **{k: getattr(args, k, None)
                                  for k in ("max_rounds", "max_depth", "max_total_tokens", "max_usd")})


def _report(runs: RunManager, run: Run, args: argparse.Namespace) -> int:
    from .render import run_summary, run_text

    usage = runs.tree_usage(run.id)
    emit(json.dumps(run_summary(run, usage), indent=2) if args.json
         else run_text(run, args.verbose, usage, runs.running_seconds(run.id)))
    return 0 if run.status == "completed" else 1


async def _plan(args: argparse.Namespace) -> int:
    from .render import run_summary, workflow_text

    _read_task(args)
    runs = _manager(args, calls_workers=False)
    run = await runs.plan(args.task, args.use, args.max_steps, strategy=args.strategy, budget=_budget(runs, args),
                          prefer=args.prefer, on_plan=_progress(args))
    if args.json:
        emit(json.dumps(run_summary(run), indent=2))
    else:
        emit(f"run {run.id} planned ({run.plan.source} by {run.plan.planner})\n{workflow_text(run.workflow)}\n"
             f"run it with: mcp-conductor resume {run.id}")
    return 0


async def _resume(args: argparse.Namespace) -> int:
    runs = _manager(args)
    run_id = args.started_run = _resolve(runs.resolve, args.run_id)
    run = await runs.drive(run_id, _progress(args), _budget(runs, args, run_id))
    return _report(runs, run, args)


async def _eval(args: argparse.Namespace) -> int:
    from ..evals.grading import load_suite
    from ..evals.suite import calibration_strategies, parse_strategies, report_json, report_table, run_eval

    tasks = load_suite(args.suite)[: args.limit]
    runs = _manager(args)
    if args.command == "calibrate":
        strategies = calibration_strategies(runs)
    else:
        try:
            strategies = parse_strategies(args.strategies, runs)
        except ConductorError as exc:  # --strategies names what the pool lacks
            raise UsageError(str(exc)) from None

    async def progress(done: int, total: int, r: Any) -> None:
        mark = "correct" if r.score >= 1 else "wrong"
        sys.stderr.write(f"[{done}/{total}] {r.strategy} {r.task_id}: {mark} ({r.detail[:60]}); "
                         f"{r.tokens} tokens, {r.steps} step(s), {r.seconds:.1f}s\n")

    sys.stderr.write(f"{args.command}: {len(tasks)} task(s) x {len(strategies)} strategies "
                     f"({', '.join(strategies)}); store {runs.store_location()}\n")
    started = time.time()
    reports = await run_eval(runs, tasks, strategies, args.prefer, progress)
    report = report_json(reports, str(args.suite))
    _record_eval(runs, args.command, str(args.suite), started, report)  # before printing, which may fail
    emit(json.dumps(report, indent=2) if args.json else report_table(reports))
    return 0


def _record_eval(runs: RunManager, command: str, suite: str, started: float, report: dict[str, Any]) -> None:
    """Keep the report for the web view (/ui/evals). A store that cannot take it costs the record, not the
    figures: they still print, and stderr says why nothing was kept."""
    import sqlite3

    try:
        eval_id = runs.record_eval(command, suite, started, time.time(), report)
    except (ConductorError, sqlite3.Error) as exc:
        sys.stderr.write(f"warning: this {command} was not recorded in the trace store: {exc}\n")
        return
    sys.stderr.write(f"{command}: recorded as eval {eval_id} (the web view shows it at /ui/evals/{eval_id})\n")


def _rate(args: argparse.Namespace) -> int:
    runs = _reader(args)
    run_id = _resolve(runs.resolve, args.run_id)
    runs.rate(run_id, args.score, args.note, source="user")
    if args.json:
        emit(json.dumps({"run_id": run_id, "reward": args.score, "note": args.note}))
    else:
        emit(f"run {run_id}: reward {args.score:g}")
    return 0


def _score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is outside 0..1 (0 unusable, 0.5 wrong but well formed, "
                                         "1 correct)")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}; give 1 or more")
    return value


def _answer_only(run: Run) -> int:
    """`-r`: the answer alone on stdout, as `llm logs -r` prints a response; a run without one says why."""
    if run.answer is None:
        why = f": {run.error}" if run.error else ""
        sys.stderr.write(f"run {run.id} has no answer ({run.status.value}{why})\n")
        return 1
    emit(run.answer)
    return 0


def _list_runs(args: argparse.Namespace) -> int:
    from .render import iso, run_summary, runs_table

    runs = _reader(args)
    found = runs.find(1 if args.response else args.limit, args.status or (), args.strategy, args.query)
    if args.response:  # the newest matching run's answer
        if not found:
            sys.stderr.write("no run matches\n")
            return 1
        return _answer_only(runs.get(found[0].run_id))
    rows = [(runs.get(f.run_id), f) for f in found]
    if args.json:
        emit(json.dumps([{**run_summary(r, runs.tree_usage(r.id)), "strategy": f.strategy,
                          "created_at": iso(r.created_at), "updated_at": iso(r.updated_at),
                          "running_s": round(f.running_s, 3)} for r, f in rows], indent=2))
    else:
        emit(runs_table([(r, runs.tree_usage(r.id), f.strategy, f.running_s) for r, f in rows]))
    return 0


def _usage(args: argparse.Namespace) -> int:
    from .usage_report import parse_since, usage_report, usage_table

    rows = usage_report(_reader(args), parse_since(args.since), args.by)
    emit(json.dumps({"since": args.since, "by": args.by, "rows": rows}, indent=2) if args.json
         else usage_table(rows, args.by, args.since))
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..store import strategy_of
    from .render import mermaid, run_text, with_iso_times

    runs = _reader(args)
    run = runs.get(_resolve(runs.resolve, args.run_id))
    if args.response:
        return _answer_only(run)
    if args.mermaid:
        emit(mermaid(run, runs.children(run.id)))
    elif args.json:
        emit(json.dumps({**with_iso_times(runs.trace(run.id)),
                         "running_s": round(runs.running_seconds(run.id), 3)}, indent=2))
    else:
        emit(run_text(run, usage=runs.tree_usage(run.id), running_s=runs.running_seconds(run.id),
                      strategy=strategy_of(run.plan.source, runs.options(run.id))))
        for child in runs.children(run.id):
            kind = f"of step {child.parent_step}" if child.parent_step is not None else "(correction round)"
            emit(f"\n=== child run {kind}\n" + run_text(child, usage=runs.tree_usage(child.id)))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    return doctor(args)


def _schema(args: argparse.Namespace) -> int:
    from .doctor import schema

    return schema(args)


def _pull(args: argparse.Namespace) -> int:
    from ..workers import hub
    from ..workers.registry import read_manifest

    path = args.workers or os.environ.get("CONDUCTOR_WORKERS")
    conductor = read_manifest(path).conductor if path else None  # workers need not be usable to pull
    ref = hub.HubGGUF.of(conductor) if conductor else None
    if ref is None:
        what = (conductor.model or conductor.gguf) if conductor else None
        emit(f"nothing to pull: the conductor is {what or 'the bundled model'}, not an `hf:` one")
        return 0
    local = hub.cached_path(ref)
    if local is not None:
        sys.stderr.write(f"{ref.label}: already in the Hugging Face cache\n")
    else:
        try:
            local = hub.download(ref)
        except ConductorError as exc:
            raise ConductorError(f"{path}: {exc}") from None
    emit(str(local))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ..store import open_store
    from .transports import serve

    # a store that cannot be opened or is damaged stops the server here, in one line naming it, rather
    # than failing every tool call later
    store = open_store(args.db)
    try:
        store.check()
        if store.read_only:
            sys.stderr.write(f"mcp-conductor serve: trace store {store.location} is read-only ({store.read_only}): "
                             "runs can be read, not planned, run or rated\n")
    finally:
        store.close()
    serve(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..models import RunStatus

    p = argparse.ArgumentParser(prog="mcp-conductor", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, json_flag: bool = True) -> None:
        sp.add_argument("--workers", help="worker manifest (YAML); default $CONDUCTOR_WORKERS or the environment")
        sp.add_argument("--db", help="trace store path; default $CONDUCTOR_DB or a per-user data file")
        sp.add_argument("-v", "--verbose", action="store_true", help="log to stderr; show every step")
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print one JSON object")

    def prefer(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--prefer", choices=["quality", "balanced", "cost"],
                        help="what learned outcomes trade off (default: the manifest's, else balanced)")

    def budget(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--max-rounds", type=int, help="review-and-correct rounds (default 1: no review)")
        sp.add_argument("--max-depth", type=int, help="how deep the conductor may call itself (default 2)")
        sp.add_argument("--max-total-tokens", type=int, help="stop before the run could exceed this many tokens")
        sp.add_argument("--max-usd", type=float, help="stop before the run could exceed this cost")

    for name, help_text in (("solve", "plan a task and run the workflow"), ("plan", "plan only; spend nothing")):
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("task", help="the task; `-` reads it from stdin")
        sp.add_argument("--use", action="append", metavar="WORKER", help="only these worker ids (repeatable)")
        sp.add_argument("--max-steps", type=_count)  # its bound: check_request
        sp.add_argument("--strategy", default="conductor", help="conductor (default), moa, single:<worker>, or "
                        "recipe:<name>[:<worker>] (e.g. recipe:program)")
        prefer(sp)
        budget(sp)
        common(sp)
    for name, help_text in (("eval", "run a suite under several strategies, grade and compare them"),
                            ("calibrate", "seed a new pool's outcomes: eval every worker alone, every recipe "
                                          "and the conductor")):
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("suite", help="JSON Lines: {id, task, check} per line")
        if name == "eval":
            sp.add_argument("--strategies", help="comma-separated: conductor, moa, single:<worker>, "
                                                 "recipe:<name>[:<worker>] (default: conductor, moa, every "
                                                 "worker alone and every recipe)")
        sp.add_argument("--limit", type=_count, help="only the first N tasks")
        prefer(sp)
        common(sp)
    run_ref = "a run id, the start of one, or `last` (the newest run)"
    sp = sub.add_parser("rate", help="give a run a reward from 0 to 1; the conductor learns from it")
    sp.add_argument("run_id", help=run_ref)
    sp.add_argument("score", type=_score, help="0 unusable, 0.5 wrong but well formed, 1 correct")
    sp.add_argument("--note")
    common(sp)
    sp = sub.add_parser("resume", help="continue a run from its first unfinished step")
    sp.add_argument("run_id", help=run_ref)
    budget(sp)
    common(sp)
    sp = sub.add_parser("runs", help="recent runs, newest first")
    sp.add_argument("-n", "--limit", type=_count, default=20, help="how many (default 20)")
    sp.add_argument("--status", action="append", choices=[s.value for s in RunStatus],
                    help="only runs in this status (repeatable)")
    sp.add_argument("--strategy", help="only runs of this strategy: conductor, moa, single:<worker>, or host "
                                       "(a workflow the host wrote)")
    sp.add_argument("-q", "--query", help="only runs whose task or answer holds every word of this, any case")
    common(sp)
    sp.add_argument("-r", "--response", action="store_true",
                    help="print only the answer of the newest matching run")
    sp = sub.add_parser("usage", help="tokens and cost over the trace store, by worker, strategy or day")
    sp.add_argument("--since", help="a span such as 7d, 24h, 30m, or a date (default: everything)")
    sp.add_argument("--by", choices=["worker", "strategy", "day"], default="worker")
    common(sp)
    sp = sub.add_parser("show", help="one run's whole trace")
    sp.add_argument("run_id", help=run_ref)
    common(sp)
    sp.add_argument("-r", "--response", action="store_true", help="print only the answer")
    sp.add_argument("--mermaid", action="store_true", help="print the workflow as a Mermaid flowchart")
    sp = sub.add_parser("doctor", help="workers and their state, the conductor, the store")
    sp.add_argument("--check", action="store_true",
                    help="call each available worker once (1 token, concurrently); exit 1 when one fails")
    sp.add_argument("--timeout", type=float, default=15.0, help="seconds each --check call may take (default 15)")
    common(sp)
    sp = sub.add_parser("schema", help="print the worker manifest's JSON Schema (for editors)")
    sp.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    sp = sub.add_parser("pull", help="download the manifest's `hf:` conductor into the Hugging Face cache")
    sp.add_argument("--workers", help="worker manifest (YAML); default $CONDUCTOR_WORKERS")
    sp.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    for name, help_text in (("serve", "serve MCP (stdio by default)"),
                            ("ui", "serve MCP over HTTP with the web view of runs, and print the view's address")):
        sp = sub.add_parser(name, help=help_text)
        if name == "serve":
            sp.add_argument("--transport", choices=["stdio", "sse", "http"], default="stdio")
        else:
            sp.set_defaults(transport="http")
            sp.add_argument("--open", action="store_true", help="also open the address in a web browser")
        sp.add_argument("--host", default="127.0.0.1")
        sp.add_argument("--port", type=int, default=8765, help="0 picks a free port; the address is printed")
        sp.add_argument("--allowed-host", action="append", default=[],
                        help="a name clients reach this server by, e.g. conductor.lan; accepted in the Host header "
                             "bare and with the serving port, or with the port given here (repeatable)")
        sp.add_argument("--allowed-origin", action="append", default=[], help="Origin to accept (repeatable)")
        sp.add_argument("--stateless", action="store_true",
                        default=os.environ.get("CONDUCTOR_STATELESS", "").lower() in ("1", "true", "yes"),
                        help="streamable HTTP without MCP sessions, for replicas behind a round-robin load "
                             "balancer (default $CONDUCTOR_STATELESS); no server-initiated notifications")
        sp.add_argument("--grace-s", type=float, default=None,
                        help="seconds to exit in once told to stop (SIGTERM); default $CONDUCTOR_GRACE_S or 10")
        sp.add_argument("--adopt-s", type=float, default=None,
                        help="seconds between looks for runs whose server died, resumed here (0: never); "
                             "default $CONDUCTOR_ADOPT_S, or the heartbeat interval over HTTP and never on stdio")
        common(sp, json_flag=False)
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "solve": _solve, "plan": _plan, "resume": _resume, "runs": _list_runs, "show": _show, "doctor": _doctor,
    "serve": _serve, "ui": _serve, "eval": _eval, "calibrate": _eval, "rate": _rate, "pull": _pull, "usage": _usage,
    "schema": _schema,
}


# output modes that cannot go together: argparse reports them as usage errors
EXCLUSIVE = {"runs": ("json", "response"), "show": ("json", "response", "mermaid")}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = [f"--{k}" for k in EXCLUSIVE.get(args.command, ()) if getattr(args, k)]
    if len(chosen) > 1:
        parser.error(f"{args.command}: {' and '.join(chosen)} cannot go together; choose one")
    level = logging.INFO if args.verbose else logging.WARNING
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(RedactingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[stream])
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # a worker call cut short by Ctrl-C leaves litellm's inner coroutine unawaited: noise, not news
    warnings.filterwarnings("ignore", message=r"coroutine '.*acompletion' was never awaited", category=RuntimeWarning)
    if args.command in ("solve", "plan", "resume", "eval", "calibrate", "serve", "ui"):
        from .. import telemetry

        telemetry.configure()  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set; flushed at exit
    handler = COMMANDS[args.command]
    try:
        if args.command in ("solve", "plan", "resume", "eval", "calibrate"):
            result: int = anyio.run(handler, args)
        else:
            result = handler(args)
    except ConductorError as exc:
        sys.stderr.write(f"mcp-conductor {args.command}: {exc}\n")
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt:
        run_id = getattr(args, "started_run", None)
        sys.stderr.write(f"interrupted: resume with `mcp-conductor resume {run_id}`\n" if run_id
                         else "interrupted before a run was stored: nothing to resume\n"
                         if args.command in ("solve", "plan") else "interrupted\n")
        return 130
    except Exception as exc:
        leaf = leaf_error(exc)
        if isinstance(leaf, ConductorError):  # raised on purpose inside a task group
            sys.stderr.write(f"mcp-conductor {args.command}: {leaf}\n")
            return 2 if isinstance(leaf, UsageError) else 1
        # one line, not a traceback; -v logs the traceback too
        log.info("traceback of the error below", exc_info=exc)
        sys.stderr.write(f"mcp-conductor {args.command}: {internal_message(exc)}"
                         f"{'' if args.verbose else ' (-v shows the traceback)'}\n")
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
