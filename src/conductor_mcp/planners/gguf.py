"""A conductor that is a local GGUF model, with decoding constrained to the workflow's schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from ..local_model import LocalModel
from ..models import Usage
from .base import Generation, ModelPlanner
from .schema import max_plan_tokens


class GGUFPlanner(ModelPlanner):
    def __init__(self, path: Path, *, fmt: Literal["json", "paper"] = "json", n_ctx: int = 4096,
                 n_threads: int | None = None, n_gpu_layers: int = -1, temperature: float = 0.0,
                 params: dict[str, Any] | None = None) -> None:
        # its own instance: worker calls on the same file would evict the cached prompt prefix
        self.model = LocalModel(path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
        self.name = f"gguf:{path.name}"
        self.fmt = fmt
        self.temperature = temperature
        self.params = params or {}

    async def generate(self, messages: list[dict[str, str]], schema: dict[str, Any] | None,
                       max_steps: int, attempt: int) -> Generation:
        params: dict[str, Any] = {
            "temperature": self.temperature if attempt == 1 else max(self.temperature, 0.7),
            "max_tokens": max_plan_tokens(max_steps) if schema else 1024,
            **self.params,
        }
        if schema is not None:
            # the `json_object` spelling: llama-cpp-python silently ignores `json_schema`
            params["response_format"] = {"type": "json_object", "schema": schema}
        reply = await self.model.chat(messages, **params)
        return Generation(reply.text, Usage(prompt_tokens=reply.prompt_tokens,
                                            completion_tokens=reply.completion_tokens, cost_usd=0.0, calls=1))
