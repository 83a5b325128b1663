"""A conductor that is any chat model litellm can reach."""

from __future__ import annotations

import os
from typing import Any, Literal

from ..errors import WorkflowError
from ..models import Usage, WorkerSpec
from ..workers import known_cost, litellm_module
from .base import Generation, ModelPlanner


class RemotePlanner(ModelPlanner):
    def __init__(self, model: str, *, fmt: Literal["json", "paper"] = "json", api_base: str | None = None,
                 api_key_env: str | None = None, temperature: float = 0.0,
                 params: dict[str, Any] | None = None, timeout_s: float = 120.0) -> None:
        self.model = model
        self.name = f"litellm:{model}"
        self.fmt = fmt
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.params = params or {}
        self.timeout_s = timeout_s

    async def generate(self, messages: list[dict[str, str]], constraint: Any, max_steps: int,
                       attempt: int) -> Generation:
        litellm = litellm_module()
        kwargs: dict[str, Any] = {"temperature": self.temperature if attempt == 1 else 0.7, **self.params}
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
            raise WorkflowError(f"conductor {self.model}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        spec = WorkerSpec(id="conductor-model", model=self.model)
        prompt, completion = int(u.prompt_tokens or 0), int(u.completion_tokens or 0)
        return Generation(text, Usage(prompt_tokens=prompt, completion_tokens=completion,
                                      cost_usd=known_cost(spec, prompt, completion), calls=1))
