"""A conductor that is any chat model litellm can reach."""

from __future__ import annotations

import os
from typing import Any, Literal

from ..errors import WorkflowError
from ..models import Price, Usage, WorkerSpec
from ..redact import redact, register_key_envs
from ..workers import completion_cap, known_cost, litellm_module
from .base import Generation, ModelPlanner, Watch


class RemotePlanner(ModelPlanner):
    def __init__(self, model: str, *, fmt: Literal["json", "paper"] = "json", api_base: str | None = None,
                 api_key_env: str | None = None, temperature: float = 0.0,
                 params: dict[str, Any] | None = None, timeout_s: float = 120.0, price: Price | None = None) -> None:
        self.model = model
        self.name = f"litellm:{model}"
        self.fmt = fmt
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.params = params or {}
        self.timeout_s = timeout_s
        self.price = price
        register_key_envs([api_key_env])  # its value never reaches a trace

    def call_spec(self, constraint: Any, max_steps: int) -> WorkerSpec:
        # the call as a budget sees it: this model, its price and the completion cap it is sent with
        return WorkerSpec(id="conductor-model", model=self.model, params=self.params, price=self.price)

    async def generate(self, messages: list[dict[str, str]], constraint: Any, max_steps: int,
                       attempt: int, watch: Watch | None = None) -> Generation:
        litellm = litellm_module()
        kwargs: dict[str, Any] = {"temperature": self.temperature if attempt == 1 else 0.7, **self.params}
        spec = self.call_spec(constraint, max_steps)
        if "max_completion_tokens" not in kwargs:
            kwargs["max_tokens"] = completion_cap(spec)  # the cap the budget reserved
        if self.api_base:
            kwargs["api_base"] = self.api_base
            kwargs["api_key"] = "none"
        if self.api_key_env:
            kwargs["api_key"] = os.environ.get(self.api_key_env)
        if constraint is not None:
            kwargs["response_format"] = {"type": "json_object"}  # the schema is checked on our side
        try:
            response = await litellm.acompletion(model=self.model, messages=messages, timeout=self.timeout_s,
                                                 max_retries=0, num_retries=0, **kwargs)
            text = response.choices[0].message.content or ""
            u = response.usage
        except Exception as exc:
            raise WorkflowError(redact(f"conductor {self.model}: {type(exc).__name__}: {str(exc)[:300]}")) from exc
        prompt, completion = int(u.prompt_tokens or 0), int(u.completion_tokens or 0)
        return Generation(text, Usage(prompt_tokens=prompt, completion_tokens=completion,
                                      cost_usd=known_cost(spec, prompt, completion), calls=1))
