"""Which workers the direct httpx client calls, how an endpoint's error answer is named, and the manifest's
`client` field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from pydantic import ValidationError

from conductor_mcp.models import Manifest, WorkerSpec
from conductor_mcp.workers.openai_http import OPENAI_BASE, Channel, Endpoint, endpoint, tls_context
from conductor_mcp.workers.pool import _classify, uses_litellm
from conductor_mcp.workers.provider_errors import provider_error
from conductor_mcp.workers.registry import build_registry

LOCAL = "http://127.0.0.1:8080/v1"


def spec(**fields: object) -> WorkerSpec:
    return WorkerSpec.model_validate({"id": "w", **fields})


@pytest.mark.parametrize(("fields", "expected"), [
    ({"model": "openai/qwen2.5", "api_base": LOCAL}, Endpoint(LOCAL, "qwen2.5", None)),
    ({"model": "openai/qwen2.5", "api_base": LOCAL + "/", "api_key_env": "K"}, Endpoint(LOCAL, "qwen2.5", "K")),
    ({"model": "openai/gpt-5"}, None),  # hosted OpenAI: litellm adapts params to each model
    ({"model": "openai/gpt-5", "api_base": "https://api.openai.com/v1"}, None),
    ({"model": "openai/gpt-5", "client": "httpx"}, Endpoint(OPENAI_BASE, "gpt-5", None)),
    ({"model": "openai/qwen2.5", "api_base": LOCAL, "client": "litellm"}, None),
    ({"model": "anthropic/claude-sonnet-4-5"}, None),
    ({"model": "ollama_chat/qwen2.5:7b", "api_base": "http://127.0.0.1:11434"}, None),
    ({"model": "hosted_vllm/llama", "api_base": LOCAL, "client": "httpx"}, Endpoint(LOCAL, "llama", None)),
    ({"model": "qwen/qwen3", "api_base": LOCAL, "client": "httpx"}, Endpoint(LOCAL, "qwen/qwen3", None)),
])
def test_which_workers_go_direct(fields: dict[str, object], expected: Endpoint | None) -> None:
    assert endpoint(spec(**fields)) == expected


@pytest.mark.parametrize(("fields", "expected"), [
    ({"model": "openai/qwen2.5", "api_base": LOCAL, "price": {"input_per_mtok": 1, "output_per_mtok": 2}}, False),
    ({"model": "openai/qwen2.5", "api_base": LOCAL}, True),  # unpriced: priced from litellm's list
    ({"model": "openai/qwen2.5", "api_base": LOCAL, "client": "litellm",
      "price": {"input_per_mtok": 1, "output_per_mtok": 2}}, True),
    ({"gguf": "bundled"}, False),
])
def test_litellm_is_loaded_only_where_a_call_needs_it(fields: dict[str, object], expected: bool) -> None:
    # the server warms litellm at start (and the CLI imports it) only when some call will use it
    registry = build_registry(Manifest(workers=[spec(**fields)]), "test")
    assert uses_litellm(registry) is expected


@pytest.mark.parametrize(("fields", "message"), [
    ({"model": "anthropic/claude-sonnet-4-5", "client": "httpx"}, "client httpx speaks OpenAI's chat completions"),
    ({"gguf": "bundled", "client": "litellm"}, "field 'client' applies to a `model` worker only"),
    ({"kind": "python", "client": "httpx"}, "remove field(s) client"),
    ({"model": "openai/x", "client": "requests"}, "Input should be 'auto', 'httpx' or 'litellm'"),
])
def test_client_field_is_checked(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec(**fields)


def answer(status: int, body: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, text=body, headers=headers,
                          request=httpx.Request("POST", LOCAL + "/chat/completions"))


def error(message: str, type_: str = "invalid_request_error", code: str | None = None) -> str:
    return httpx.Response(200, json={"error": {"message": message, "type": type_, "code": code}}).text


@pytest.mark.parametrize(("status", "body", "expected", "retryable"), [
    (429, error("Rate limit reached", "requests", "rate_limit_exceeded"), "RateLimitError 429: Rate limit reached",
     True),
    (429, error("You exceeded your current quota", "insufficient_quota", "insufficient_quota"),
     "RateLimitError 429: insufficient_quota: You exceeded your current quota", False),
    (400, error("This model's maximum context length is 16 tokens."),
     "ContextWindowExceededError 400: This model's maximum context length", False),
    (400, error("prompt too long", code="context_length_exceeded"), "ContextWindowExceededError 400", False),
    (400, error("Invalid 'temperature'"), "BadRequestError 400: Invalid 'temperature'", False),
    (422, "{\"detail\": \"bad field\"}", "BadRequestError 400: Error code: 422 - {\"detail\": \"bad field\"}", False),
    (401, error("Incorrect API key provided: Bearer sk-abcdefghijklmnopqrstuvwxyz"),
     "AuthenticationError 401: Incorrect API key provided: Bearer [REDACTED]", False),
    (403, error("forbidden", "permission_error"), "PermissionDeniedError 403: forbidden", False),
    (404, error("The model `x` does not exist", code="model_not_found"), "NotFoundError 404", False),
    (500, error("boom", "server_error"), "InternalServerError 500: boom", True),
    (502, "<html>bad gateway</html>", "BadGatewayError 502: Error code: 502 - <html>bad gateway</html>", True),
    (503, error("overloaded", "server_error"), "ServiceUnavailableError 503: overloaded", True),
    (504, "", "Timeout 408: Error code: 504 - ", True),
    (418, "teapot", "APIError 418: Error code: 418 - teapot", True),
])
def test_error_answers_are_named_as_litellm_names_them(status: int, body: str, expected: str,
                                                       retryable: bool) -> None:
    err = _classify(provider_error(answer(status, body)), "w")
    assert str(err).startswith(f"w: {expected}"), str(err)
    assert err.retryable is retryable


def test_retry_after_is_read_from_the_answer() -> None:
    limited = provider_error(answer(429, error("slow down", "requests"), {"retry-after-ms": "1500"}))
    assert _classify(limited, "w").retry_after == 1.5


def test_litellm_errors_read_as_the_providers_own_message() -> None:
    """litellm's wrapping ("litellm.RateLimitError: RateLimitError: OpenAIException - ") is cut, so that an error
    reads the same from either client."""
    from conductor_mcp.workers.llm import litellm_module

    litellm = litellm_module()
    request = httpx.Request("POST", LOCAL)
    limited = litellm.RateLimitError("RateLimitError: OpenAIException - slow down", llm_provider="openai",
                                     model="m", response=httpx.Response(429, request=request))
    too_long = litellm.ContextWindowExceededError("ContextWindowExceededError: OpenAIException - too long",
                                                  llm_provider="openai", model="m")
    assert str(_classify(limited, "w")) == "w: RateLimitError 429: slow down"
    assert str(_classify(too_long, "w")) == "w: ContextWindowExceededError 400: too long"


def test_a_proxy_or_a_password_in_the_url_takes_httpxs_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct client's lean request needs no proxy and no basic auth; where either applies the call goes
    through httpx.AsyncClient, which applies them."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "localhost")  # names no proxy

    async def check() -> None:
        lean, with_password = Channel(LOCAL, "k"), Channel("http://u:p@127.0.0.1:8080/v1", "k")
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
        proxied = Channel(LOCAL, "k")
        assert lean.pools and not with_password.pools and not proxied.pools
        assert str(lean.url) == LOCAL + "/chat/completions"
        for channel in (lean, with_password, proxied):
            await channel.aclose()

    anyio.run(check)


def test_channels_share_one_tls_context() -> None:
    """Making a TLS context reads the CA bundle (about 50 ms on the event loop): every channel, lean or through
    httpx's client, takes the one tls_context() made, which honours SSL_CERT_FILE as httpx's own would."""

    async def check() -> None:
        lean, with_password = Channel(LOCAL, "k"), Channel("https://u:p@example.invalid/v1", "k")
        for transport in (*lean.pools, with_password.client._transport):
            assert isinstance(transport, httpx.AsyncHTTPTransport)
            assert transport._pool._ssl_context is tls_context()
        for channel in (lean, with_password):
            await channel.aclose()

    anyio.run(check)


def test_serving_starts_with_the_first_runs_imports_made(tmp_path: Path) -> None:
    """What HTTP serving does before it answers anything: it leaves the first request no imports and no TLS context
    to make (about 100 ms before), and freezes what start-up built."""
    code = ("import sys, gc\nfrom conductor_mcp.surfaces.transports import settle_heap, warm_first_run\n"
            "warm_first_run()\nsettle_heap()\n"
            "import conductor_mcp.workers.openai_http as o\n"
            "missing = [m for m in ('httpcore', 'conductor_mcp.runs.engine', 'conductor_mcp.workers.pool')"
            " if m not in sys.modules]\n"
            "print(missing, o.tls_context.cache_info().currsize, gc.get_freeze_count() > 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.split() == ["[]", "1", "True"]
