"""Workers for the benchmarks: the scripted OpenAI-compatible server, run as a separate process.

A separate process keeps the server's CPU time (uvicorn, JSON, reply synthesis) out of the process
being measured; the only thing shared is the machine's two cores. Workers reach it through litellm
with `openai/scripted-<id>` model strings, exactly as they would reach a cloud provider.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from conductor_mcp.models import Manifest, Price, WorkerSpec
from conductor_mcp.workers.registry import Registry, build_registry

ROOT = Path(__file__).resolve().parent.parent

# Prices per million tokens, strongest (and dearest) first: the conductor prompt says the first is strongest.
PRICES: dict[str, Price] = {
    "strong": Price(input_per_mtok=1.25, output_per_mtok=10.0),
    "coder": Price(input_per_mtok=0.30, output_per_mtok=2.50),
    "cheap": Price(input_per_mtok=0.10, output_per_mtok=0.40),
}
DESCRIPTIONS: dict[str, str] = {
    "strong": "strongest at maths, code and careful reasoning; slow and costly",
    "coder": "good at writing and fixing code; mid price",
    "cheap": "fast and cheap; fine for drafts, lists and simple facts",
}
POOL: tuple[str, ...] = ("strong", "coder", "cheap")


def bench_env() -> dict[str, str]:
    """The environment for child processes: no provider keys (nothing may leave 127.0.0.1)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "OLLAMA_API_BASE"}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class ScriptedProcess:
    """`python -m tests.servers.openai_server` in a child process, stopped on exit."""

    def __init__(self, latency_ms: float = 0.0, model_latency_ms: Mapping[str, float] | None = None) -> None:
        self.latency_ms = latency_ms
        self.model_latency_ms = dict(model_latency_ms or {})
        self.base_url = ""
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> ScriptedProcess:
        cmd = [sys.executable, "-m", "tests.servers.openai_server", "--port", "0",
               "--latency-ms", str(self.latency_ms)]
        for model, ms in self.model_latency_ms.items():
            cmd += ["--model-latency", f"{model}={ms}"]
        self._proc = subprocess.Popen(cmd, cwd=ROOT, env=bench_env(), stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self._proc.kill()
            raise RuntimeError(f"scripted server did not start (said {line!r})")
        self.base_url = line.removeprefix("READY ")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        root = self.base_url.removesuffix("/v1")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(root + path, data=data, method="GET" if body is None else "POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("/control/stats?calls=0")
        return result

    def reset(self) -> None:
        self._control("/control/reset", {})


def worker_specs(base_url: str, ids: Sequence[str] = POOL, *, priced: bool = True,
                 max_concurrency: int = 64, timeout_s: float = 30.0) -> list[WorkerSpec]:
    """One litellm worker per id on the scripted server (model `openai/scripted-<id>`)."""
    return [WorkerSpec(id=i, model=f"openai/scripted-{i}", api_base=base_url,
                       description=DESCRIPTIONS.get(i, f"scripted worker {i}"), timeout_s=timeout_s,
                       max_concurrency=max_concurrency, price=PRICES.get(i) if priced else None)
            for i in ids]


def scripted_registry(base_url: str, ids: Sequence[str] = POOL, **kwargs: Any) -> Registry:
    return build_registry(Manifest(workers=worker_specs(base_url, ids, **kwargs)), "bench manifest")


def write_manifest(path: Path, base_url: str, ids: Sequence[str] = POOL, **kwargs: Any) -> Path:
    """The same pool as a YAML manifest, for servers started as a separate process."""
    workers = [s.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
               for s in worker_specs(base_url, ids, **kwargs)]
    # exclude_defaults drops max_concurrency/timeout when they equal the defaults; that is what we want
    path.write_text(yaml.safe_dump({"workers": workers}, sort_keys=False))
    return path
