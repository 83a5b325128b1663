"""`runs`, `show`, `resume`, `rate` as a user reads the log: real CLI processes over a real store whose runs
went through litellm to the scripted server."""

from __future__ import annotations

import datetime
import functools
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from conductor_mcp.models import PlanInfo, Run, Workflow
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.workers.registry import load_registry

from .. import conftest
from ..conftest import root_run_ids
from ..servers.openai_server import ScriptedServer
from .mcp_helpers import WORKFLOW

CLI = [sys.executable, "-m", "conductor_mcp"]


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, input=stdin, timeout=240)


def ok(env: dict[str, str], *args: str) -> str:
    proc = cli(env, *args)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    return proc.stdout


@pytest.fixture
def engine(env: dict[str, str]) -> Iterator[Engine]:
    store = Store(env["CONDUCTOR_DB"])
    yield Engine(load_registry(env["CONDUCTOR_WORKERS"]), store)
    store.close()


def solve(engine: Engine, task: str, **kw: Any) -> Run:
    return anyio.run(functools.partial(conftest.solve, engine, task, **kw))


def host_run(engine: Engine, task: str) -> Run:
    planned = anyio.run(functools.partial(engine.plan, task, workflow=WORKFLOW))
    return anyio.run(RunManager(engine=engine).drive, planned.id)


def is_iso(text: Any) -> bool:
    return isinstance(text, str) and datetime.datetime.fromisoformat(text).tzinfo is not None


def test_runs_lines_up_filters_and_prints_answers(env: dict[str, str], engine: Engine, server: ScriptedServer) -> None:
    host = host_run(engine, "Compare two drafts\nREPLY: merged")
    single = solve(engine, "Über-Größe prüfen\nREPLY: groß", strategy="single:fast")
    server.set_faults(fail_models={"scripted-slow": "404"})
    failed = solve(engine, "Ask the slow one\nREPLY: never", strategy="single:slow")
    server.set_faults(fail_models={})
    assert (host.status.value, single.status.value, failed.status.value) == ("completed", "completed", "failed")

    table = ok(env, "runs").splitlines()
    head = table[0]
    assert len(table) == 4 and all(len(r.id) == 24 for r in (host, single, failed))
    by_id = {line.split()[0]: line for line in table[1:]}
    assert set(by_id) == {host.id, single.id, failed.id}  # whole ids, each in its own column
    for column in ("status", "created", "strategy", "task"):  # every row's cell starts where its head does
        at = head.index(column)
        assert all(line[at - 1] == " " and line[at] != " " for line in table[1:]), column
    for number in ("steps", "calls", "tokens", "secs"):  # numbers end where their head ends
        end = head.index(number) + len(number)
        assert all(line[end - 1].isdigit() and line[end] == " " for line in table[1:]), number
    strategy_at = head.index("strategy")
    assert by_id[host.id][strategy_at:].startswith("host ")  # the host wrote it: not `conductor`
    assert by_id[single.id][strategy_at:].startswith("single:fast ")

    assert [line.split()[0] for line in ok(env, "runs", "-n", "2").splitlines()[1:]] == [failed.id, single.id]
    assert [line.split()[0] for line in ok(env, "runs", "--status", "failed").splitlines()[1:]] == [failed.id]
    assert [r["run_id"] for r in json.loads(ok(env, "runs", "--strategy", "host", "--json"))] == [host.id]
    # every word, in the task or the answer, in any case of any script
    assert [r["run_id"] for r in json.loads(ok(env, "runs", "-q", "GRÖSSE groß", "--json"))] == [single.id]
    assert json.loads(ok(env, "runs", "-q", "merged", "--json"))[0]["run_id"] == host.id
    assert json.loads(ok(env, "runs", "-q", "nowhere to be found", "--json")) == []

    newest = cli(env, "runs", "-r")  # the newest run failed: it has no answer ...
    assert newest.returncode == 1 and newest.stdout == "" and f"run {failed.id} has no answer (failed" in newest.stderr
    assert ok(env, "runs", "-r", "--status", "completed") == "groß\n"  # ... the newest that has one, alone
    assert ok(env, "runs", "-r", "-q", "drafts") == "merged\n"

    listed = json.loads(ok(env, "runs", "--json"))
    assert [r["run_id"] for r in listed] == [failed.id, single.id, host.id]
    first = listed[-1]
    assert {"run_id", "status", "answer", "workflow", "usage", "steps", "strategy", "plan"} <= first.keys()
    assert is_iso(first["created_at"]) and is_iso(first["updated_at"]) and first["strategy"] == "host"
    assert all("output" not in s for s in first["steps"])  # summaries: step outputs stay in `show`
    assert first["usage"]["calls"] == 3 and first["running_s"] > 0


def test_show_resume_and_rate_by_prefix_or_last(env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    done = host_run(engine, "Write two drafts\nREPLY: final")
    planned = ok(env, "plan", "Say hello.\nREPLY: hello", "--strategy", "single:strong", "--json")
    run_id = json.loads(planned)["run_id"]
    refused = cli(env, "rate", run_id[:8], "1")  # planned: no answer yet to judge
    assert refused.returncode == 1 and refused.stdout == "", refused
    assert refused.stderr == (f"mcp-conductor rate: run {run_id} is planned, not finished: only a completed, "
                              "failed, cancelled or budget_exceeded run is rated; resume it, and rate it when it "
                              "has finished\n")

    resumed = json.loads(ok(env, "resume", run_id[:8], "--json"))
    assert resumed["run_id"] == run_id and resumed["status"] == "completed" and resumed["answer"] == "hello"
    assert ok(env, "show", "last", "-r") == "hello\n"  # the newest run, its answer alone
    assert ok(env, "show", done.id[:6], "-r") == "final\n"
    assert f"run {run_id}: reward 1" in ok(env, "rate", "last", "1")

    text = ok(env, "show", done.id[:10])
    assert text.startswith(f"run {done.id}  completed") and "strategy host" in text and "answer:\nfinal" in text
    trace = json.loads(ok(env, "show", done.id[:5], "--json"))
    assert trace["id"] == done.id and is_iso(trace["created_at"]) and is_iso(trace["updated_at"])
    assert all(is_iso(s["started_at"]) and is_iso(s["ended_at"]) for s in trace["steps"])
    assert all(is_iso(a["started_at"]) for s in trace["steps"] for a in s["attempts"])
    diagram = ok(env, "show", done.id[:7], "--mermaid")
    assert diagram.startswith("flowchart TD") and "s0 --> s2" in diagram and "s1 --> s2" in diagram

    # 16 hex digits can start an id: with 17 more runs, two ids surely share their first
    store = Store(env["CONDUCTOR_DB"])
    wf = Workflow.model_validate(WORKFLOW)
    ids = [store.create_run(f"filler {i}", wf, PlanInfo(source="host", planner="host")) for i in range(17)]
    store.close()
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in [*ids, done.id, run_id]) > 1)
    ambiguous = cli(env, "show", shared)
    assert ambiguous.returncode == 2 and ambiguous.stdout == ""
    assert f"run_id: {shared!r} is the start of several run ids" in ambiguous.stderr
    candidates = [i for i in [*ids, done.id, run_id] if i.startswith(shared)]
    assert all(f"  {c}  " in ambiguous.stderr for c in candidates)
    missing = cli(env, "resume", "zz")
    assert missing.returncode == 2 and "no run 'zz' and none whose id starts so" in missing.stderr


def test_secs_is_time_spent_running(env: dict[str, str], engine: Engine, server: ScriptedServer) -> None:
    """A run planned an hour ago and run now spent seconds running, not an hour."""
    planned = anyio.run(functools.partial(engine.plan, "Say hi.\nREPLY: hi", strategy="single:slow"))
    with sqlite3.connect(env["CONDUCTOR_DB"]) as db:  # as if `plan` had run an hour ago
        db.execute("UPDATE runs SET created_at = created_at - 3600, updated_at = updated_at - 3600 WHERE id=?",
                   (planned.id,))
    server.set_latency(model_latency={"scripted-slow": 0.5})
    ok(env, "resume", planned.id)
    listed = json.loads(ok(env, "runs", "--json"))[0]
    trace = json.loads(ok(env, "show", planned.id, "--json"))
    call_s = trace["steps"][0]["attempts"][0]["latency_s"]
    assert listed["status"] == "completed" and call_s >= 0.5
    assert call_s <= listed["running_s"] < 3600  # the worker call ran within it; the hour waiting did not count
    row = next(line for line in ok(env, "runs").splitlines() if line.startswith(planned.id))
    assert float(row.split()[9]) == round(listed["running_s"], 1)
    assert trace["running_s"] >= listed["running_s"]


def test_task_from_stdin(env: dict[str, str]) -> None:
    piped = cli(env, "solve", "-", "--strategy", "single:fast", "--json",
                stdin="Piped task,\nover two lines.\nREPLY: from stdin\n")
    assert piped.returncode == 0, piped.stderr
    result = json.loads(piped.stdout)
    assert result["status"] == "completed" and result["answer"] == "from stdin"
    assert result["task"] == "Piped task,\nover two lines.\nREPLY: from stdin"
    empty = cli(env, "plan", "-", stdin="  \n")
    assert empty.returncode == 2 and "task: empty" in empty.stderr


def test_usage_errors_exit_2_runtime_errors_exit_1(env: dict[str, str], server: ScriptedServer,
                                                    tmp_path: Path) -> None:
    for args, says in ((["runs", "--bogus"], "unrecognized arguments: --bogus"),
                       (["runs", "--status", "done"], "invalid choice: 'done'"),
                       (["runs", "-n", "0"], "0; give 1 or more"),
                       (["runs", "--json", "-r"], "--json and --response cannot go together"),
                       (["show", "last", "--mermaid", "-r"], "--response and --mermaid cannot go together"),
                       (["solve", "   "], "task: empty"),
                       (["plan", "x", "--max-steps", "9"], "9; allowed 1..5"),
                       (["plan", "x", "--use", "ghost"], "--use: workers: unknown id(s) ['ghost']"),
                       (["plan", "x", "--strategy", "single:ghost"], "single:ghost: unknown or unavailable"),
                       (["plan", "x", "--strategy", "best"], "--strategy: strategy: 'best'"),
                       (["show", "last"], "holds no runs yet"),
                       (["usage", "--since", "last tuesday"], "--since: 'last tuesday'")):
        proc = cli(env, *args)
        assert proc.returncode == 2 and says in proc.stderr and proc.stdout == "", (args, proc.stderr)
    assert server.stats()["requests"] == 0  # nothing was planned or called

    server.set_faults(fail_models={"scripted-fast": "404"})
    failed = cli(env, "solve", "Fail.\nREPLY: no", "--strategy", "single:fast")
    assert failed.returncode == 1 and "failed" in failed.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers:\n  - {id: a, model: openai/x, fallback: ghost}\n")
    proc = cli(env, "plan", "x", "--workers", str(bad))
    assert proc.returncode == 1 and f"{bad}: worker 'a' (workers[0]): field 'fallback'" in proc.stderr


def test_ctrl_c_names_the_run_to_resume(env: dict[str, str], server: ScriptedServer) -> None:
    server.set_latency(model_latency={"scripted-slow": 60.0})
    # SIGINT as a terminal sends it, to a CLI started with the default handler (a background job may have
    # inherited SIGINT ignored)
    proc = subprocess.Popen([*CLI, "solve", "Take your time.\nREPLY: done", "--strategy", "single:slow"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while server.stats(include_calls=False)["in_flight"] < 1:  # the worker call has reached the server
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    store = Store(env["CONDUCTOR_DB"])
    [run_id] = root_run_ids(env["CONDUCTOR_DB"])
    run = store.get_run(run_id)
    assert proc.returncode == 130, err
    assert err.endswith(f"interrupted: resume with `mcp-conductor resume {run.id}`\n"), err
    assert "Traceback" not in err and "Warning" not in err
    assert run.status.value == "cancelled" and run.steps[0].status.value == "pending"
    assert [a.status for a in run.steps[0].attempts] == ["cancelled"]  # the call in flight, cut short
    server.set_latency(model_latency={})
    done = json.loads(ok(env, "resume", run.id, "--json"))
    assert done["status"] == "completed" and done["answer"] == "done"
    store.close()
