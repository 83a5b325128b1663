"""Run a measurement in a child process with a hard time limit, collecting its rows as it goes.

A llama.cpp call cannot be interrupted, and on a loaded machine one plan can take minutes; a child
process can be killed, and the JSON lines it flushed so far still count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from .scripted import ROOT, bench_env


def run_rows(module: str, args: list[str], limit_s: float) -> tuple[list[dict[str, Any]], bool]:
    """`python -m MODULE *ARGS ROWS.jsonl`, killed after `limit_s`; its rows, and whether it finished."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        # its own process group, so that killing it also ends what it started (the scripted workers)
        proc = subprocess.Popen([sys.executable, "-m", module, *args, str(rows_file)], cwd=ROOT, env=bench_env(),
                                stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            finished = proc.wait(limit_s) == 0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            finished = False
        lines = rows_file.read_text().splitlines() if rows_file.exists() else []
    return [json.loads(line) for line in lines if line.strip()], finished


def emit(out: TextIO, row: dict[str, Any]) -> None:
    """Write one row and flush it, so a killed child keeps it."""
    out.write(json.dumps(row) + "\n")
    out.flush()
