"""stdio_guard's line triage without a process (tests/integration/test_stdio_jsonrpc.py drives the real one)."""

from __future__ import annotations

import json

from mcp_types import JSONRPCError

from conductor_mcp.surfaces.stdio_guard import cut_deep, triage


def test_a_line_the_sdk_takes_passes_unchanged() -> None:
    line = '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "solve", "arguments": ' \
           '{"task": "[[[ \\" {{ é"}}}\r\n'
    assert triage(line.encode()) == line


def test_cut_deep_counts_brackets_outside_strings_only() -> None:
    deep = "[" * 50 + "]" * 50
    line = json.dumps({"s": "[[[[{{{{" * 20, "a": "@"}).replace('"@"', deep)
    cut = json.loads(cut_deep(line, keep=10))
    assert cut["s"] == "[[[[{{{{" * 20  # brackets in a string are text
    level, value = 2, cut["a"]  # the object is level 1
    while value:
        level, value = level + 1, value[0]
    assert level == 11  # levels 1 to 10 kept, the cut's [] at level 11
    assert json.loads(cut_deep('{"a": [1, [2]]}', keep=10)) == {"a": [1, [2]]}


def test_numbers_the_sdk_cannot_hold_still_get_an_answer_with_the_id() -> None:
    verdict = triage(b'{"jsonrpc": "2.0", "id": 3, "method": "ping", "params": {"n": ' + b"9" * 5000 + b"}}")
    assert isinstance(verdict, JSONRPCError) and verdict.id == 3 and verdict.error.code == -32600
