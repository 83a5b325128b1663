"""A conductor that is any chat model litellm can reach."""

from __future__ import annotations

from typing import Any, Literal

from ..errors import WorkflowError
from ..models import Price
from ..redact import redact, register_key_envs
from ..workers.llm import ModelCall, Reply, litellm_complete
from .base import ModelPlanner, Watch


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

    def call_spec(self, constraint: Any, max_steps: int) -> ModelCall:
        # the call as a budget sees it: this model, its price and the completion cap it is sent with
        return ModelCall(id="conductor-model", backend="litellm", model=self.model, params=self.params,
                         price=self.price)

    async def generate(self, messages: list[dict[str, str]], constraint: Any, max_steps: int,
                       attempt: int, watch: Watch | None = None) -> Reply:
        overrides: dict[str, Any] = {}
        if constraint is not None:
            overrides["response_format"] = {"type": "json_object"}  # the schema is checked on our side
        try:
            # content null reads as "", which no plan parses: the attempt fails, its usage counted
            return await litellm_complete(self.call_spec(constraint, max_steps), messages, timeout_s=self.timeout_s,
                                          api_base=self.api_base, api_key_env=self.api_key_env,
                                          defaults={"temperature": self.temperature if attempt == 1 else 0.7},
                                          **overrides)
        except Exception as exc:
            raise WorkflowError(redact(f"conductor {self.model}: {type(exc).__name__}: {str(exc)[:300]}")) from exc
