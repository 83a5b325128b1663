"""Calling a model, one call at a time: litellm for model strings, an in-process GGUF for local models, and what a
call costs. Workers (workers.py) and the conductor's own model (planners/) both call through here, so a call is
capped, keyed and priced the same way wherever it is made.

One call is one attempt: retries and fallbacks are the engine's (litellm and the OpenAI client inside it are told
not to retry), and errors are the caller's to word.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..models import Price, Usage
from ..redact import RedactFilter

if TYPE_CHECKING:
    from .local_model import LocalModel, TokenHook

_litellm: Any = None
# The completion cap sent when a call's params set none; the budget reserves the same number.
DEFAULT_MAX_TOKENS = {"litellm": 4096, "gguf": 512}
# Models litellm's (local, fixed) price list lacks: asking again costs 0.1-0.2 ms a call for the same None
_unpriced: set[str] = set()


class Priced(Protocol):
    """What capping and pricing a call reads: a WorkerSpec, or the conductor's ModelCall."""

    @property
    def id(self) -> str: ...
    @property
    def backend(self) -> Literal["litellm", "gguf", "python"]: ...
    @property
    def model(self) -> str | None: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def price(self) -> Price | None: ...


@dataclass(frozen=True)
class ModelCall:
    """A model call that is no worker (the conductor's own): what a budget reserves and prices for it."""

    id: str
    backend: Literal["litellm", "gguf"]
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    price: Price | None = None


def completion_cap(call: Priced) -> int:
    """The most completion tokens one call may return: its params' cap, else the default.
    Every call is sent with it, so the budget's reservation is a real bound."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = call.params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_MAX_TOKENS.get(call.backend, 0)


def litellm_module() -> Any:
    """Import litellm on first use, with its price list local and its stdout banner off."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.suppress_debug_info = True  # else a "Give Feedback" banner reaches stdout on errors
        litellm.drop_params = True
        litellm.telemetry = False
        for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):  # its logs may quote a request's key
            logging.getLogger(name).addFilter(RedactFilter())
        _litellm = litellm
    return _litellm


def price_cost(price: Price, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1e6


def known_cost(call: Priced, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Cost in USD from the manifest's price, else litellm's list; None when neither knows."""
    if call.price is not None:
        return price_cost(call.price, prompt_tokens, completion_tokens)
    if call.backend == "gguf":
        return 0.0
    if call.model in _unpriced:
        return None
    try:
        p, c = litellm_module().cost_per_token(model=call.model, prompt_tokens=prompt_tokens,
                                               completion_tokens=completion_tokens)
        return float(p) + float(c)
    except Exception:  # litellm raises for a model missing from its price list
        if call.model is not None:
            _unpriced.add(call.model)
        return None


@dataclass(frozen=True)
class Reply:
    """A model's answer, the one type every backend (litellm, an in-process GGUF) returns to every caller (a
    worker call, the conductor's own): its text and its usage, priced where the price is known, as one call."""

    text: str
    usage: Usage
    latency_s: float = 0.0  # the call's wall time as its caller measured it (WorkerPool: with the wait for a model)
    finish_reason: str | None = None  # as the backend reported it ("stop", "length"); None where it did not
    content_null: bool = False  # the provider sent no text content (text is then ""): a worker call fails on it


class MalformedReply(Exception):
    """The provider answered with something that is not a chat completion."""


async def litellm_complete(call: Priced, messages: list[dict[str, str]], *, timeout_s: float,
                           api_base: str | None = None, api_key_env: str | None = None,
                           defaults: dict[str, Any] | None = None, **overrides: Any) -> Reply:
    """One litellm call: `defaults` under the call's params, `overrides` over them; sent with the completion cap
    the budget reserved. A local endpoint (`api_base` with no key variable) gets a placeholder key, never a real
    one. Provider errors propagate as litellm raised them."""
    litellm = litellm_module()
    kwargs: dict[str, Any] = {**(defaults or {}), **call.params, **overrides}
    if "max_completion_tokens" not in kwargs:
        kwargs["max_tokens"] = completion_cap(call)  # the cap the budget reserved, sent on every call
    if api_base:
        kwargs["api_base"] = api_base
    if api_key_env:
        kwargs["api_key"] = os.environ.get(api_key_env)
    elif api_base:
        kwargs["api_key"] = "none"  # local OpenAI-compatible servers want some key
    started = time.perf_counter()
    response = await litellm.acompletion(model=call.model, messages=messages, timeout=timeout_s,
                                         max_retries=0, num_retries=0, **kwargs)
    latency = time.perf_counter() - started
    try:
        choice = response.choices[0]
        text = choice.message.content
        usage = response.usage
        prompt, completion = int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
    except (AttributeError, IndexError, TypeError) as exc:
        raise MalformedReply(str(exc)) from exc
    reason = getattr(choice, "finish_reason", None)
    return Reply(text if isinstance(text, str) else "",
                 Usage(prompt_tokens=prompt, completion_tokens=completion,
                       cost_usd=known_cost(call, prompt, completion), calls=1),
                 latency, reason if isinstance(reason, str) else None, content_null=not isinstance(text, str))


async def gguf_complete(model: LocalModel, call: Priced, messages: list[dict[str, str]], *,
                        defaults: dict[str, Any] | None = None, on_token: TokenHook | None = None,
                        **overrides: Any) -> Reply:
    """One call to an in-process GGUF, capped like a litellm call (`overrides` may set a tighter cap)."""
    params = {**(defaults or {}), **call.params, "max_tokens": completion_cap(call), **overrides}
    if on_token is not None:
        params["on_token"] = on_token
    reply = await model.chat(messages, **params)  # its usage unpriced: the model knows no manifest
    usage = reply.usage
    return replace(reply, usage=usage.model_copy(
        update={"cost_usd": known_cost(call, usage.prompt_tokens, usage.completion_tokens)}))
