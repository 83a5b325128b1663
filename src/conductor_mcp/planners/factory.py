"""Build the planner a registry's `conductor` section asks for."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import anyio

from ..workers.llm import Reply
from ..workers.registry import Registry
from .base import ModelPlanner, PlanResult, ReviewResult, Watch
from .gguf import GGUFPlanner
from .remote import RemotePlanner


def make_planner(registry: Registry) -> ModelPlanner:
    planner = _planner(registry)
    planner.worker_names = registry.conductor.worker_names
    planner.plan_timeout_s = registry.conductor.plan_timeout_s
    return planner


def _planner(registry: Registry) -> ModelPlanner:
    spec = registry.conductor
    if spec.model:
        return RemotePlanner(spec.model, fmt=spec.format, api_base=spec.api_base, api_key_env=spec.api_key_env,
                             temperature=spec.temperature, params=spec.params, price=spec.price)

    def gguf_planner(path: Path | None) -> GGUFPlanner:
        assert path is not None  # ConductorSpec guarantees gguf, hf or model
        return GGUFPlanner(path, fmt=spec.format, n_ctx=spec.n_ctx, n_threads=spec.n_threads,
                           n_gpu_layers=spec.n_gpu_layers, temperature=spec.temperature, params=spec.params)

    if not registry.conductor_downloaded():
        return DownloadingPlanner(lambda: gguf_planner(registry.conductor_gguf(download=True)),
                                  f"gguf:{spec.hf}/{spec.file}", spec.format)
    return gguf_planner(registry.conductor_gguf())


class DownloadingPlanner(ModelPlanner):
    """An `hf` conductor not in the cache yet: the first plan downloads it in a thread, so that a server
    keeps answering meanwhile, then every call goes to the GGUF planner built on the file."""

    def __init__(self, build: Callable[[], GGUFPlanner], name: str, fmt: Literal["json", "paper"]) -> None:
        self._build = build
        self._inner: GGUFPlanner | None = None
        self._lock = threading.Lock()  # two first plans at once download once
        self.name = name
        self.fmt = fmt

    def _build_once(self) -> GGUFPlanner:
        with self._lock:
            if self._inner is None:
                self._inner = self._build()
            return self._inner

    async def _ready(self) -> GGUFPlanner:
        inner = self._inner
        if inner is None:
            inner = await anyio.to_thread.run_sync(self._build_once)
        self.name = inner.name
        inner.worker_names = self.worker_names
        inner.plan_timeout_s = self.plan_timeout_s
        return inner

    async def plan(self, *args: Any, **kwargs: Any) -> PlanResult:
        return await (await self._ready()).plan(*args, **kwargs)

    async def review(self, *args: Any, **kwargs: Any) -> ReviewResult:
        return await (await self._ready()).review(*args, **kwargs)

    async def generate(self, messages: list[dict[str, str]], constraint: Any, max_steps: int,
                       attempt: int, watch: Watch | None = None) -> Reply:
        return await (await self._ready()).generate(messages, constraint, max_steps, attempt, watch)
