"""Keep API keys out of everything this package stores, logs or returns.

A provider's error can quote the key it was sent (a 401 echoing `Bearer sk-...`: OpenAI masks keys,
other OpenAI-compatible servers and proxies do not). Error text passes through `redact` where it is
made (worker calls, the remote conductor) and again where the store writes it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Any

MASK = "[REDACTED]"
_MIN_SECRET = 8  # shorter values ("none", "1", "true") would mask ordinary words, and are no real key
_key_envs: set[str] = set()  # variables that manifests name in `api_key_env`, whatever they are called
# Variables that hold a credential by their name: every *_API_KEY litellm reads, AZURE_AD_TOKEN, HF_TOKEN,
# AWS_SECRET_ACCESS_KEY, AWS_ACCESS_KEY_ID, our own CONDUCTOR_TOKEN.
_SECRET_NAME = re.compile(r"API_?KEY|(?:^|_)(?:KEY|TOKEN|SECRET|PASSWORD|CREDENTIALS?)(?:_|$)", re.IGNORECASE)
# Key shapes, for a key that is not in this process's environment (a proxy may echo another one).
_BEARER = re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_SHAPES = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}|\bAIza[0-9A-Za-z_-]{30,}")


def register_key_envs(names: Iterable[str | None]) -> None:
    """Treat these environment variables (a manifest's `api_key_env`s) as secrets too."""
    global _cached
    _key_envs.update(n for n in names if n)
    _cached = None


# The secret values, with the snapshot of the environment they were read from: reading them means decoding every
# variable (~50 µs), a step's writes redact several times, and a copy of CPython's raw mapping compares in ~1 µs.
_cached: tuple[dict[Any, Any], list[str]] | None = None


def _scan() -> list[str]:
    values = {v.strip() for k, v in os.environ.items()
              if (k in _key_envs or _SECRET_NAME.search(k)) and len(v.strip()) >= _MIN_SECRET}
    return sorted(values, key=len, reverse=True)  # a longer value first, in case one contains another


def _secret_values() -> list[str]:
    # read again whenever the environment changed: keys may be set or rotated after start-up
    global _cached
    raw = getattr(os.environ, "_data", None)  # os.environ's encoded dict (CPython); else scan at every call
    if not isinstance(raw, dict):
        return _scan()
    if _cached is None or _cached[0] != raw:
        _cached = (dict(raw), _scan())
    return _cached[1]


def redact(text: str) -> str:
    """`text` with the value of every key variable and every Bearer/sk-/AIza-shaped token masked."""
    if not text:
        return text
    for value in _secret_values():
        text = text.replace(value, MASK)
    # the regular expressions only where their literal parts occur: a scan of a plan costs more than the test
    if "bearer" in text.lower():
        text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return _SHAPES.sub(MASK, text) if "sk-" in text or "AIza" in text else text


def redact_optional(text: str | None) -> str | None:
    return None if text is None else redact(text)


class RedactFilter(logging.Filter):
    """Masks keys in a log record's final message (for loggers of libraries that may quote a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose args do not fit its format: leave it to logging's own report
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class RedactingFormatter(logging.Formatter):
    """Masks keys in everything a handler writes, tracebacks included: an exception's text may quote a key
    that no filter saw (a provider's 401 raised, then logged with its traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
