"""A conductor that is a local GGUF model, with decoding constrained to the workflow's schema."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..local_model import LocalModel
from ..models import Usage
from .base import Generation, ModelPlanner
from .grammar import workflow_grammar
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

    def constraint(self, names: Sequence[str], max_steps: int, allow_empty: bool,
                   final: Sequence[str] | None = None) -> Any:
        # a GBNF grammar equivalent to the JSON schema, nested so that llama.cpp tracks one alternative;
        # the outcomes' choice of final worker is enforced while decoding, where a small model cannot miss
        return workflow_grammar(names, max_steps, allow_empty=allow_empty, final=final)

    async def generate(self, messages: list[dict[str, str]], constraint: Any, max_steps: int,
                       attempt: int) -> Generation:
        from llama_cpp.llama_grammar import LlamaGrammar

        params: dict[str, Any] = {
            "temperature": self.temperature if attempt == 1 else max(self.temperature, 0.7),
            "max_tokens": max_plan_tokens(max_steps) if constraint else 1024,
            **self.params,
        }
        if constraint is not None:
            params["grammar"] = LlamaGrammar.from_string(constraint, verbose=False)
        reply = await self.model.chat(messages, **params)
        return Generation(reply.text, Usage(prompt_tokens=reply.prompt_tokens,
                                            completion_tokens=reply.completion_tokens, cost_usd=0.0, calls=1))
