"""The direct client: one chat completion to an OpenAI-compatible endpoint over a pooled httpx client, no litellm.

litellm spends about 4 ms of CPU a call translating a request that an OpenAI-compatible server takes as it is.
This client sends what litellm sends for an `openai/` model (messages, the worker's params as they are, the
completion cap, `Bearer none` to a keyless endpoint) and reads what litellm reads back (text, finish_reason,
usage; 0 tokens when the server reports none), so a step's trace does not depend on the client that made it.
Errors are raised named as litellm names them (provider_errors.py); a timeout is TimeoutError, the same as the
pool's own deadline. Models whose provider needs translation (anthropic/, gemini/, bedrock/, ...) stay on litellm.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import ssl
import time
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx

from ..models import Usage, WorkerSpec
from ..redact import RedactFilter
from .llm import MalformedReply, Reply, completion_cap, known_cost
from .provider_errors import provider_error

OPENAI_BASE = "https://api.openai.com/v1"
# Prefixes of litellm providers that speak OpenAI's API: the name sent is the model string without them.
_OPENAI_PREFIXES = frozenset({"openai", "custom_openai", "hosted_vllm", "lm_studio", "openrouter"})
# litellm's call options that a manifest's params may hold; litellm consumes them, the endpoint never sees them
_NOT_SENT = frozenset({"api_base", "base_url", "api_key", "timeout", "stream", "num_retries", "max_retries",
                       "drop_params", "custom_llm_provider"})
# Below uvicorn's 5 s keep-alive (vLLM, SGLang and most Python servers): a connection the server is closing
# is not reused
KEEPALIVE_S = 4.0
for _name in ("httpx", "httpcore"):  # their debug logs quote requests: a key must not reach a log that way either
    logging.getLogger(_name).addFilter(RedactFilter())


@dataclass(frozen=True)
class Endpoint:
    """Where the direct client sends a worker's calls: base URL, the model name sent, and the key's variable."""

    base_url: str
    model: str
    key_env: str | None


def _hosted_openai(api_base: str) -> bool:
    return (urlparse(api_base).hostname or "") == "api.openai.com"


def endpoint(spec: WorkerSpec) -> Endpoint | None:
    """The endpoint the direct client calls for this worker, or None when litellm calls it.

    `client: auto` takes the direct path for an `openai/<model>` with an `api_base` that is not OpenAI's own:
    a self-hosted OpenAI-compatible server (vLLM, llama.cpp, SGLang, LM Studio, a proxy) takes params as they
    are. Hosted OpenAI stays on litellm under auto, which adapts params to each model (gpt-5 and o-series refuse
    `max_tokens` and a non-default temperature); `client: httpx` sends them as written, there too."""
    if spec.model is None or spec.client == "litellm":
        return None
    prefix, _, rest = spec.model.partition("/")
    if spec.client == "auto" and not (prefix == "openai" and rest and spec.api_base
                                      and not _hosted_openai(spec.api_base)):
        return None
    name = rest if rest and prefix in _OPENAI_PREFIXES else spec.model
    return Endpoint((spec.api_base or OPENAI_BASE).rstrip("/"), name, spec.api_key_env)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context of every channel, made as httpx makes one (certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR,
    read once, at first use). Making one reads the CA bundle: about 50 ms that each channel's first call spent on
    the event loop."""
    return httpx.create_ssl_context()


# httpcore's pool looks at every connection it holds on each request and each answer (one of those looks is
# quadratic, and each idle connection's socket is polled): with 50 calls in flight that took about a fifth of the
# server's CPU (BENCHMARKS.md). An endpoint's calls spread over this many pools instead, each call to the pool with
# the fewest in flight (the first of those), so that calls made one at a time keep to one connection. A pool drops
# its expired idle connections only when it next takes a call, so after a burst pools 1-7 may hold up to 8 idle
# sockets each until then. (The proxied path, through httpx's client, keeps one pool.)
POOLS = 8


class Channel:
    """One endpoint and key: pooled connections, and what every call to it sends the same, fixed once.

    A call is one request on one of its POOLS httpx transports, built from the URL and headers httpx.AsyncClient
    would send (taken from a request the client builds once): the client's per-call work (URL merging, header
    merging, auth flow, redirect loop, cookie jar) does nothing for a POST to a fixed URL and costs about a quarter
    of the call's CPU. Where the environment names a proxy, or the URL carries a user and password, calls go through the
    client, which applies them."""

    def __init__(self, base_url: str, key: str) -> None:
        # no connection cap here: each worker's CapacityLimiter already caps its calls in flight
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_S)
        proxied = any(scheme != "no" for scheme in urllib.request.getproxies())
        lean = not (proxied or httpx.URL(base_url).userinfo)
        tls = tls_context()
        shard = httpx.Limits(max_connections=None, max_keepalive_connections=64 // POOLS, keepalive_expiry=KEEPALIVE_S)
        self.pools = [httpx.AsyncHTTPTransport(limits=shard, verify=tls) for _ in range(POOLS if lean else 0)]
        self.in_flight = [0] * len(self.pools)
        self.client = httpx.AsyncClient(base_url=base_url, limits=limits, transport=self.pools[0] if lean else None,
                                        verify=tls, headers={"authorization": f"Bearer {key}",
                                                             "accept": "application/json"})
        template = self.client.build_request("POST", "/chat/completions", json={})
        self.url = template.url
        self.headers = httpx.Headers([(k, v) for k, v in template.headers.raw
                                      if k.lower() not in (b"content-length", b"content-type")])

    async def post(self, body: dict[str, Any], timeout_s: float) -> httpx.Response:
        """POST the body as JSON and read the whole answer: the request the client would send, byte for byte."""
        if not self.pools:
            return await self.client.post("/chat/completions", json=body, timeout=timeout_s)
        request = httpx.Request("POST", self.url, headers=self.headers, json=body, extensions={
            "timeout": {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}})
        i = self.in_flight.index(min(self.in_flight))
        self.in_flight[i] += 1
        try:
            response = await self.pools[i].handle_async_request(request)
            response.request = request
            try:
                await response.aread()
            finally:
                await response.aclose()
        finally:
            self.in_flight[i] -= 1
        return response

    async def aclose(self) -> None:
        await self.client.aclose()  # and the first pool, which it was given
        for pool in self.pools[1:]:
            await pool.aclose()


class HttpClients:
    """One Channel per endpoint (base URL and key) for the event loop that runs the calls.

    A channel's connections belong to the loop that opened them, so a new loop (a second anyio.run in one
    process) starts a new set; the old loop's channels are dropped, not closed: their loop is gone."""

    def __init__(self) -> None:
        self._channels: dict[tuple[str, str], Channel] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self, base_url: str, key: str) -> Channel:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._channels, self._loop = {}, loop
        channel = self._channels.get((base_url, key))
        if channel is None:
            channel = self._channels[(base_url, key)] = Channel(base_url, key)
        return channel

    async def aclose(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.aclose()


def _key(target: Endpoint) -> str:
    if target.key_env:
        return os.environ.get(target.key_env) or ""  # read at call time: keys may be rotated
    return "none"  # as litellm sends to a keyless endpoint: local servers want some key


def _parse(raw: bytes) -> tuple[Any, str | None, int, int]:
    """content, finish_reason, prompt and completion tokens of a chat completion's JSON body."""
    try:
        payload = json.loads(raw)
        choice = payload["choices"][0]
        content = choice["message"].get("content")
        usage = payload.get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise MalformedReply(f"{type(exc).__name__}: {exc}") from exc
    reason = choice.get("finish_reason")
    return content, reason if isinstance(reason, str) else None, prompt, completion


async def http_complete(clients: HttpClients, spec: WorkerSpec, target: Endpoint,
                        messages: list[dict[str, str]], *, timeout_s: float) -> Reply:
    """One call, one attempt, sent with the completion cap the budget reserved (as litellm_complete sends it)."""
    body: dict[str, Any] = {"model": target.model, "messages": messages,
                            **{k: v for k, v in spec.params.items() if k not in _NOT_SENT}}
    if "max_completion_tokens" not in body:
        body["max_tokens"] = completion_cap(spec)
    channel = clients.get(target.base_url, _key(target))
    started = time.perf_counter()
    try:
        response = await channel.post(body, timeout_s)
    except httpx.TimeoutException as exc:
        raise TimeoutError(f"{spec.id}: no answer within {timeout_s:g}s") from exc
    latency = time.perf_counter() - started
    if response.status_code >= 400:
        raise provider_error(response)
    content, reason, prompt, completion = _parse(response.content)
    return Reply(content if isinstance(content, str) else "",
                 Usage(prompt_tokens=prompt, completion_tokens=completion,
                       cost_usd=known_cost(spec, prompt, completion), calls=1),
                 latency, reason, content_null=not isinstance(content, str))
