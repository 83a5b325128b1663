"""Call a worker once: litellm for model strings, an in-process GGUF for local models.

One call here is one attempt. Retries, fallbacks and their trace live in the engine, so there is
exactly one retry layer: litellm and the OpenAI client inside it are told not to retry.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from . import telemetry
from .errors import WorkerError
from .local_model import LocalModel
from .models import Price, Usage, WorkerSpec
from .redact import RedactFilter, redact, register_key_envs
from .registry import Registry

log = logging.getLogger(__name__)
_litellm: Any = None
# The completion cap sent when a worker's params set none; the budget reserves the same number.
DEFAULT_MAX_TOKENS = {"litellm": 4096, "gguf": 512}


def completion_cap(spec: WorkerSpec) -> int:
    """The most completion tokens one call to this worker may return: its params' cap, else the default.
    Every call is sent with it, so the budget's reservation is a real bound."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = spec.params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_MAX_TOKENS[spec.kind]


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


@dataclass
class Completion:
    text: str
    usage: Usage
    latency_s: float


def price_cost(price: Price, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1e6


def known_cost(spec: WorkerSpec, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Cost in USD from the manifest's price, else litellm's list; None when neither knows."""
    if spec.price is not None:
        return price_cost(spec.price, prompt_tokens, completion_tokens)
    if spec.kind == "gguf":
        return 0.0
    try:
        p, c = litellm_module().cost_per_token(model=spec.model, prompt_tokens=prompt_tokens,
                                               completion_tokens=completion_tokens)
        return float(p) + float(c)
    except Exception:  # litellm raises for a model missing from its price list
        return None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or during (litellm wraps openai, which wraps httpx)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _quota_exhausted(chain: list[BaseException]) -> bool:
    """A 429 for an exhausted quota or credit, which waiting does not fix (OpenAI's `insufficient_quota`)."""
    for e in chain:
        body = getattr(e, "body", None)
        if isinstance(body, dict) and "insufficient_quota" in (body.get("code"), body.get("type")):
            return True
        if getattr(e, "code", None) == "insufficient_quota":
            return True
    return "insufficient_quota" in str(chain[0]) or "exceeded your current quota" in str(chain[0])


def _classify(exc: Exception, worker_id: str, api_base: str | None = None) -> WorkerError:
    """A worker's failure as one line with no key in it, and whether another try may help."""
    chain = _chain(exc)
    where = api_base or "the provider"
    # litellm reports a connection that failed as an InternalServerError 500, which misleads: nothing answered
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return WorkerError(redact(f"{worker_id}: connection refused at {where}"), retryable=True)
    broken = next((e for e in chain if isinstance(e, httpx.TransportError)
                   and not isinstance(e, httpx.TimeoutException)), None)
    if broken is not None:
        detail = str(broken).splitlines()[0][:200] if str(broken) else ""
        return WorkerError(redact(f"{worker_id}: connection failed at {where}: {type(broken).__name__}"
                                  f"{f' ({detail})' if detail else ''}"), retryable=True)
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    text = str(exc).splitlines()[0][:300] if str(exc) else name
    permanent = status in (400, 401, 403, 404, 422) or name in (
        "AuthenticationError", "BadRequestError", "NotFoundError", "PermissionDeniedError",
        "ContextWindowExceededError", "ContentPolicyViolationError", "UnsupportedParamsError")
    if status == 429 and _quota_exhausted(chain):
        permanent = True
        text = f"insufficient_quota: {text}"
    return WorkerError(redact(f"{worker_id}: {name}{f' {status}' if status else ''}: {text}"),
                       retryable=not permanent, retry_after=None if permanent else _retry_after(exc))


def _retry_after(exc: Exception) -> float | None:
    """Seconds the provider asked us to wait (litellm keeps the headers on the exception)."""
    for headers in (getattr(exc, "litellm_response_headers", None),
                    getattr(getattr(exc, "response", None), "headers", None)):
        if not headers:
            continue
        for key, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
            value = headers.get(key)
            if value is None:
                continue
            try:
                return float(value) * scale
            except (TypeError, ValueError):
                continue  # an HTTP date: fall back to our own backoff
    return None


class WorkerPool:
    """Calls workers of one registry; local models are loaded once and shared by path."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._limiters = {s.spec.id: anyio.CapacityLimiter(s.spec.max_concurrency) for s in registry.states}
        self._local: dict[Path, LocalModel] = {}
        register_key_envs(s.spec.api_key_env for s in registry.states)  # their values never reach a trace

    def local_model(self, path: Path) -> LocalModel:
        if path not in self._local:
            self._local[path] = LocalModel(path, n_ctx=4096)
        return self._local[path]

    @telemetry.traced_worker_call
    async def complete(self, worker_id: str, messages: list[dict[str, str]]) -> Completion:
        state = self.registry.get(worker_id)
        if not state.available:
            raise WorkerError(f"{worker_id}: unavailable ({state.reason})", retryable=False)
        async with self._limiters[worker_id]:
            started = time.perf_counter()
            with anyio.fail_after(state.spec.timeout_s):
                try:
                    if state.gguf_path is not None:
                        completion = await self._local_call(state.spec, state.gguf_path, messages)
                    else:
                        completion = await self._litellm_call(state.spec, messages)
                except TimeoutError:
                    raise
                except WorkerError:
                    raise
                except Exception as exc:
                    raise _classify(exc, worker_id, state.spec.api_base) from exc
            completion.latency_s = time.perf_counter() - started
        if not completion.text.strip():
            raise WorkerError(f"{worker_id}: empty completion", retryable=True)
        return completion

    async def probe(self, spec: WorkerSpec, gguf_path: Path | None, timeout_s: float) -> Completion:
        """One call capped at one completion token, through the same client code as a step (`doctor --check`):
        no retry, no fallback, and an empty reply counts as an answer (a reasoning model may spend its one token
        thinking). Failures are WorkerErrors with no key in them; a timeout is TimeoutError."""
        params = {k: v for k, v in spec.params.items() if k != "max_completion_tokens"}
        spec = spec.model_copy(update={"params": {**params, "max_tokens": 1}})
        with anyio.fail_after(timeout_s):
            try:
                if gguf_path is not None:
                    return await self._local_call(spec, gguf_path, [{"role": "user", "content": "Say OK."}])
                return await self._litellm_call(spec, [{"role": "user", "content": "Say OK."}],
                                                timeout_s=timeout_s)
            except WorkerError as exc:
                if "has no text content" in str(exc):  # content null: the provider answered
                    return Completion("", Usage(calls=1), 0.0)
                raise
            except Exception as exc:
                raise _classify(exc, spec.id, spec.api_base) from exc

    async def _litellm_call(self, spec: WorkerSpec, messages: list[dict[str, str]],
                            timeout_s: float | None = None) -> Completion:
        litellm = litellm_module()
        kwargs: dict[str, Any] = dict(spec.params)
        if "max_completion_tokens" not in kwargs:
            kwargs["max_tokens"] = completion_cap(spec)  # the cap the budget reserved, sent on every call
        if spec.api_base:
            kwargs["api_base"] = spec.api_base
        if spec.api_key_env:
            kwargs["api_key"] = os.environ.get(spec.api_key_env)
        elif spec.api_base:
            kwargs["api_key"] = "none"  # local OpenAI-compatible servers want some key, never a real one
        response = await litellm.acompletion(model=spec.model, messages=messages, timeout=timeout_s or spec.timeout_s,
                                             max_retries=0, num_retries=0, **kwargs)
        try:
            text = response.choices[0].message.content
            usage = response.usage
            prompt, completion = int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
        except (AttributeError, IndexError, TypeError) as exc:
            raise WorkerError(f"{spec.id}: malformed completion ({exc})", retryable=True) from exc
        if not isinstance(text, str):
            raise WorkerError(f"{spec.id}: completion has no text content", retryable=True)
        cost = known_cost(spec, prompt, completion)
        return Completion(text, Usage(prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost,
                                      calls=1), 0.0)

    async def _local_call(self, spec: WorkerSpec, path: Path, messages: list[dict[str, str]]) -> Completion:
        params = {"temperature": 0.2, **spec.params, "max_tokens": completion_cap(spec)}
        reply = await self.local_model(path).chat(messages, **params)
        return Completion(reply.text, Usage(prompt_tokens=reply.prompt_tokens,
                                            completion_tokens=reply.completion_tokens,
                                            cost_usd=known_cost(spec, reply.prompt_tokens,
                                                                reply.completion_tokens), calls=1), 0.0)
