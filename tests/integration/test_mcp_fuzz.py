"""Property-based fuzzing of the MCP tools over raw stdio and raw streamable HTTP (hypothesis, derandomized).

Each example calls one tool with one hostile argument (a lone surrogate, arrays nested up to 3,000 deep, a string
over its limit, a wrong type, a number out of range or not finite, a missing required argument, an unknown worker
or strategy, a broken workflow) among valid ones, sometimes with a stray argument too. Properties: every call is
answered within ANSWER_S with a JSON-RPC error or a tool error (never a result), the server stays up, and no run is
stored. The requests are written as raw JSON text, so they hold what an SDK client would refuse to send."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conductor_mcp.runs.request import MAX_JSON_DEPTH, MAX_TASK_CHARS

from ..conftest import root_run_ids
from .mcp_helpers import WORKFLOW, server_env, stop_proc
from .test_mcp_transports import HEADERS, INIT, start_http
from .test_stdio_jsonrpc import ANSWER_S, NO_MODEL, RawStdio, start_raw_stdio

EXAMPLES = 400  # generated calls a transport, plus 5 canonical ones: a few seconds each, on 2 slow cores
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
ABSENT_KEY = "CONDUCTOR_FUZZ_ABSENT_KEY"  # the conductor's key, unset: a call wrongly let through plans nothing


@dataclass(frozen=True)
class Deep:
    """Arrays nested this deep: written into the request's text by `request_text` (json.dumps would recurse)."""

    depth: int


MISSING = object()  # a required argument left out
_DEEP = re.compile(r'"@@deep:(\d+)@@"')


def request_text(rid: int, name: str, arguments: dict[str, Any]) -> str:
    """A tools/call request as raw JSON text: lone surrogates as `\\udXXX` escapes, NaN and Infinity as Python
    writes them (not JSON), Deep values as real nesting."""
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    text = json.dumps(body, default=lambda d: f"@@deep:{d.depth}@@")
    return _DEEP.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text)


# -- hostile values --------------------------------------------------------------------------------------------

LONE_SURROGATE = st.builds(lambda a, s, b: a + s + b, st.text(max_size=8), st.characters(categories=["Cs"]),
                           st.text(max_size=8))
DEEP = st.integers(MAX_JSON_DEPTH + 1, 3000).map(Deep)  # past the rules' limit, up to past every JSON parser's
WRONG_TYPE = st.sampled_from([0, -7, 1.5, [], [1, 2], {}, {"a": 1}])  # never bools or numerals: pydantic coerces


def over(limit: int) -> st.SearchStrategy[str]:
    return st.integers(limit + 1, limit + 2000).map(lambda n: "x" * n)


def hostile_text(limit: int, required: bool) -> st.SearchStrategy[Any]:
    extra = [st.just(None), st.just(MISSING), st.sampled_from(["", " \n\t "])] if required else []
    return st.one_of(LONE_SURROGATE, DEEP, WRONG_TYPE, over(limit), *extra)


def hostile_int(lo: int, hi: int | None = None) -> st.SearchStrategy[Any]:
    above = [st.integers(min_value=hi + 1)] if hi is not None else []
    return st.one_of(st.integers(max_value=lo - 1), *above, st.sampled_from([0.5, 2.25, float("nan"), float("inf")]),
                     st.sampled_from(["five", [], {}]), DEEP)


def hostile_float(lo: float, hi: float | None = None, *, lo_allowed: bool = True) -> st.SearchStrategy[Any]:
    below = st.floats(max_value=lo - 1e-9) if lo_allowed else st.floats(max_value=lo)  # -0.0 >= 0: kept out
    above = [st.floats(min_value=hi, exclude_min=True)] if hi is not None else []
    return st.one_of(below, *above, st.sampled_from([float("nan"), "soon", [], {}]), DEEP)


def text_list(hostile_item: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(hostile_item, min_size=1, max_size=3)


def hostile_workflow() -> st.SearchStrategy[Any]:
    def with_step(**change: Any) -> dict[str, Any]:
        return {"steps": [{**WORKFLOW["steps"][0], **change}, *WORKFLOW["steps"][1:]]}

    return st.one_of(
        st.one_of(LONE_SURROGATE, DEEP, WRONG_TYPE).map(lambda v: with_step(instruction=v)),
        st.one_of(LONE_SURROGATE, st.just("nobody"), WRONG_TYPE).map(lambda v: with_step(worker=v)),
        st.sampled_from([[1], [7], "some", 3]).map(lambda v: with_step(access=v)),  # a step sees only earlier ones
        st.just(with_step(acess="all")),  # misspelt: refused, never dropped
        st.just({"steps": []}), st.just({"steps": WORKFLOW["steps"] * 2}),  # none; 6, over max_steps
        WRONG_TYPE, LONE_SURROGATE, DEEP)


# -- valid values ----------------------------------------------------------------------------------------------

TASK = st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=40).filter(str.strip)
RUN_ID = st.text(string.hexdigits.lower(), min_size=8, max_size=24)  # well formed, never a stored run
WAIT = st.floats(0, 0.05)  # never long: even a call wrongly let through returns at once


@dataclass(frozen=True)
class Param:
    valid: st.SearchStrategy[Any]
    hostile: st.SearchStrategy[Any]
    always: bool = False  # sent in every call (required, or a wait that must stay short)


BUDGET = {"max_rounds": Param(st.integers(1, 5), hostile_int(1, 5)),
          "max_depth": Param(st.integers(0, 4), hostile_int(0, 4)),
          "max_total_tokens": Param(st.integers(1, 10**6), hostile_int(1)),
          "max_usd": Param(st.floats(0.01, 5), hostile_float(0.0, lo_allowed=False))}
TOOLS: dict[str, dict[str, Param]] = {
    "solve": {"task": Param(TASK, hostile_text(MAX_TASK_CHARS, True), True),
              "workers": Param(st.just(["fast"]), st.one_of(text_list(LONE_SURROGATE), st.just(["nobody"]),
                                                             st.just("fast"), text_list(WRONG_TYPE), DEEP)),
              "max_steps": Param(st.integers(1, 5), hostile_int(1, 5)),
              "wait_s": Param(WAIT, hostile_float(0.0, 3600.0), True),
              "strategy": Param(st.sampled_from(["moa", "single:fast"]), st.one_of(
                  LONE_SURROGATE, st.sampled_from(["nope", "single:nobody", "recipe:nobody"]), WRONG_TYPE, DEEP)),
              "prefer": Param(st.sampled_from(["quality", "cost"]), st.one_of(
                  LONE_SURROGATE, st.just("fastest"), WRONG_TYPE)),
              **BUDGET},
    "plan_workflow": {"task": Param(TASK, hostile_text(MAX_TASK_CHARS, True), True),
                      "workers": Param(st.just(["fast", "slow", "strong"]), st.just(["nobody"])),
                      "workflow": Param(st.just(WORKFLOW), hostile_workflow(), True)},
    "run_step": {"run_id": Param(RUN_ID, hostile_text(200, True), True),
                 "step": Param(st.integers(0, 4), hostile_int(0), True),
                 "instruction": Param(TASK, hostile_text(MAX_TASK_CHARS, False)),
                 "worker": Param(st.just("fast"), st.one_of(LONE_SURROGATE, WRONG_TYPE, DEEP))},
    "resume": {"run_id": Param(RUN_ID, hostile_text(200, True), True),
               "wait_s": Param(WAIT, hostile_float(0.0, 3600.0), True), **BUDGET},
    "get_run": {"run_id": Param(RUN_ID, hostile_text(200, True), True),
                "wait_s": Param(WAIT, hostile_float(0.0, 3600.0), True)},
    "rate_run": {"run_id": Param(RUN_ID, hostile_text(200, True), True),
                 "score": Param(st.floats(0, 1), hostile_float(0.0, 1.0), True),
                 "note": Param(TASK, hostile_text(2000, False))},
}
STRAY = st.one_of(st.just({}), st.just({}), st.fixed_dictionaries({"bogus": st.one_of(TASK, DEEP)}),
                  LONE_SURROGATE.map(lambda k: {k: 1}))


@st.composite
def hostile_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """One tool, one hostile argument, the others valid or left out, and sometimes a stray argument."""
    name = draw(st.sampled_from(sorted(TOOLS)))
    params = TOOLS[name]
    bad = draw(st.sampled_from(sorted(params)))
    arguments: dict[str, Any] = {}
    for key, param in params.items():
        if key == bad:
            value = draw(param.hostile)
            if value is not MISSING:
                arguments[key] = value
        elif param.always or draw(st.booleans()):
            arguments[key] = draw(param.valid)
    return name, {**arguments, **draw(STRAY)}


CANONICAL = [("solve", {"task": "fix \ud800 this", "wait_s": 0}), ("get_run", {"run_id": "\udfff"}),
             ("solve", {"task": Deep(3000), "wait_s": 0}), ("rate_run", {"run_id": "x", "score": float("nan")}),
             ("solve", {"task": "x" * (MAX_TASK_CHARS + 1), "wait_s": 0})]


def fuzz_hostile_calls(test: Callable[..., None]) -> Callable[..., None]:
    """The test, given `call`: each CANONICAL call in turn, then EXAMPLES `hostile_calls()`, under FUZZ."""
    for call in reversed(CANONICAL):  # applied bottom-up, as stacked decorators are: run in CANONICAL's order
        test = example(call=call).via("canonical")(test)
    return FUZZ(given(call=hostile_calls())(test))


def refused(msg: dict[str, Any]) -> bool:
    """A JSON-RPC error, or a tool's error result."""
    return "error" in msg or msg.get("result", {}).get("isError") is True


# -- stdio ------------------------------------------------------------------------------------------------------


def fuzz_env(tmp: Path) -> dict[str, str]:
    manifest = tmp / "workers.yaml"
    manifest.write_text(f"conductor: {{model: openai/scripted-conductor, api_key_env: {ABSENT_KEY}}}\nworkers:\n"
                        + "".join(f"  - {{id: {w}, model: openai/scripted-{w}, api_base: '{NO_MODEL}'}}\n"
                                  for w in ("fast", "slow", "strong")))
    env = server_env(tmp, manifest)
    env.pop(ABSENT_KEY, None)
    return env


@pytest.fixture(scope="module")
def stdio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawStdio]:
    tmp = tmp_path_factory.mktemp("fuzz-stdio")
    server = start_raw_stdio(tmp, fuzz_env(tmp))
    yield server
    server.close()


@fuzz_hostile_calls
def test_stdio_answers_every_hostile_call_and_stores_nothing(stdio: RawStdio, call: tuple[str, dict[str, Any]]) -> None:
    name, arguments = call
    rid = stdio.next_id()
    stdio.send(request_text(rid, name, arguments).encode())
    msg = stdio.answer()  # within ANSWER_S, and JSON-RPC: anything else on stdout fails here
    assert msg["id"] == rid and refused(msg), msg
    assert stdio.proc.poll() is None, stdio.stderr()
    assert root_run_ids(stdio.db) == []


# -- streamable HTTP --------------------------------------------------------------------------------------------


class RawHttp:
    """An MCP session on `POST /mcp` with bodies sent as raw text; answers read from JSON or an SSE stream."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.http = httpx.Client(timeout=ANSWER_S)
        r = self.http.post(self.url, json=INIT, headers=HEADERS)
        assert r.status_code == 200, r.text
        self.headers = {**HEADERS, "mcp-session-id": r.headers["mcp-session-id"],
                        "mcp-protocol-version": "2025-11-25"}
        r = self.http.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                           headers=self.headers)
        assert r.status_code == 202, r.text

    def call(self, rid: int, text: str) -> tuple[int, dict[str, Any]]:
        """The HTTP status, and the answer to request `rid` (the SDK's -32700 and -32600 carry no id)."""
        r = self.http.post(self.url, content=text.encode(), headers=self.headers)
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            for line in r.text.splitlines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg.get("id") == rid:
                        return r.status_code, msg
            raise AssertionError(f"no answer to {rid} in the stream: {r.text[:2000]}")
        return r.status_code, r.json()


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RawHttp, Any, Path]]:
    tmp = tmp_path_factory.mktemp("fuzz-http")
    env = fuzz_env(tmp)
    proc, port = start_http(env, "http")
    client = RawHttp(port)
    status, msg = client.call(1, request_text(1, "get_run", {"run_id": "none-yet"}))  # opens the store
    assert status == 200 and refused(msg)
    yield client, proc, Path(env["CONDUCTOR_DB"])
    client.http.close()
    stop_proc(proc)


@fuzz_hostile_calls
def test_http_answers_every_hostile_call_and_stores_nothing(http: tuple[RawHttp, Any, Path],
                                                            call: tuple[str, dict[str, Any]]) -> None:
    client, proc, db = http
    name, arguments = call
    status, msg = client.call(7, request_text(7, name, arguments))
    assert status in (200, 400) and msg["id"] in (7, None) and refused(msg), (status, msg)
    assert proc.poll() is None
    assert root_run_ids(db) == []


@pytest.mark.parametrize("text,code,param", [
    (request_text(7, "solve", {"task": "fix \ud800 this", "wait_s": 0}), -32602, "task"),
    (request_text(7, "get_run", {"run_id": "\udfff"}), -32602, "run_id"),
    (request_text(7, "solve", {"task": Deep(3000), "wait_s": 0}), -32602, "task"),
    ('{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": [1]}', -32600, None),
    ('{"jsonrpc": "2.0", "id": 7, "method": ', -32700, None),
])
def test_http_names_what_the_sdk_refuses_to_parse(http: tuple[RawHttp, Any, Path], text: str, code: int,
                                                  param: str | None) -> None:
    """The SDK alone answers each of these 400 with -32700 and a column; the same answer as over stdio instead."""
    client, proc, db = http
    status, msg = client.call(7, text)
    assert status == 400 and msg["error"]["code"] == code, msg
    assert msg["id"] == (None if code == -32700 else 7), msg
    named = (msg["error"].get("data") or {}).get("param")
    assert named == param or str(named).startswith(f"{param}[0][0]"), msg  # the path to the deep part
    if param:
        assert f"Invalid params: {param}" in msg["error"]["message"], msg
    assert proc.poll() is None and root_run_ids(db) == []
