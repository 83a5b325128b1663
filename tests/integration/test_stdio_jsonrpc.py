"""Raw lines on `mcp-conductor serve`'s stdin, as a broken or hostile host could write them: each gets exactly one
answer of the code JSON-RPC 2.0 gives it (-32700 not JSON, -32600 not a request, -32602 bad params, naming the
parameter), with the request's id where it can be read; the server keeps answering; stdout carries only JSON-RPC;
and nothing is stored for a rejected line. The SDK alone answers none of these lines (surfaces/stdio_guard.py)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from ..conftest import root_run_ids
from .mcp_helpers import WORKFLOW, server_env, write_manifest
from .test_mcp_transports import INIT

SERVE = [str(Path(sys.executable).with_name("mcp-conductor")), "serve"]
ANSWER_S = 30.0  # an upper bound on waiting for an answer; a dropped line is what this catches
NO_MODEL = "http://127.0.0.1:9/v1"  # workers nobody reaches: no request here may call a model
Id = int | str | None


class RawStdio:
    """`mcp-conductor serve` on its real pipes: lines in; every stdout line parsed by a reader thread, so anything
    on stdout that is not a JSON-RPC message fails the test that reads it."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.db = Path(env["CONDUCTOR_DB"])
        self.log = tmp / "stderr.log"  # a file, not a pipe: a full pipe would stall the server's warnings
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(SERVE, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        self.inbox: queue.Queue[dict[str, Any] | str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        self._ids = 1000

    def _read(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                self.inbox.put(f"not JSON on stdout: {line[:200]!r}")
                continue
            ok = isinstance(msg, dict) and msg.get("jsonrpc") == "2.0"
            self.inbox.put(msg if ok else f"not JSON-RPC on stdout: {line[:200]!r}")
        self.inbox.put("stdout closed")

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def answer(self) -> dict[str, Any]:
        """The next response (result or error); the server's own notifications are skipped."""
        while True:
            try:
                msg = self.inbox.get(timeout=ANSWER_S)
            except queue.Empty:
                raise AssertionError(f"no answer in {ANSWER_S} s; server log:\n{self.stderr()}") from None
            if isinstance(msg, str):
                raise AssertionError(f"{msg}; server log:\n{self.stderr()}")
            if "method" not in msg:
                return msg

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        rid = self.next_id()
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            body["params"] = params
        self.send(json.dumps(body).encode())
        msg = self.answer()
        assert msg.get("id") == rid, msg
        return msg

    def alive(self) -> None:
        """Answers a ping, so it still reads lines, and is still running."""
        assert self.request("ping") == {"jsonrpc": "2.0", "id": self._ids, "result": {}}
        assert self.proc.poll() is None

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # EOF: the server ends
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def start_raw_stdio(tmp: Path, env: dict[str, str] | None = None) -> RawStdio:
    """Started and initialized, its store opened (a call that reads it), so that its runs can be counted. `env`:
    the server's environment (default: the three workers of mcp_helpers, on an address no model answers)."""
    raw = RawStdio(tmp, env or server_env(tmp, write_manifest(tmp, NO_MODEL)))
    raw.send(json.dumps(INIT).encode())
    assert "result" in raw.answer()
    raw.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
    r = raw.request("tools/call", {"name": "get_run", "arguments": {"run_id": "none-yet"}})
    assert r["result"]["isError"] is True
    return raw


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawStdio]:
    server = start_raw_stdio(tmp_path_factory.mktemp("stdio-jsonrpc"))
    yield server
    server.close()
    assert server.proc.returncode == 0, server.stderr()


def tool_call(rid: Id, name: str, arguments: str) -> bytes:
    """A tools/call line with `arguments` as raw JSON text: it may hold what json.dumps would never write."""
    return (f'{{"jsonrpc": "2.0", "id": {json.dumps(rid)}, "method": "tools/call", '
            f'"params": {{"name": "{name}", "arguments": {arguments}}}}}').encode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


PARSE_ERRORS = {
    "not JSON": b"hello, server",
    "cut short": b'{"jsonrpc": "2.0", "id": 1, "method": "ping"',
    "trailing text": b'{"jsonrpc": "2.0", "id": 2, "method": "ping"} and more',
    "not UTF-8": b'{"jsonrpc": "2.0", "id": 3, "method": "ping", "params": {"x": "\xff\xfe"}}',  # the SDK replaced it
}

INVALID_REQUESTS: dict[str, tuple[bytes, Id]] = {
    "empty batch": (b"[]", None),
    "batch": (b'[{"jsonrpc": "2.0", "id": 4, "method": "ping"}]', None),
    "a string": (b'"ping"', None),
    "no method": (b'{"jsonrpc": "2.0", "id": 5}', 5),
    "JSON-RPC 1.0": (b'{"jsonrpc": "1.0", "id": 6, "method": "ping"}', 6),
    "method not a string": (b'{"jsonrpc": "2.0", "id": "seven", "method": 7}', "seven"),
    "method not Unicode": (b'{"jsonrpc": "2.0", "id": 8, "method": "ping\\ud800"}', 8),
    "params not an object": (b'{"jsonrpc": "2.0", "id": 9, "method": "ping", "params": [1]}', 9),
    # the SDK read these as notifications, and answered nothing
    "id null": (b'{"jsonrpc": "2.0", "id": null, "method": "ping"}', None),
    "id an object": (b'{"jsonrpc": "2.0", "id": {}, "method": "ping"}', None),
    "id a float": (b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', None),
    "id a bool": (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', None),
    "id not Unicode": (b'{"jsonrpc": "2.0", "id": "\\udc00", "method": "ping"}', None),
}

INVALID_PARAMS: dict[str, tuple[bytes, Id, str]] = {
    "lone surrogate in a task": (tool_call(10, "solve", '{"task": "fix \\ud800 this", "wait_s": 0}'), 10, "task"),
    "lone low surrogate in a run id": (tool_call(11, "get_run", '{"run_id": "\\udfff"}'), 11, "run_id"),
    "task nested 3,000 deep": (tool_call(12, "solve", f'{{"task": {nested(3000)}}}'), 12, "task[0][0]"),
    "deep in a workflow": (tool_call("13", "plan_workflow", '{"task": "t", "workflow": {"steps": [{"worker": '
                                     f'"fast", "instruction": {nested(1000)}}}]}}}}'), "13",
                           "workflow.steps[0].instruction[0]"),
    "surrogate in a workflow": (tool_call(14, "plan_workflow", '{"task": "t", "workflow": {"steps": [{"worker": '
                                          '"fast", "instruction": "\\ud83d"}]}}'), 14, "workflow.steps[0].instruction"),
    "surrogate in an argument's name": (tool_call(15, "get_run", '{"run_id": "x", "\\ud800": 1}'), 15, "\\ud800"),
    "surrogate in a resource uri": (b'{"jsonrpc": "2.0", "id": 16, "method": "resources/read", "params": '
                                    b'{"uri": "conductor://runs/\\ud800"}}', 16, "uri"),
}


@pytest.mark.parametrize("line", PARSE_ERRORS.values(), ids=PARSE_ERRORS.keys())
def test_a_line_that_is_not_json_gets_a_parse_error(raw: RawStdio, line: bytes) -> None:
    raw.send(line)
    msg = raw.answer()
    assert msg["id"] is None and msg["error"]["code"] == -32700, msg
    raw.alive()


@pytest.mark.parametrize(("line", "rid"), INVALID_REQUESTS.values(), ids=INVALID_REQUESTS.keys())
def test_a_line_that_is_no_request_gets_invalid_request_with_its_id(raw: RawStdio, line: bytes, rid: Id) -> None:
    raw.send(line)
    msg = raw.answer()
    assert msg["id"] == rid and msg["error"]["code"] == -32600, msg
    raw.alive()


@pytest.mark.parametrize(("line", "rid", "param"), INVALID_PARAMS.values(), ids=INVALID_PARAMS.keys())
def test_invalid_text_or_nesting_in_params_is_refused_naming_the_parameter(raw: RawStdio, line: bytes, rid: Id,
                                                                           param: str) -> None:
    before = root_run_ids(raw.db)
    raw.send(line)
    msg = raw.answer()
    assert msg["id"] == rid and msg["error"]["code"] == -32602, msg
    assert msg["error"]["data"]["param"].startswith(param)  # the path to the value: `task[0][0]...` for nesting
    assert msg["error"]["message"].startswith(f"Invalid params: {param}"), msg
    raw.alive()
    assert root_run_ids(raw.db) == before  # refused before the server saw it: nothing stored


def test_every_hostile_line_gets_exactly_one_answer_in_order(raw: RawStdio) -> None:
    """All at once, then a ping: one answer each, in the order sent, and nothing else; a response and a bad
    notification get none (JSON-RPC answers neither), nor do blank lines."""
    lines = [*PARSE_ERRORS.values(), *(line for line, _ in INVALID_REQUESTS.values()),
             *(line for line, _, _ in INVALID_PARAMS.values())]
    silent = [b'{"jsonrpc": "2.0", "id": 77, "result": {}}', b"   ",
              b'{"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "\\ud800"}}']
    for line in [*lines, *silent]:
        raw.send(line)
    ping = raw.next_id()
    raw.send(json.dumps({"jsonrpc": "2.0", "id": ping, "method": "ping"}).encode())
    answers = [raw.answer() for _ in range(len(lines) + 1)]
    codes = [a["error"]["code"] for a in answers[:-1]]
    assert codes == [-32700] * len(PARSE_ERRORS) + [-32600] * len(INVALID_REQUESTS) + [-32602] * len(INVALID_PARAMS)
    assert answers[-1] == {"jsonrpc": "2.0", "id": ping, "result": {}}
    assert raw.inbox.empty()


def test_a_line_over_4_mib_is_refused_and_the_next_line_is_read(raw: RawStdio) -> None:
    task = "x" * (4 * 1024 * 1024)
    raw.send(tool_call(20, "solve", json.dumps({"task": task})))
    msg = raw.answer()
    assert msg["id"] is None and msg["error"]["code"] == -32600 and "4194304 bytes" in msg["error"]["message"]
    raw.alive()


def test_good_requests_are_served_after_hostile_ones(raw: RawStdio) -> None:
    """The rejected lines changed nothing: a host's plan is stored and read back, as over any client."""
    for line in [*PARSE_ERRORS.values(), *(line for line, _, _ in INVALID_PARAMS.values())]:
        raw.send(line)
        assert "error" in raw.answer()
    before = root_run_ids(raw.db)
    r = raw.request("tools/call", {"name": "plan_workflow", "arguments": {"task": "after junk", "workflow": WORKFLOW}})
    run_id = r["result"]["structuredContent"]["run_id"]
    r = raw.request("tools/call", {"name": "get_run", "arguments": {"run_id": run_id}})
    assert r["result"]["structuredContent"]["status"] == "planned"
    assert root_run_ids(raw.db) == [run_id, *before]
