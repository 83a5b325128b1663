"""Redaction of keys from error text: by the value of each key variable, and by the shapes keys take."""

from __future__ import annotations

import logging
import sys

import pytest

from conductor_mcp.redact import RedactFilter, RedactingFormatter, redact, register_key_envs


def test_values_of_key_variables_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    # keys that match no shape are masked by value: a manifest's api_key_env, whatever its name, and any
    # variable named like a provider's key
    monkeypatch.setenv("ODDLY_NAMED_WORKER_CRED", "plainvalue-1234567")
    monkeypatch.setenv("SOMEPROVIDER_API_KEY", "xyz-987654321")
    monkeypatch.setenv("SHORT_API_KEY", "none")  # too short to be a key: "none" stays a word
    text = "echo plainvalue-1234567 and xyz-987654321; key none"
    assert redact(text) == "echo plainvalue-1234567 and [REDACTED]; key none"
    register_key_envs(["ODDLY_NAMED_WORKER_CRED", None])
    assert redact(text) == "echo [REDACTED] and [REDACTED]; key none"


def test_key_shapes_are_masked() -> None:
    assert redact("Authorization: Bearer abc.def-ghi_123") == "Authorization: Bearer [REDACTED]"
    assert redact("got sk-ant-api03-abcdefghijklmnop and AIza" + "x" * 35) == "got [REDACTED] and [REDACTED]"
    assert redact("risk-free task-force sk-learn, Bearer x") == "risk-free task-force sk-learn, Bearer x"


def test_log_filter_masks_the_formatted_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTHER_API_KEY", "value-of-the-key-42")
    record = logging.LogRecord("LiteLLM", logging.ERROR, __file__, 1, "sent %s", ("value-of-the-key-42",), None)
    assert RedactFilter().filter(record) and record.getMessage() == "sent [REDACTED]"


def test_the_cli_log_format_masks_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    # the message is clean; the key is only in the exception's text, which a filter on the message never sees
    monkeypatch.setenv("OTHER_API_KEY", "value-of-the-key-42")
    try:
        raise RuntimeError("401: invalid key value-of-the-key-42, Authorization: Bearer tok-abcdefgh123")
    except RuntimeError:
        record = logging.LogRecord("conductor_mcp", logging.ERROR, __file__, 1, "worker failed", (), sys.exc_info())
    out = RedactingFormatter("%(message)s").format(record)
    assert "Traceback" in out and "RuntimeError: 401: invalid key [REDACTED]" in out
    assert "value-of-the-key-42" not in out and "tok-abcdefgh123" not in out


def test_a_key_set_or_rotated_after_a_call_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    # the secret values are cached against the environment: any change to it is seen at the next call
    monkeypatch.setenv("ROTATED_API_KEY", "first-value-123456")
    assert redact("first-value-123456") == "[REDACTED]"
    monkeypatch.setenv("ROTATED_API_KEY", "second-value-123456")
    assert redact("first-value-123456 second-value-123456") == "first-value-123456 [REDACTED]"
    monkeypatch.setenv("LATE_TOKEN", "late-value-1234567")
    assert redact("late-value-1234567, BEARER abcdefgh123") == "[REDACTED], BEARER [REDACTED]"
