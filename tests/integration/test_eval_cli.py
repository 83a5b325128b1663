"""`eval`, `calibrate` and `rate` as a user runs them: real processes, litellm over HTTP, a real store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conductor_mcp.store import Store

from ..servers.openai_server import ScriptedServer
from .test_cli import cli
from .test_learning import right, wrong

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path, server: ScriptedServer) -> dict[str, str]:
    import os

    server.script(model="scripted-bad", reply=wrong)
    server.script(model="scripted-good", reply=right)
    manifest = tmp_path / "workers.yaml"
    manifest.write_text(f"""
conductor: {{gguf: bundled, max_steps: 3}}
workers:
  - {{id: bad, model: openai/scripted-bad, api_base: "{server.base_url}", description: the strongest}}
  - {{id: good, model: openai/scripted-good, api_base: "{server.base_url}", description: small}}
""")
    base = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "OLLAMA_API_BASE"}
    return {**base, "CONDUCTOR_DB": str(tmp_path / "t.db"), "CONDUCTOR_WORKERS": str(manifest)}


def suite(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "suite.jsonl"
    rows = [{"id": f"t{i}", "task": f"A box has {10 + i} red and {5 + i} blue balls. How many balls?",
             "check": {"type": "number", "answer": 15 + 2 * i}} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_eval_grades_stores_rewards_and_compares(env: dict[str, str], tmp_path: Path) -> None:
    proc = cli("eval", str(suite(tmp_path)), "--strategies", "single:bad,single:good", "--json", env=env)
    report = json.loads(proc.stdout)
    good, bad = report["strategies"]["single:good"], report["strategies"]["single:bad"]
    assert (good["correct"], good["n"], good["accuracy"]) == (3, 3, 1.0)
    assert (bad["correct"], bad["accuracy"]) == (0, 0.0)
    assert good["mean_tokens"] > 0 and good["mean_calls"] == 1 and good["mean_seconds"] >= 0
    assert "[6/6]" in proc.stderr  # progress while it runs
    assert len(report["runs"]) == 6 and all(r["run_id"] for r in report["runs"])
    run = next(r for r in report["runs"] if r["strategy"] == "single:bad")
    trace = json.loads(cli("show", run["run_id"], "--json", env=env).stdout)
    assert trace["reward"] == 0 and trace["reward_source"] == "eval" and "expected 15" in trace["reward_note"]
    table = cli("eval", str(suite(tmp_path, 1)), "--strategies", "single:good", env=env).stdout
    assert "single:good" in table and "1/1" in table and "100%" in table

    # a user's rating replaces the grade, and shows in `runs` and `show`
    assert "reward 1" in cli("rate", run["run_id"], "1", "--note", "actually fine", env=env).stdout
    assert "reward: 1 (user): actually fine" in cli("show", run["run_id"], env=env).stdout
    runs = cli("runs", "--json", env=env).stdout
    assert {r["run_id"]: r["reward"] for r in json.loads(runs)}[run["run_id"]] == 1
    assert "reward" in cli("runs", env=env).stdout.splitlines()[0]


def test_eval_and_rate_errors(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "task": "x", "check": {"type": "number", "answer": 1}}\n'
                   '{"id": "b", "task": "y", "check": {"type": "number"}}\n')
    proc = cli("eval", str(bad), env=env, check=False)
    assert proc.returncode == 1 and "bad.jsonl:2" in proc.stderr and "answer" in proc.stderr
    proc = cli("eval", str(suite(tmp_path)), "--strategies", "single:ghost", env=env, check=False)
    assert proc.returncode == 2 and "ghost" in proc.stderr
    proc = cli("rate", "nope", "1", env=env, check=False)
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr
    proc = cli("rate", "nope", "1.5", env=env, check=False)
    assert proc.returncode == 2 and "outside 0..1" in proc.stderr


def test_calibrate_seeds_outcomes_that_the_next_plan_uses(env: dict[str, str], tmp_path: Path) -> None:
    proc = cli("calibrate", str(suite(tmp_path, 3)), "--json", env=env)
    report = json.loads(proc.stdout)
    assert set(report["strategies"]) == {"single:bad", "single:good", "recipe:draft-refine", "conductor"}
    planned = json.loads(cli("plan", "A box has 40 red and 2 blue balls. How many balls?", "--json",
                             env=env).stdout)
    assert planned["workflow"]["steps"][-1]["worker"] == "good"
    trace = json.loads(cli("show", planned["run_id"], "--json", env=env).stdout)
    assert trace["plan"]["prior"]["final"] == ["good"] and trace["plan"]["prior"]["outcomes"] >= 6


def test_eval_counts_a_failed_run_as_wrong_and_runs_python_checks(env: dict[str, str], tmp_path: Path,
                                                                   server: ScriptedServer) -> None:
    """A worker that refuses (404 model not found) fails its runs: each is graded 0 with the reason, not
    dropped. `--limit` takes the first tasks; a python check runs the answer's code through the CLI."""
    server.clear_scripts()  # the code task's rule first: the first rule that matches answers
    server.script(contains="def double", reply="Here:\n```python\ndef double(x):\n    return 2 * x\n```")
    server.script(model="scripted-good", reply=right)
    server.set_faults(fail_models={"scripted-dead": "404"})
    manifest = Path(env["CONDUCTOR_WORKERS"])
    manifest.write_text(manifest.read_text() + f'  - {{id: dead, model: openai/scripted-dead, '
                        f'api_base: "{server.base_url}"}}\n')
    path = tmp_path / "mixed.jsonl"
    rows = [{"id": "code", "task": "Write `def double(x)` returning twice x.",
             "check": {"type": "python", "tests": "assert double(4) == 8\nassert double(-1) == -2",
                       "entry_point": "double"}},
            {"id": "sum", "task": "A box has 10 red and 5 blue balls. How many balls?",
             "check": {"type": "number", "answer": 15}},
            {"id": "never", "task": "This third task is past the limit.", "check": {"type": "exact", "answer": "x"}}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = json.loads(cli("eval", str(path), "--strategies", "single:good,single:dead", "--limit", "2",
                            "--json", env=env).stdout)
    good, dead = report["strategies"]["single:good"], report["strategies"]["single:dead"]
    assert (good["correct"], good["n"]) == (2, 2) and (dead["correct"], dead["n"]) == (0, 2)
    failed = [r for r in report["runs"] if r["strategy"] == "single:dead"]
    assert {r["task_id"] for r in report["runs"]} == {"code", "sum"}
    assert all(r["status"] == "failed" and r["score"] == 0 for r in failed), failed
    trace = json.loads(cli("show", failed[0]["run_id"], "--json", env=env).stdout)
    assert trace["reward"] == 0 and "run failed" in trace["reward_note"]
    proc = cli("eval", str(path), "--limit", "0", env=env, check=False)
    assert proc.returncode == 2 and "--limit" in proc.stderr


def recorded(db: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Each recorded eval's command, suite and report, newest first."""
    store = Store(db)
    try:
        return [(e.command, e.suite, store.get_eval(e.eval_id).report) for e in store.list_evals()]
    finally:
        store.close()


def test_eval_and_calibrate_are_recorded_for_the_web_view(env: dict[str, str], tmp_path: Path) -> None:
    path = str(suite(tmp_path, 1))
    proc = cli("eval", path, "--strategies", "single:good,single:bad", "--json", env=env)
    assert "recorded as eval " in proc.stderr and "/ui/evals/" in proc.stderr
    assert recorded(env["CONDUCTOR_DB"]) == [("eval", path, json.loads(proc.stdout))]
    calibrated = json.loads(cli("calibrate", path, "--json", env=env).stdout)
    assert recorded(env["CONDUCTOR_DB"])[0] == ("calibrate", path, calibrated)


def test_an_eval_is_recorded_before_it_prints(env: dict[str, str], tmp_path: Path) -> None:
    """Printing the table can fail (a full disk, a closed pipe): the record is already kept by then."""
    import subprocess
    import sys

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full to make printing fail")
    path = str(suite(tmp_path, 1))
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "conductor_mcp", "eval", path, "--strategies", "single:good"],
                              env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=240)
    assert proc.returncode != 0, proc.stderr  # the table could not be written
    [(command, suite_path, report)] = recorded(env["CONDUCTOR_DB"])
    assert (command, suite_path) == ("eval", path)
    assert list(report["strategies"]) == ["single:good"] and report["strategies"]["single:good"]["correct"] == 1


def test_a_read_only_store_still_prints_the_figures(env: dict[str, str], tmp_path: Path) -> None:
    db = Path(env["CONDUCTOR_DB"])
    Store(db).close()
    db.chmod(0o444)
    try:
        proc = cli("eval", str(suite(tmp_path, 1)), "--strategies", "single:good", "--json", env=env)
    finally:
        db.chmod(0o644)
    report = json.loads(proc.stdout)
    assert report["strategies"]["single:good"]["n"] == 1  # every run failed to start, and says why
    assert f"warning: this eval was not recorded in the trace store: trace store {db} is read-only" in proc.stderr
    assert recorded(str(db)) == []
