"""How a chat's messages become a run's task: the last user message, then the earlier messages as bounded context."""

from __future__ import annotations

import pytest

from conductor_mcp.errors import RunNotFound, RunStateError, StoreError, WorkerError
from conductor_mcp.surfaces.openai_chat import (
    MAX_CONTEXT_CHARS,
    MAX_CONTEXT_MESSAGE_CHARS,
    ApiError,
    compose_task,
    error_for,
)


def test_a_lone_message_is_the_task() -> None:
    assert compose_task([{"role": "user", "content": "  What is 2 + 2?  "}]) == ("What is 2 + 2?", 0)


def test_earlier_messages_follow_the_task_in_order() -> None:
    task, n = compose_task([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
        {"role": "user", "content": "the task"}])
    assert n == 3
    head, context = task.split("\n\n", 1)
    assert head == "the task"
    assert context.index("system: Be brief.") < context.index("user: first question") < \
        context.index("assistant: first answer")


def test_context_is_bounded_keeping_system_messages_and_the_latest_turns() -> None:
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn-{i:02d} " + "x" * 3000}
             for i in range(20)]
    huge = {"role": "user", "content": "HUGE " + "y" * 50_000}
    messages = [{"role": "system", "content": "SYSTEM RULE"}, huge, *turns, {"role": "user", "content": "the task"}]
    task, n = compose_task(messages)
    context = task.split("\n\n", 1)[1]
    assert task.startswith("the task") and "SYSTEM RULE" in context
    assert len(context) <= MAX_CONTEXT_CHARS + 1000  # the header, separators and the left-out line
    assert "turn-19" in context and "turn-18" in context and "turn-00" not in context and "HUGE" not in context
    assert f"({len(messages) - 1 - n} earlier message(s) left out)" in context
    kept = [t for t in context.split("\n\n") if t.startswith(("user:", "assistant:"))]
    assert all(len(t) <= MAX_CONTEXT_MESSAGE_CHARS + 100 for t in kept)


@pytest.mark.parametrize(("messages", "param"), [
    ([], "messages"),
    ([{"role": "assistant", "content": "no question"}], "messages"),
    ([{"role": "user", "content": "   "}], "messages[0].content"),
    ([{"role": "robot", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content[0]"),
    ([{"role": "tool", "content": "42", "tool_call_id": "t"}, {"role": "user", "content": "x"}], "messages[0]"),
])
def test_refused(messages: list[dict[str, object]], param: str) -> None:
    with pytest.raises(ApiError) as err:
        compose_task(messages)
    assert err.value.status == 400 and err.value.param == param


@pytest.mark.parametrize(("exc", "status", "type_", "code"), [
    (RunStateError("run r is running in another live process"), 409, "invalid_request_error", "run_busy"),
    (StoreError("trace store /x.db is read-only"), 503, "server_error", "store_unavailable"),
    (WorkerError("w: 401 Incorrect API key provided: Bearer sk-abcdefghijklmnopqrstuv"), 502, "server_error",
     "upstream_error"),
    (RunNotFound("run_id: no run 'r'"), 404, "invalid_request_error", "run_not_found"),
    (ValueError("boom with sk-abcdefghijklmnopqrstuvwx"), 500, "server_error", None),
])
def test_errors_map_to_openai_envelopes(exc: Exception, status: int, type_: str, code: str | None) -> None:
    """What a client reads: the status it branches on, the envelope's type and code, no retry by the SDK, and no
    key in the message."""
    err = error_for(exc)
    assert (err.status, err.type, err.code) == (status, type_, code)
    # the openai SDK retries 408, 409, 429 and 5xx by default: each of those is told not to
    assert err.retry is False or (status < 500 and status not in (408, 409, 429))
    assert "sk-abcdefghij" not in err.message and err.body()["error"]["message"] == err.message
