"""Call a worker once: the direct httpx client for OpenAI-compatible endpoints (openai_http.py), litellm for
other model strings, an in-process GGUF for local models (litellm and GGUF through llm.py, which the conductor's
own model calls through too).

One call here is one attempt. Retries, fallbacks and their trace live in the engine, so there is
exactly one retry layer: litellm and the OpenAI client inside it are told not to retry, nor is httpx.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from pathlib import Path

import anyio
import httpx

from ..errors import NoTextContent, WorkerError
from ..models import Usage, WorkerSpec
from ..redact import redact, register_key_envs
from .llm import MalformedReply, Reply, gguf_complete, litellm_complete, litellm_module
from .local_model import LocalModel
from .openai_http import Endpoint, HttpClients, endpoint, http_complete
from .registry import Registry

__all__ = ["Reply", "WorkerPool", "litellm_module", "uses_litellm"]
log = logging.getLogger(__name__)
# What litellm puts before a provider's own message ("litellm.RateLimitError: RateLimitError: OpenAIException - "):
# cut, so that an error reads the same from either client and says what the provider said
_LITELLM_PREFIX = re.compile(r"^(?:litellm\.\w+: )+(?:\w+(?: Error)?: )?(?:\w+Exception - )?")


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
        # httpx's own errors may have no text: the OS error under them says what happened ("Connection reset")
        said = next((str(e) for e in chain[chain.index(broken):] if str(e)), "")
        detail = said.splitlines()[0][:200] if said else ""
        return WorkerError(redact(f"{worker_id}: connection failed at {where}: {type(broken).__name__}"
                                  f"{f' ({detail})' if detail else ''}"), retryable=True)
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    first = _LITELLM_PREFIX.sub("", str(exc).splitlines()[0]) if str(exc) else ""
    text = first[:300] or name
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


def uses_litellm(registry: Registry) -> bool:
    """Whether calls through this registry may import litellm: for the remote conductor, a worker the direct client
    does not call, or one it does call but with no manifest price (priced from litellm's list)."""
    return bool(registry.conductor.model) or any(
        s.available and s.spec.backend == "litellm" and s.spec.model is not None
        and (endpoint(s.spec) is None or s.spec.price is None) for s in registry.states)


class WorkerPool:
    """Calls workers of one registry; local models are loaded once and shared by path."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._limiters = {s.spec.id: anyio.CapacityLimiter(s.spec.max_concurrency) for s in registry.states}
        self._local: dict[Path, LocalModel] = {}
        self._http = HttpClients()
        # each worker's client, decided once: the direct endpoint, or None for litellm
        self._endpoints = {s.spec.id: endpoint(s.spec) for s in registry.states}
        register_key_envs(s.spec.api_key_env for s in registry.states)  # their values never reach a trace

    def limiter(self, worker_id: str) -> anyio.CapacityLimiter:
        """How many calls (or programs) of this worker may be in flight at once."""
        return self._limiters[worker_id]

    def local_model(self, path: Path) -> LocalModel:
        if path not in self._local:
            self._local[path] = LocalModel(path, n_ctx=4096)
        return self._local[path]

    async def complete(self, worker_id: str, messages: list[dict[str, str]]) -> Reply:
        state = self.registry.get(worker_id)
        if not state.available:
            raise WorkerError(f"{worker_id}: unavailable ({state.reason})", retryable=False)
        if state.spec.kind == "python":  # the engine runs its programs; it answers no prompt
            raise WorkerError(f"{worker_id}: a python worker runs programs, not prompts", retryable=False)
        async with self._limiters[worker_id]:
            started = time.perf_counter()
            with anyio.fail_after(state.spec.timeout_s):
                try:
                    if state.gguf_path is not None:
                        reply = await self._local_call(state.spec, state.gguf_path, messages)
                    else:
                        reply = await self._model_call(state.spec, messages)
                except TimeoutError:
                    raise
                except WorkerError:
                    raise
                except Exception as exc:
                    raise _classify(exc, worker_id, state.spec.api_base) from exc
            reply = replace(reply, latency_s=time.perf_counter() - started)
        if not reply.text.strip():
            raise WorkerError(f"{worker_id}: empty completion", retryable=True)
        return reply

    async def probe(self, spec: WorkerSpec, gguf_path: Path | None, timeout_s: float) -> Reply:
        """One call capped at one completion token, through the same client code as a step (`doctor --check`):
        no retry, no fallback, and an empty reply counts as an answer (a reasoning model may spend its one token
        thinking). Failures are WorkerErrors with no key in them; a timeout is TimeoutError."""
        params = {k: v for k, v in spec.params.items() if k != "max_completion_tokens"}
        spec = spec.model_copy(update={"params": {**params, "max_tokens": 1}})
        with anyio.fail_after(timeout_s):
            try:
                if gguf_path is not None:
                    return await self._local_call(spec, gguf_path, [{"role": "user", "content": "Say OK."}])
                return await self._model_call(spec, [{"role": "user", "content": "Say OK."}], timeout_s=timeout_s)
            except NoTextContent:  # content null: the provider answered
                return Reply("", Usage(calls=1))
            except (WorkerError, TimeoutError):
                raise
            except Exception as exc:
                raise _classify(exc, spec.id, spec.api_base) from exc

    def endpoint(self, worker_id: str) -> Endpoint | None:
        """The worker's OpenAI-compatible endpoint when the direct client calls it; None: litellm (or no model)."""
        return self._endpoints.get(worker_id)

    async def aclose(self) -> None:
        """Close the direct client's connections (the pool stays usable: a later call opens new ones)."""
        await self._http.aclose()

    async def _model_call(self, spec: WorkerSpec, messages: list[dict[str, str]],
                          timeout_s: float | None = None) -> Reply:
        # a probe's spec is a copy with other params: the client depends on none of them
        target = self._endpoints[spec.id] if spec.id in self._endpoints else endpoint(spec)
        try:
            if target is not None:
                reply = await http_complete(self._http, spec, target, messages, timeout_s=timeout_s or spec.timeout_s)
            else:
                reply = await litellm_complete(spec, messages, timeout_s=timeout_s or spec.timeout_s,
                                               api_base=spec.api_base, api_key_env=spec.api_key_env)
        except MalformedReply as exc:
            raise WorkerError(f"{spec.id}: malformed completion ({exc})", retryable=True) from exc
        if reply.content_null:
            raise NoTextContent(f"{spec.id}: completion has no text content", retryable=True)
        return reply

    async def _local_call(self, spec: WorkerSpec, path: Path, messages: list[dict[str, str]]) -> Reply:
        return await gguf_complete(self.local_model(path), spec, messages, defaults={"temperature": 0.2})
