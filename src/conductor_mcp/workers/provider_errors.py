"""An OpenAI-compatible endpoint's error answer as an exception named as litellm names the same answer.

The direct client (openai_http.py) raises these, litellm raises its own; pool._classify reads both the same way
(class name, `status_code`, `body`, the response's Retry-After), so a refusal is worded, retried or not retried,
and falls back alike whichever client met it. The mapping follows litellm's for `openai/` models (its
exception_mapping_utils), message markers first, then the status; one difference: a 403 is a
PermissionDeniedError here, where litellm says APIError 403 (both are refusals that are not retried).
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

_RATE_LIMIT = re.compile(r"rate[\s_\-]*limit")
# litellm's markers of a prompt longer than the model's context (lower case), the ones OpenAI-compatible servers send
_CONTEXT_MARKERS = (
    "exceed context limit", "this model's maximum context length is",
    "requested token count exceeds the model's maximum context length", "model's maximum context limit",
    "is longer than the model's context length", "input tokens exceed the configured limit",
    "`inputs` tokens + `max_new_tokens` must be", "exceeds the available context size", "prompt is too long",
    "string too long. expected a string with maximum length",
)


class ProviderError(Exception):
    """An endpoint answered with an error status. `body`: its `error` object, as the OpenAI SDK keeps it."""

    status: int = 0  # the status this class reports; 0: the endpoint's own

    def __init__(self, message: str, *, status_code: int, body: dict[str, Any] | None,
                 response: httpx.Response) -> None:
        super().__init__(message)
        self.status_code = self.status or status_code
        self.body = body
        self.response = response


class BadRequestError(ProviderError):
    status = 400


class ContextWindowExceededError(BadRequestError):
    pass


class ContentPolicyViolationError(BadRequestError):
    pass


class AuthenticationError(ProviderError):
    status = 401


class PermissionDeniedError(ProviderError):
    status = 403


class NotFoundError(ProviderError):
    status = 404


class Timeout(ProviderError):  # litellm's name, which error texts carry
    status = 408


class RateLimitError(ProviderError):
    status = 429


class InternalServerError(ProviderError):
    status = 500


class BadGatewayError(ProviderError):
    status = 502


class ServiceUnavailableError(ProviderError):
    status = 503


class APIError(ProviderError):
    """Any other error status, reported as it came."""


_BY_STATUS: dict[int, type[ProviderError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError, 408: Timeout,
    422: BadRequestError, 429: RateLimitError, 500: InternalServerError, 502: BadGatewayError,
    503: ServiceUnavailableError, 504: Timeout,
}


def _error_object(text: str) -> dict[str, Any] | None:
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else None


def _kind(status: int, text: str, body: dict[str, Any] | None) -> type[ProviderError]:
    lower = text.lower()
    code = body.get("code") if body else None
    if status == 429 or _RATE_LIMIT.search(lower):
        return RateLimitError
    if code == "context_length_exceeded" or any(m in lower for m in _CONTEXT_MARKERS):
        return ContextWindowExceededError
    if "invalid_request_error" in text and "model_not_found" in text:
        return NotFoundError
    if ("invalid_request_error" in text and "content_policy_violation" in text) or \
            "request was rejected as a result of the safety system" in lower:
        return ContentPolicyViolationError
    if "invalid_request_error" in text and "Incorrect API key provided" not in text and status not in (401, 404):
        return BadRequestError  # litellm reads OpenAI's error type before the status
    return _BY_STATUS.get(status, APIError)


def provider_error(response: httpx.Response) -> ProviderError:
    """The exception for an error answer; its message is the provider's own, as the OpenAI SDK extracts it."""
    text = response.text
    body = _error_object(text)
    message = body.get("message") if body else None
    if not isinstance(message, str) or not message:
        message = f"Error code: {response.status_code} - {text}"
    return _kind(response.status_code, text, body)(message, status_code=response.status_code, body=body,
                                                   response=response)
