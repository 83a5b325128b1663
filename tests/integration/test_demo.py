"""`make demo` as a new user runs it right after install: offline, on the bundled model, and it says what it
was, where its trace went, and what to run next; the command it suggests shows the demo's run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_says_what_it_was_and_what_to_run_next(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")
           and k not in ("OLLAMA_API_BASE", "CONDUCTOR_WORKERS")}
    # the venv running these tests has the project installed: `-o install` keeps make from installing again
    proc = subprocess.run(["make", "-s", "--no-print-directory", "-o", "install", "demo", f"VENV={sys.prefix}",
                           f"CONDUCTOR_DB={db}"], cwd=ROOT, env={**env, "CONDUCTOR_DB": str(db)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "a check of the pipeline" in out and f"The trace is in {db}" in out
    suggested = re.search(rf"CONDUCTOR_DB={re.escape(str(db))} \S*mcp-conductor runs", out)
    assert suggested, out
    runs = subprocess.run([sys.executable, "-m", "conductor_mcp", "runs"], env={**env, "CONDUCTOR_DB": str(db)},
                          capture_output=True, text=True, timeout=120)
    assert runs.returncode == 0 and "haiku" in runs.stdout, runs.stdout  # the demo's run, not an empty table
    # every step's answer (the bundled model loops on one sentence without its repeat penalty)
    show = subprocess.run([sys.executable, "-m", "conductor_mcp", "show", "last", "--json"],
                          env={**env, "CONDUCTOR_DB": str(db)}, capture_output=True, text=True, timeout=120)
    steps = json.loads(show.stdout)["steps"]
    assert steps and all(s["status"] == "completed" for s in steps), show.stdout
    for step in steps:
        sentences = [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+|\n+", step["output"]) if len(s.strip()) > 15]
        repeated = {s for s in sentences if sentences.count(s) > 1}
        assert not repeated, (step["index"], repeated, step["output"])
