"""bench.pg_path: its engine child makes real one-step runs on a real PostgreSQL store through the scripted
OpenAI-compatible server, as the servers make them, and reports their medians."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg

from bench.pg_path import RUNS
from bench.scripted import ROOT, bench_env

from ..servers.openai_server import ScriptedServer
from ..servers.postgres_server import PostgresServer


def test_the_engine_child_makes_its_runs_on_postgresql(postgres: PostgresServer, server: ScriptedServer) -> None:
    url = postgres.new_database()
    child = subprocess.run([sys.executable, "-m", "bench.pg_path", "--child", server.base_url, url], cwd=ROOT,
                           env=bench_env(), capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    figures = json.loads(child.stdout.splitlines()[-1])
    assert set(figures) == {"wall_ms", "cpu_ms"} and figures["cpu_ms"] > 0 and figures["wall_ms"] > 0
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'completed' AND answer IS NOT NULL").fetchone()
    assert row is not None and row[0] == 30 + RUNS  # the warm-up's and the measured runs, each completed
