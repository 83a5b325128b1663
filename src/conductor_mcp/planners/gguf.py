"""A conductor that is a local GGUF model, with decoding constrained to the workflow's schema."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import WorkflowError
from ..workers.llm import ModelCall, Reply, gguf_complete
from ..workers.local_model import LocalModel
from .base import ModelPlanner, Watch
from .grammar import workflow_grammar
from .prompts import task_view
from .schema import max_plan_tokens

# below this the conductor would plan from too little of the task to be of use: fall back instead
MIN_TASK_VIEW_TOKENS = 64


class GGUFPlanner(ModelPlanner):
    def __init__(self, path: Path, *, fmt: Literal["json", "paper"] = "json", n_ctx: int = 4096,
                 n_threads: int | None = None, n_gpu_layers: int = -1, temperature: float = 0.0,
                 params: dict[str, Any] | None = None) -> None:
        # its own instance: worker calls on the same file would evict the cached prompt prefix
        self.model = LocalModel(path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
        self.name = f"gguf:{path.name}"
        self.path = path
        self.fmt = fmt
        self.temperature = temperature
        self.params = params or {}

    def constraint(self, names: Sequence[str], max_steps: int, allow_empty: bool,
                   final: Sequence[str] | None = None) -> Any:
        # a GBNF grammar equivalent to the JSON schema, nested so that llama.cpp tracks one alternative;
        # the outcomes' choice of final worker is enforced while decoding, where a small model cannot miss
        return workflow_grammar(names, max_steps, allow_empty=allow_empty, final=final)

    def call_spec(self, constraint: Any, max_steps: int) -> ModelCall:
        # the call as a budget sees it: free of charge, its tokens counted against max_total_tokens
        cap = int(self.params.get("max_tokens") or (max_plan_tokens(max_steps) if constraint else 1024))
        return ModelCall(id="conductor-gguf", backend="gguf", params={"max_tokens": cap})

    async def generate(self, messages: list[dict[str, str]], constraint: Any, max_steps: int,
                       attempt: int, watch: Watch | None = None) -> Reply:
        from llama_cpp.llama_grammar import LlamaGrammar

        call = self.call_spec(constraint, max_steps)
        defaults = {"temperature": self.temperature if attempt == 1 else max(self.temperature, 0.7), **self.params}
        overrides: dict[str, Any] = {}
        if constraint is not None:
            overrides["grammar"] = LlamaGrammar.from_string(constraint, verbose=False)
        if watch is not None:
            watch.max_tokens = int(call.params["max_tokens"])
        try:
            return await gguf_complete(self.model, call, messages, defaults=defaults,
                                       on_token=watch.token if watch is not None else None, **overrides)
        except ValueError as exc:  # llama.cpp: the prompt exceeds the context (fit() leaves a margin)
            raise WorkflowError(f"conductor: {exc}") from exc

    async def fit(self, task: str, build: Callable[[str], list[dict[str, str]]],
                  max_steps: int) -> tuple[list[dict[str, str]] | None, list[str]]:
        """Count the prompt with the model's own tokenizer against its context, keeping room for the reply.
        A task too long for it is seen as its first and last tokens around a marker: long tasks tend to put
        the question at one end (the material, then "summarise this"; or the question, then the material)."""
        n_ctx = self.model.n_ctx
        reply = int(self.call_spec(self.fmt == "json" or None, max_steps).params["max_tokens"])
        room = n_ctx - reply
        messages = build(task)
        need = await self.model.prompt_tokens(messages)
        if need <= room:
            return messages, []
        (tokens,) = await self.model.tokenize([task])
        keep = room - await self.model.prompt_tokens(build(task_view("", "", len(task))))
        too_long = (f"task: {len(tokens)} tokens; the conductor's prompt would take {need} of its {n_ctx}-token "
                    f"context ({reply} kept for its reply)")
        for _ in range(4):  # a cut can tokenize slightly longer than its parts
            if keep < MIN_TASK_VIEW_TOKENS:
                break
            head = await self.model.detokenize(tokens[: keep // 2])
            tail = await self.model.detokenize(tokens[len(tokens) - (keep - keep // 2):])
            view = build(task_view(head, tail, len(task) - len(head) - len(tail)))
            if await self.model.prompt_tokens(view) <= room:
                return view, [f"{too_long}: it planned from the task's first {keep // 2} and last "
                              f"{keep - keep // 2} tokens; the workers get the whole task"]
            keep = keep * 9 // 10
        return None, [f"{too_long}, with no room left for even part of the task"]
