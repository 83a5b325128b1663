"""Figure 1: process start to the tools/list answer over stdio, as a host starts the server."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .figures import Figure
from .scripted import bench_env, write_manifest
from .stats import summarise

CONSOLE_SCRIPT = Path(sys.executable).parent / "mcp-conductor"
REQUESTS: list[dict[str, Any]] = [
    {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
]


def _read_response(proc: subprocess.Popen[bytes], want_id: int) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server closed stdout before answering request {want_id}")
        msg: dict[str, Any] = json.loads(line)
        if msg.get("id") == want_id:
            return msg


def one_start(env: dict[str, str]) -> tuple[float, float, int]:
    """Seconds to the initialize answer and to the tools/list answer; size of the tools/list answer."""
    started = time.perf_counter()
    proc = subprocess.Popen([str(CONSOLE_SCRIPT), "serve"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    try:
        # Everything is written at once, as a host does; the server reads it when it is ready.
        proc.stdin.write(b"".join(json.dumps(r).encode() + b"\n" for r in REQUESTS))
        proc.stdin.flush()
        _read_response(proc, 1)
        initialized = time.perf_counter() - started
        tools = _read_response(proc, 2)
        listed = time.perf_counter() - started
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    size = len(json.dumps(tools["result"], separators=(",", ":")))
    return initialized, listed, size


def python_start(env: dict[str, str]) -> float:
    """The floor: a bare interpreter starting and exiting."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - started


def measure(repeats: int) -> Figure:
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        env = bench_env()
        env["CONDUCTOR_WORKERS"] = str(write_manifest(Path(tmp) / "workers.yaml", "http://127.0.0.1:9/v1"))
        env["CONDUCTOR_DB"] = str(Path(tmp) / "traces.db")
        one_start(env)  # warm-up: page cache and the store's first migration, which a host pays once
        samples = [one_start(env) for _ in range(repeats)]
        floor = summarise([python_start(env) for _ in range(repeats)])
    init = summarise([s[0] for s in samples])
    listed = summarise([s[1] for s in samples])
    size = samples[-1][2]
    return Figure(
        1, "Cold start: spawn to tools/list answer (stdio)",
        f"{listed.median:.3f} s ({listed.spread(digits=3)} s)", "< 1 s", listed.median < 1.0,
        f"median of {repeats} spawns of `mcp-conductor serve` (after 1 warm-up) writing initialize, "
        "notifications/initialized, tools/list to stdin; clock stops at the tools/list response line",
        {"tools_list_s": listed.as_dict(), "initialize_s": init.as_dict(), "python_bare_start_s": floor.as_dict(),
         "tools_list_chars": size},
        [f"Cold start: initialize answered at {init.median:.3f} s, tools/list at {listed.median:.3f} s; a bare "
         f"`python -c pass` takes {floor.median:.3f} s here, so imports and server set-up cost "
         f"{listed.median - floor.median:.3f} s. The tools/list answer is {size} characters (design cap 8,000)."],
    )
