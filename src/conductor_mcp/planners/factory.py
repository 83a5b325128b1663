"""Build the planner a registry's `conductor` section asks for."""

from __future__ import annotations

from ..registry import Registry
from .base import ModelPlanner
from .gguf import GGUFPlanner
from .remote import RemotePlanner


def make_planner(registry: Registry) -> ModelPlanner:
    spec = registry.conductor
    if spec.model:
        return RemotePlanner(spec.model, fmt=spec.format, api_base=spec.api_base, api_key_env=spec.api_key_env,
                             temperature=spec.temperature, params=spec.params)
    path = registry.conductor_gguf()
    assert path is not None  # ConductorSpec guarantees gguf or model
    return GGUFPlanner(path, fmt=spec.format, n_ctx=spec.n_ctx, n_threads=spec.n_threads,
                       n_gpu_layers=spec.n_gpu_layers, temperature=spec.temperature, params=spec.params)
