"""Tests of the scripted OpenAI-compatible server itself (it underpins other tests and benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.servers.openai_server import ScriptedServer, count_tokens

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def srv() -> Iterator[ScriptedServer]:
    with ScriptedServer(latency_s=0.0, model_latency={"slow": 0.3}) as server:
        yield server


@pytest.fixture
async def client(srv: ScriptedServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=5.0) as c:
        yield c


def chat(content: str, model: str = "scripted-a", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def test_completion_shape_usage_and_determinism(srv: ScriptedServer, client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Summarise the quarterly report for the board, please."},
    ]
    resp = await client.post("/chat/completions", json={"model": "scripted-a", "messages": messages})
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "chat.completion" and body["model"] == "scripted-a"
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert "scripted-a" in content and "Summarise the quarterly report for the board" in content
    assert content.splitlines()[-1].startswith("ANSWER: ")
    assert 80 <= len(content.split()) <= 250
    assert content == srv.reply_for("scripted-a", messages)
    prompt_tokens = sum(count_tokens(m["content"]) + 3 for m in messages)
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": count_tokens(content),
        "total_tokens": prompt_tokens + count_tokens(content),
    }
    # Deterministic per (model, messages); different model or prompt gives a different reply.
    again = (await client.post("/chat/completions", json={"model": "scripted-a", "messages": messages})).json()
    other = (await client.post("/chat/completions", json={"model": "scripted-b", "messages": messages})).json()
    assert again["choices"][0]["message"]["content"] == content
    assert other["choices"][0]["message"]["content"] != content
    root = await client.post(f"{srv.url}/chat/completions", json=chat("alias path"))  # no /v1 prefix
    assert root.status_code == 200
    models = (await client.get("/models")).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["scripted-a", "scripted-b"]
    bad = await client.post("/chat/completions", content=b"{nope")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


async def test_reply_line_and_scripted_rules(srv: ScriptedServer, client: httpx.AsyncClient) -> None:
    resp = await client.post("/chat/completions", json=chat('Context here.\nREPLY: {"ok": true}\nmore'))
    assert resp.json()["choices"][0]["message"]["content"] == '{"ok": true}'

    srv.script(model="scripted-b", reply=lambda msgs: f"{len(msgs)} message(s)")
    srv.script(contains="planner", reply="PLAN: step 1")
    srv.script(contains="planner", reply="never used: first match wins")
    for payload, expected in [
        (chat("hello", model="scripted-b"), "1 message(s)"),
        (chat("you are the planner\nREPLY: ignored"), "PLAN: step 1"),
    ]:
        got = (await client.post("/chat/completions", json=payload)).json()
        assert got["choices"][0]["message"]["content"] == expected
        assert got["usage"]["completion_tokens"] == count_tokens(expected)
    srv.clear_scripts()
    got = (await client.post("/chat/completions", json=chat("you are the planner"))).json()
    assert got["choices"][0]["message"]["content"].startswith("This is scripted-a")


async def test_streaming_matches_non_streaming(client: httpx.AsyncClient) -> None:
    payload = chat("Stream me a story about a lighthouse keeper.")
    plain = (await client.post("/chat/completions", json=payload)).json()
    events: list[str] = []
    streamed = {**payload, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/chat/completions", json=streamed) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "scripted-a" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert len(chunks) > 5  # really chunked, not one blob
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


async def test_latency_overlaps_and_can_be_overridden(srv: ScriptedServer, client: httpx.AsyncClient) -> None:
    async def timed(payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        resp = await client.post("/chat/completions", json=payload, headers=headers)
        assert resp.status_code == 200

    srv.reset_stats()
    async with anyio.create_task_group() as tg:
        tg.start_soon(timed, chat("one", model="slow"))
        tg.start_soon(timed, chat("two", model="slow"))
    first, second = sorted(srv.calls(), key=lambda c: c.t)
    assert first.latency_s >= 0.29 and second.latency_s >= 0.29  # each waited its model's latency
    assert second.t < first.t + first.latency_s  # ... at the same time: the second came while the first waited

    await timed(chat("fast please", model="slow"), {"x-latency-ms": "0"})
    assert srv.calls()[-1].latency_s < 0.29  # the header overrode the model's 0.3 s (no sleep of it)
    start = time.perf_counter()
    await timed(chat("delay please"), {"x-latency-ms": "150"})
    assert time.perf_counter() - start >= 0.14


@pytest.mark.parametrize("kind", ["429", "500", "malformed", "empty", "reset"])
async def test_each_fault_kind(srv: ScriptedServer, client: httpx.AsyncClient, kind: str) -> None:
    srv.set_faults(rate=1.0, kinds=[kind], retry_after=2.5)
    if kind == "reset":
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.post("/chat/completions", json=chat("boom"))
    else:
        resp = await client.post("/chat/completions", json=chat("boom"))
        if kind == "429":
            assert resp.status_code == 429 and resp.headers["retry-after"] == "3"
            assert resp.headers["retry-after-ms"] == "2500"
            assert resp.json()["error"]["code"] == "rate_limit_exceeded"
        elif kind == "500":
            assert resp.status_code == 500 and resp.json()["error"]["type"] == "server_error"
        elif kind == "malformed":
            assert resp.status_code == 200
            with pytest.raises(json.JSONDecodeError):
                resp.json()
        else:
            body = resp.json()
            assert body["choices"][0]["message"]["content"] == ""
            assert body["usage"]["completion_tokens"] == 0
    srv.set_faults(rate=0.0)
    ok = await client.post("/chat/completions", json=chat("after the fault"))  # server still healthy
    assert ok.status_code == 200
    stats = srv.stats()
    assert stats["by_outcome"] == {kind: 1, "ok": 1}
    assert srv.ok_calls_for("boom") == 0 and srv.ok_calls_for("after the fault") == 1


async def test_sub_second_retry_after_and_fail_models(srv: ScriptedServer, client: httpx.AsyncClient) -> None:
    srv.set_faults(rate=1.0, kinds=["429"], retry_after=0.05)
    resp = await client.post("/chat/completions", json=chat("x"))
    assert resp.headers["retry-after"] == "0" and resp.headers["retry-after-ms"] == "50"
    srv.set_faults(rate=0.0, fail_models={"bad-model": "500"})
    assert (await client.post("/chat/completions", json=chat("x", model="bad-model"))).status_code == 500
    assert (await client.post("/chat/completions", json=chat("x"))).status_code == 200


async def test_hang_does_not_block_other_requests() -> None:
    with ScriptedServer(fail_models={"stuck": "hang"}, hang_s=30.0) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as c:
            started = time.perf_counter()
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/chat/completions", json=chat("hi", model="stuck"), timeout=0.3)
            for _ in range(3):
                assert (await c.post("/chat/completions", json=chat("hi"), timeout=2.0)).status_code == 200
            assert time.perf_counter() - started < 1.5
            with anyio.fail_after(2):  # the server notices the client went away
                while server.stats()["by_outcome"].get("hang") != 1:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        # A request still hanging at shutdown is released instead of delaying exit by hang_s.
        server.set_faults(hang_s=30.0)

        async def hanging(c2: httpx.AsyncClient) -> None:
            resp = await c2.post("/chat/completions", json=chat("hi", model="stuck"), timeout=5.0)
            assert resp.status_code == 503

        async with httpx.AsyncClient(base_url=server.base_url) as c2, anyio.create_task_group() as tg:
            tg.start_soon(hanging, c2)
            await anyio.sleep(0.1)
            started = time.perf_counter()
            await anyio.to_thread.run_sync(server.stop)
            assert time.perf_counter() - started < 2.0


async def test_seeded_fault_rate_is_reproducible(srv: ScriptedServer, client: httpx.AsyncClient) -> None:
    async def run_batch() -> list[int]:
        return [(await client.post("/chat/completions", json=chat(f"q{i}"))).status_code for i in range(30)]

    srv.set_faults(rate=0.5, kinds=["429", "500"], seed=7)
    first = await run_batch()
    srv.set_faults(seed=7)
    assert await run_batch() == first
    assert {200, 429, 500} <= set(first)


async def test_http_control_endpoints(srv: ScriptedServer, client: httpx.AsyncClient) -> None:
    plan = await client.post(f"{srv.url}/control/faults", json={"rate": 1.0, "kinds": ["500"], "seed": 1})
    assert plan.status_code == 200 and plan.json()["kinds"] == ["500"]
    assert (await client.post("/chat/completions", json=chat("x"))).status_code == 500
    bad = await client.post(f"{srv.url}/control/faults", json={"kinds": ["teapot"]})
    assert bad.status_code == 400
    await client.post(f"{srv.url}/control/faults", json={"rate": 0})
    assert (await client.post("/chat/completions", json=chat("x"))).status_code == 200
    stats = (await client.get(f"{srv.url}/control/stats")).json()
    assert stats["requests"] == 2 and stats["ok"] == 1 and stats["by_outcome"] == {"500": 1, "ok": 1}
    assert len(stats["calls"]) == 2
    assert (await client.get(f"{srv.url}/control/stats", params={"calls": "0"})).json()["calls"] == []
    assert (await client.post(f"{srv.url}/control/reset")).status_code == 200
    assert srv.stats()["requests"] == 0


async def test_stats_under_concurrency(srv: ScriptedServer, client: httpx.AsyncClient) -> None:
    async def one(i: int) -> None:
        model = "scripted-a" if i % 2 else "scripted-b"
        resp = await client.post("/chat/completions", json=chat(f"step-{i % 5} go", model=model))
        assert resp.status_code == 200

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(one, i)
    stats = srv.stats()
    assert stats["requests"] == stats["ok"] == 60 and stats["in_flight"] == 0
    assert stats["by_model"] == {"scripted-a": 30, "scripted-b": 30}
    assert srv.ok_calls_for("step-3 go") == 12
    record = stats["calls"][0]
    assert set(record) >= {"t", "model", "prompt_sha256", "outcome", "latency_s"}
    srv.reset_stats()
    assert srv.stats()["requests"] == 0


async def test_zero_latency_overhead_is_small(srv: ScriptedServer, client: httpx.AsyncClient) -> None:
    for i in range(100):
        await client.post("/chat/completions", json=chat(f"request number {i} " * 20))
    latencies = [c.latency_s for c in srv.calls()]
    assert statistics.median(latencies) < 0.001, statistics.median(latencies)


async def test_litellm_roundtrip(srv: ScriptedServer) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    messages = [{"role": "user", "content": "Name three rivers in Europe."}]
    resp = await litellm.acompletion(
        model="openai/scripted-a", api_base=srv.base_url, api_key="sk-test", messages=messages, max_retries=0
    )
    assert isinstance(resp, litellm.ModelResponse)
    expected = srv.reply_for("scripted-a", messages)
    choice = resp.choices[0]
    assert isinstance(choice, litellm.Choices)
    assert choice.message.content == expected
    usage = resp.usage
    assert usage.prompt_tokens == count_tokens(messages[0]["content"]) + 3
    assert usage.completion_tokens == count_tokens(expected)
    assert srv.ok_calls_for("three rivers") == 1


def test_cli_subprocess_prints_ready_and_stops_on_sigterm() -> None:
    cmd = [sys.executable, "-m", "tests.servers.openai_server", "--port", "0", "--latency-ms", "20"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:") and line.endswith("/v1"), line
        base_url = line.split(" ", 1)[1]
        resp = httpx.post(f"{base_url}/chat/completions", json=chat("REPLY: pong"), timeout=5.0)
        assert resp.json()["choices"][0]["message"]["content"] == "pong"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_max_tokens_is_honoured_and_recorded(srv: ScriptedServer, client: httpx.AsyncClient) -> None:
    srv.script(reply="one two three four five six")
    body = (await client.post("/chat/completions", json=chat("cap me", max_tokens=4))).json()
    assert body["choices"][0]["message"]["content"] == "one two three four"
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 4
    newer = (await client.post("/chat/completions", json=chat("cap me", max_completion_tokens=2))).json()
    assert newer["choices"][0]["message"]["content"] == "one two"
    assert [c.max_tokens for c in srv.calls()] == [4, 2]


async def test_refusals_as_real_providers_send_them(srv: ScriptedServer, client: httpx.AsyncClient) -> None:
    srv.set_api_key("sk-right-key-000000000000")
    wrong = await client.post("/chat/completions", json=chat("hi"), headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401 and "Bearer sk-wrong" in wrong.json()["error"]["message"]  # echoed, as proxies do
    right = await client.post("/chat/completions", json=chat("hi"),
                              headers={"Authorization": "Bearer sk-right-key-000000000000"})
    assert right.status_code == 200
    assert [c.authorization for c in srv.calls()] == ["Bearer sk-wrong", "Bearer sk-right-key-000000000000"]
    srv.set_api_key(None)
    srv.set_faults(fail_models={"m404": "404", "long": "context_length", "broke": "quota"})
    for model, status, code in (("m404", 404, "model_not_found"), ("long", 400, "context_length_exceeded"),
                                ("broke", 429, "insufficient_quota")):
        resp = await client.post("/chat/completions", json=chat("hi", model=model))
        assert resp.status_code == status and resp.json()["error"]["code"] == code
