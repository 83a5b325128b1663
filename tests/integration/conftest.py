"""Fixtures the integration tests share: a server's environment on the scripted workers, and processes to stop."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import server_env, stop_proc, write_manifest


@pytest.fixture
def env(tmp_path: Path, server: ScriptedServer) -> dict[str, str]:
    """`serve`'s environment: the scripted workers' manifest and a fresh store in tmp_path."""
    return server_env(tmp_path, write_manifest(tmp_path, server.base_url))


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started, stopped at its end whatever happened (SIGTERM, then SIGKILL after 10 s)."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        stop_proc(p)
