"""The OpenAI-compatible endpoint as its clients use it: `mcp-conductor serve --transport http` in a subprocess,
workers through litellm on the scripted server, and the official `openai` SDK (sync and async, streaming and
not), litellm as a client, and raw HTTP for what the SDKs hide (envelopes, headers, SSE lines, a disconnect).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest
from mcp import Client

from conductor_mcp.models import PlanInfo
from conductor_mcp.store import Store

from ..servers.openai_server import ScriptedServer, count_tokens
from .mcp_helpers import server_env, stop_proc
from .test_mcp_transports import STRONG_TOKEN, start_http

pytestmark = pytest.mark.anyio
SECRET = "sk-proj-conductorTEST0123456789abcdefXYZ"  # a key shaped like a real one
KEY_ENV = "CONDUCTOR_TEST_WORKER_AUTH"  # a variable whose name says nothing about keys
WORKERS = ("strong", "fast", "slow")
MODELS = ["conductor", "conductor-mini", "conductor-ultra", "moa", "strong", "fast", "slow", "keyed"]
CHAIN = {"steps": [
    {"worker": "fast", "instruction": "Draft one", "access": "none"},
    {"worker": "slow", "instruction": "Draft two", "access": [0]},
]}
THREE = {"steps": [
    {"worker": "fast", "instruction": "Draft one", "access": "none"},
    {"worker": "slow", "instruction": "Draft two", "access": "none"},
    {"worker": "strong", "instruction": "Merge the drafts", "access": "all"},
]}


def write_manifest(path: Path, base_url: str) -> Path:
    lines = ["conductor: {gguf: bundled, max_steps: 3}", "workers:"]
    for wid in WORKERS:
        lines += [f"  - id: {wid}", f"    model: openai/scripted-{wid}", f"    api_base: {base_url}",
                  f"    description: scripted {wid}", "    timeout_s: 30", "    params: {max_tokens: 200}"]
    lines += ["  - id: keyed", "    model: openai/scripted-keyed", f"    api_base: {base_url}",
              f"    api_key_env: {KEY_ENV}", "    timeout_s: 30",
              "  - id: absent", "    model: openai/scripted-absent", f"    api_base: {base_url}",
              "    api_key_env: CONDUCTOR_TEST_ABSENT_KEY", "    timeout_s: 30"]
    path.write_text("\n".join(lines) + "\n")
    return path


class Served:
    def __init__(self, port: int, db: Path, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.db = db
        self.proc = proc
        self.root = f"http://127.0.0.1:{port}"
        self.base = f"{self.root}/v1"

    def store(self) -> Store:
        return Store(self.db)


def serve(tmp: Path, base_url: str, *extra: str, host: str = "127.0.0.1", transport: str = "http",
          env_extra: dict[str, str] | None = None) -> Served:
    manifest = write_manifest(tmp / "workers.yaml", base_url)
    env = {**server_env(tmp, manifest), KEY_ENV: SECRET, **(env_extra or {})}
    env.pop("CONDUCTOR_TEST_ABSENT_KEY", None)
    proc, port = start_http(env, transport, *extra, host=host)
    return Served(port, tmp / "traces.db", proc)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedServer) -> Iterator[Served]:
    """One server for the tests that need nothing special of it."""
    served = serve(tmp_path_factory.mktemp("openai-api"), scripted.base_url)
    yield served
    stop_proc(served.proc)


def ext(obj: Any) -> dict[str, Any]:
    """The `conductor` extension object of an SDK response or chunk."""
    data = obj.model_extra or {}
    assert "conductor" in data, f"no conductor object in {obj!r}"
    return dict(data["conductor"])


# -- the openai SDK ------------------------------------------------------------------------------------------
def test_models_are_what_can_be_called_now(api: Served, server: ScriptedServer) -> None:
    client = openai.OpenAI(base_url=api.base, api_key="any key on loopback", max_retries=0)
    assert [m.id for m in client.models.list()] == MODELS  # `absent` has no key: not listed
    assert client.models.retrieve("moa").id == "moa"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="absent", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found" and "CONDUCTOR_TEST_ABSENT_KEY is not set" in err.value.message
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found" and "conductor-mini" in err.value.message
    assert server.calls() == []  # nothing was called for a refused request


def test_sync_completion_carries_the_conversation(api: Served, server: ScriptedServer) -> None:
    """The last user message is the task; the system message and earlier turns reach the worker as context."""
    def reply(messages: list[dict[str, Any]]) -> str:
        text = json.dumps(messages)
        return "context seen" if "SYSTEM-RULE" in text and "EARLIER-QUESTION" in text and "EARLIER-ANSWER" in text \
            else "context missing"

    server.script(model="scripted-fast", reply=reply)
    client = openai.OpenAI(base_url=api.base, api_key="x", max_retries=0)
    r = client.chat.completions.create(model="fast", messages=[
        {"role": "system", "content": "SYSTEM-RULE: answer in two words"},
        {"role": "user", "content": "EARLIER-QUESTION about paint"},
        {"role": "assistant", "content": "EARLIER-ANSWER: blue"},
        {"role": "user", "content": [{"type": "text", "text": "And the ceiling?"}]}])
    assert r.object == "chat.completion" and r.model == "fast"
    assert r.choices[0].message.content == "context seen" and r.choices[0].finish_reason == "stop"
    meta = ext(r)
    assert meta["status"] == "completed" and meta["trace_uri"] == f"conductor://runs/{meta['run_id']}"
    assert [s["worker"] for s in meta["workflow"]["steps"]] == ["fast"]
    # usage: the one worker call as the provider counted it; no conductor call for a worker model
    calls = server.calls()
    assert [c.model for c in calls] == ["scripted-fast"]
    assert r.usage is not None and r.usage.completion_tokens == count_tokens("context seen")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert (r.usage.model_extra or {})["orchestration_tokens"] == 0
    store = api.store()
    try:
        run = store.get_run(meta["run_id"])
        assert run.task.startswith("And the ceiling?") and "SYSTEM-RULE" in run.task
        assert store.options(run.id)["strategy"] == "single:fast"
        total = store.tree_usage(run.id)
    finally:
        store.close()
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (total.prompt_tokens, total.completion_tokens)


async def test_async_stream_shows_progress_then_answer_then_usage(api: Served, server: ScriptedServer) -> None:
    server.script(model="scripted-strong", reply="MERGED ANSWER")
    reasoning, content, finishes, usage, metas = "", "", [], None, []
    async with openai.AsyncOpenAI(base_url=api.base, api_key="x", max_retries=0) as client:  # closed on this loop
        stream = await client.chat.completions.create(
            model="conductor", messages=[{"role": "user", "content": "Write two drafts and merge them."}],
            stream=True, stream_options={"include_usage": True}, extra_body={"conductor": {"workflow": THREE}})
        async for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            if chunk.choices:
                delta = chunk.choices[0].delta
                reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
                content += delta.content or ""
                if chunk.choices[0].finish_reason:
                    finishes.append(chunk.choices[0].finish_reason)
            if chunk.usage is not None:
                usage = chunk.usage
            if "conductor" in (chunk.model_extra or {}):
                metas.append(ext(chunk))
    assert content == "MERGED ANSWER" and finishes == ["stop"]
    lines = reasoning.splitlines()
    plan = lines.index(next(x for x in lines if x.startswith("Plan: 3 step(s), host")))
    merge_start = lines.index("step 2 (strong) started: Merge the drafts")
    merge_end = lines.index("step 2 (strong) completed")
    draft_ends = [lines.index("step 0 (fast) completed"), lines.index("step 1 (slow) completed")]
    assert plan < min(draft_ends) and max(draft_ends) < merge_start < merge_end  # as it happened
    meta = metas[-1]
    assert meta["status"] == "completed" and metas[0]["run_id"] == meta["run_id"]  # the id comes first
    assert usage is not None
    store = api.store()
    try:
        total = store.tree_usage(meta["run_id"])
    finally:
        store.close()
    assert (usage.prompt_tokens, usage.completion_tokens) == (total.prompt_tokens, total.completion_tokens)
    assert len(server.calls()) == 3


async def test_async_completion_with_extra_body_workflow(api: Served, server: ScriptedServer) -> None:
    """The async client without streaming: a host workflow through extra_body, one answer, the run tree's usage."""
    server.script(model="scripted-slow", reply="SECOND DRAFT")
    async with openai.AsyncOpenAI(base_url=api.base, api_key="x", max_retries=0) as client:
        r = await client.chat.completions.create(
            model="conductor", messages=[{"role": "user", "content": "Draft twice, the second from the first."}],
            extra_body={"conductor": {"workflow": CHAIN}})
    assert r.object == "chat.completion" and r.choices[0].message.content == "SECOND DRAFT"
    assert r.choices[0].finish_reason == "stop"
    meta = ext(r)
    assert meta["status"] == "completed" and [s["worker"] for s in meta["workflow"]["steps"]] == ["fast", "slow"]
    assert [c.model for c in server.calls()] == ["scripted-fast", "scripted-slow"]  # a host workflow: no planning
    store = api.store()
    try:
        total = store.tree_usage(meta["run_id"])
    finally:
        store.close()
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (
        total.prompt_tokens, total.completion_tokens)


def test_sync_stream_with_the_conductor_planning(api: Served, server: ScriptedServer) -> None:
    """conductor-mini: the bundled conductor plans (at most 2 steps, no rounds, no recursion, prefer cost), the
    planning is streamed as reasoning, and its tokens are the usage's orchestration tokens."""
    client = openai.OpenAI(base_url=api.base, api_key="x", max_retries=0)
    reasoning, content, usage = "", "", None
    meta: dict[str, Any] = {}
    for chunk in client.chat.completions.create(
            model="conductor-mini", messages=[{"role": "user", "content": "Name a colour.\nREPLY: teal"}],
            stream=True, stream_options={"include_usage": True}, extra_body={"conductor": {"workers": ["fast"]}}):
        if chunk.choices:
            reasoning += (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
            content += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
        meta = (chunk.model_extra or {}).get("conductor") or meta
    assert content == "teal"
    assert "planning with gguf:" in reasoning and "planned " in reasoning
    assert meta["status"] == "completed" and meta["orchestration"]["calls"] >= 1
    assert usage is not None and (usage.model_extra or {})["orchestration_tokens"] == \
        meta["orchestration"]["total_tokens"] > 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == meta["orchestration"]["completion_tokens"]
    store = api.store()
    try:
        opts = store.options(meta["run_id"])
        run = store.get_run(meta["run_id"])
    finally:
        store.close()
    assert opts["max_steps"] == 2 and opts["prefer"] == "cost" and opts["workers"] == ["fast"]
    assert opts["budget"]["max_rounds"] == 1 and opts["budget"]["max_depth"] == 0
    assert run.plan.usage.total_tokens == meta["orchestration"]["total_tokens"]


def test_ultra_reviews_and_its_usage_counts_the_reviews(api: Served, server: ScriptedServer) -> None:
    """conductor-ultra turns review rounds on: the conductor reviews the answer, and the usage counts every call of
    the tree once: the steps of every round, and each review (the conductor's share)."""
    client = openai.OpenAI(base_url=api.base, api_key="x", max_retries=0)
    r = client.chat.completions.create(
        model="conductor-ultra", messages=[{"role": "user", "content": "Say yes.\nREPLY: yes"}],
        extra_body={"conductor": {"workflow": {"steps": [{"worker": "fast", "instruction": "Answer the task."}]},
                                  "workers": ["fast"]}})
    meta = ext(r)
    store = api.store()
    try:
        opts = store.options(meta["run_id"])
        tree, runs = [meta["run_id"]], []
        while tree:  # the rounds, and any child run a corrective round's recursion made
            runs.append(store.get_run(tree[0]))
            tree = tree[1:] + store.children(tree[0])
        # the conductor's calls: each review, and the plan of any recursion (a round's plan is its review)
        reviews = [PlanInfo.model_validate(x["info"]).usage for run in runs
                   for x in store.options(run.id).get("reviews") or []] + \
                  [run.plan.usage for run in runs if store.options(run.id)["kind"] != "round"]
    finally:
        store.close()
    assert opts["budget"]["max_rounds"] == 3 and opts["budget"]["max_depth"] == 2 and opts["prefer"] == "quality"
    assert opts["reviews"][0]["round"] == 1  # the conductor reviewed the first round's answer
    steps = [s.usage for run in runs for s in run.steps]
    assert r.usage is not None and len(server.calls()) == sum(u.calls for u in steps)
    assert r.usage.prompt_tokens == sum(u.prompt_tokens for u in steps + reviews)
    assert r.usage.completion_tokens == sum(u.completion_tokens for u in steps + reviews)
    assert (r.usage.model_extra or {})["orchestration_tokens"] == sum(u.total_tokens for u in reviews) > 0
    assert meta["orchestration"]["calls"] == sum(u.calls for u in reviews) >= 1


def test_extra_body_options_and_a_budget_stop(api: Served, server: ScriptedServer) -> None:
    client = openai.OpenAI(base_url=api.base, api_key="x", max_retries=0)
    r = client.chat.completions.create(model="moa", messages=[{"role": "user", "content": "Pick a number."}],
                                       extra_body={"conductor": {"workers": ["slow", "fast"], "max_steps": 3}})
    steps = ext(r)["workflow"]["steps"]
    assert [s["worker"] for s in steps] == ["slow", "fast", "slow"]  # two proposers, the first aggregates
    assert {c.model for c in server.calls()} == {"scripted-slow", "scripted-fast"}
    # a budget that affords the first step but not the second (its instruction alone is 6,000 bytes): the run stops
    # with the best answer so far, as a model stops at its token limit
    server.script(model="scripted-fast", reply="first draft")
    long_step = {"steps": [{"worker": "fast", "instruction": "Draft it."},
                           {"worker": "slow", "instruction": "Polish it. " + "Be careful. " * 500, "access": "all"}]}
    r = client.chat.completions.create(model="conductor", messages=[{"role": "user", "content": "Draft a line."}],
                                       extra_body={"conductor": {"workflow": long_step, "max_total_tokens": 3000}})
    meta = ext(r)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content == "first draft"
    assert meta["status"] == "budget_exceeded" and "max_total_tokens 3000" in meta["error"]
    assert [s["status"] for s in meta["steps"]] == ["completed", "pending"]
    assert r.usage is not None and r.usage.total_tokens <= 3000


# -- litellm as a client -------------------------------------------------------------------------------------
def test_litellm_as_a_client(api: Served, server: ScriptedServer) -> None:
    """litellm's `openai/<model>` with an api_base, as any litellm user would call us (sync: litellm keeps its async
    clients across calls, and a test's event loop is gone after the test)."""
    import litellm

    server.script(model="scripted-slow", reply="SECOND DRAFT")
    messages = [{"role": "user", "content": "Draft twice."}]
    options = {"conductor": {"workflow": CHAIN}}
    r = litellm.completion(model="openai/conductor", api_base=api.base, api_key="x", messages=messages,
                           extra_body=options, max_retries=0)
    assert r.choices[0].message.content == "SECOND DRAFT"
    assert r.usage.total_tokens > 0
    reasoning, content = "", ""
    for chunk in litellm.completion(model="openai/conductor", api_base=api.base, api_key="x", messages=messages,
                                    extra_body=options, stream=True, max_retries=0):
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
    assert content == "SECOND DRAFT"
    assert "step 1 (slow) completed" in reasoning


# -- raw HTTP ------------------------------------------------------------------------------------------------
def post(api: Served, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(f"{api.base}/chat/completions", json=body, timeout=60, **kw)


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"messages": USER}, 400, "model", None),
    ({"model": "fast"}, 400, "messages", None),
    ({"model": "nope", "messages": USER}, 404, "model", "model_not_found"),
    ({"model": "fast", "messages": []}, 400, "messages", None),
    ({"model": "fast", "messages": [{"role": "system", "content": "only a system message"}]}, 400, "messages", None),
    ({"model": "fast", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     400, "messages[0].content[1]", "unsupported_content"),
    ({"model": "fast", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
     400, "messages[0].content[0]", "unsupported_content"),
    ({"model": "fast", "messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]},
     400, "tools", "unsupported_parameter"),
    ({"model": "fast", "messages": USER, "n": 2}, 400, "n", "unsupported_parameter"),
    ({"model": "fast", "messages": USER, "modalities": ["text", "audio"]}, 400, "modalities", "unsupported_parameter"),
    ({"model": "fast", "messages": USER, "conductor": {"max_stepz": 2}}, 400, "conductor.max_stepz", None),
    ({"model": "fast", "messages": USER, "conductor": {"max_steps": 9}}, 400, "conductor.max_steps", None),
    ({"model": "moa", "messages": USER, "conductor": {"workers": ["fast", "nobody"]}}, 400, "conductor.workers",
     None),
    ({"model": "fast", "messages": USER, "conductor": {"workers": ["slow"]}}, 400, "conductor.workers", None),
    ({"model": "conductor", "messages": USER, "conductor": {"workflow": {"steps": [{"worker": "ghost",
                                                                                    "instruction": "x"}]}}},
     400, "conductor.workflow", None),
    ({"model": "fast", "messages": USER, "max_tokens": -1}, 400, "max_tokens", None),
    ({"model": "fast", "messages": USER, "max_tokens": 10**12}, 400, "max_tokens", None),
    ({"model": "fast", "messages": USER, "temperature": "hot"}, 400, "temperature", None),
    ({"model": "fast", "messages": USER, "top_p": 1.5}, 400, "top_p", None),
    ({"model": "fast", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ({"model": "fast", "messages": USER, "temprature": 0.2}, 400, "temprature", "unknown_parameter"),
    ({"model": "fast", "messages": USER, "conductor": {"workers": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["fast"]]]]]]]]]]]]
      ]]]]]]]]]]]]]]]]]]]]]]}}, 400, "conductor.workers" + "[0]" * 30, None),
])
def test_refusals_in_openai_envelopes(api: Served, server: ScriptedServer, body: dict[str, Any], status: int,
                                      param: str, code: str | None) -> None:
    r = post(api, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert server.calls() == []  # refused before anything was spent


def test_malformed_requests(api: Served) -> None:
    r = httpx.post(f"{api.base}/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{api.base}/chat/completions", content=json.dumps({"model": "fast", "messages": USER}),
                   headers={"content-type": "text/plain"})  # what a browser form may send without a preflight
    assert r.status_code == 400 and "application/json" in r.json()["error"]["message"]
    r = httpx.get(f"{api.base}/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.get(f"{api.base}/embeddings")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    huge = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]})
    r = httpx.post(f"{api.base}/chat/completions", content=huge, headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_failed_run_is_a_502_that_no_client_retries(api: Served, server: ScriptedServer) -> None:
    server.set_faults(fail_models={"scripted-slow": "500"})
    r = post(api, {"model": "slow", "messages": USER})
    assert r.status_code == 502 and r.headers["x-should-retry"] == "false"
    error = r.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "run_failed"
    meta = error["conductor"]
    assert meta["status"] == "failed" and meta["run_id"] in error["message"] and "resume" in error["message"]
    attempts = len(server.calls())
    assert attempts >= 1
    # the SDK honours x-should-retry: one run, however many retries the client allows
    client = openai.OpenAI(base_url=api.base, api_key="x", max_retries=3)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "again"}])
    assert err.value.status_code == 502
    assert len(server.calls()) == 2 * attempts


@pytest.mark.parametrize("stream", [False, True])
def test_provider_errors_never_leak_keys(api: Served, server: ScriptedServer, stream: bool) -> None:
    """The provider quotes the key it was sent (`Incorrect API key provided: Bearer sk-...`)."""
    server.set_api_key("sk-the-key-the-provider-wants-000000")
    r = post(api, {"model": "keyed", "messages": USER, "stream": stream})
    assert [c.authorization for c in server.calls()] == [f"Bearer {SECRET}"]  # it was sent, and refused
    if stream:
        assert r.status_code == 200
        events = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
        error = events[-1]["error"]
    else:
        assert r.status_code == 502
        error = r.json()["error"]
    assert error["code"] == "run_failed" and "AuthenticationError" in error["message"]
    assert SECRET not in r.text and "[REDACTED]" in r.text


def test_raw_stream_lines(api: Served, server: ScriptedServer) -> None:
    """Every event is `data: <json>` (or a comment), the usage chunk has no choices, and `[DONE]` ends it."""
    with httpx.stream("POST", f"{api.base}/chat/completions", timeout=60, json={
            "model": "fast", "messages": [{"role": "user", "content": "Hi.\nREPLY: hello"}], "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1] if not e.startswith(":")]
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["total_tokens"] > 0
    assert all(p["usage"] is None for p in payloads[:-1])
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1]) == "hello"


async def until(check: Callable[[], bool], timeout_s: float = 30) -> None:
    """Poll a condition on the scripted server (it runs in another thread), failing after `timeout_s`."""
    with anyio.fail_after(timeout_s):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def settled(c: Client, run_id: str, timeout_s: float = 30) -> dict[str, Any]:
    """Poll MCP's `get_run` until the run is no longer running, failing after `timeout_s`; its state then."""
    with anyio.fail_after(timeout_s):
        while True:
            got: dict[str, Any] | None = (await c.call_tool("get_run", {"run_id": run_id})).structured_content
            assert got is not None
            if got["status"] != "running":
                return got
            await anyio.sleep(0.05)


async def test_disconnect_mid_stream_leaves_a_resumable_run(api: Served, server: ScriptedServer) -> None:
    """A client that leaves cancels the run's worker calls; the completed step is kept, and MCP's resume finishes
    the run without calling it again."""
    server.set_latency(model_latency={"scripted-slow": 60.0})
    in_flight = server.stats(include_calls=False)["in_flight"]
    run_id = None
    async with httpx.AsyncClient(timeout=60) as http, http.stream(
            "POST", f"{api.base}/chat/completions",
            json={"model": "conductor", "messages": [{"role": "user", "content": "Two drafts, please."}],
                  "stream": True, "conductor": {"workflow": CHAIN}}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                payload = json.loads(line[6:])
                run_id = run_id or payload["conductor"]["run_id"]  # the first chunk says which run it is
                if payload["choices"][0]["delta"].get("reasoning_content") == "step 1 (slow) started: Draft two\n":
                    # step 0 is committed and step 1 has started; a step starts before its call is sent, so leave
                    # only once that call has reached the worker (a client gone before would cancel a call never
                    # made: nothing paid, and nothing for the worker to see dropped)
                    await until(lambda: server.stats(include_calls=False)["in_flight"] > in_flight)
                    break
    assert run_id is not None
    # the scripted server sees the worker call dropped
    await until(lambda: any(c.model == "scripted-slow" and c.outcome == "client_gone" for c in server.calls()))
    async with Client(f"{api.root}/mcp") as c:
        got = await settled(c, run_id)
        assert got["status"] == "cancelled"
        assert [s["status"] for s in got["steps"]] == ["completed", "pending"]
        server.set_latency(model_latency={})
        done = (await c.call_tool("resume", {"run_id": run_id, "wait_s": 30})).structured_content
    assert done is not None and done["status"] == "completed"
    assert server.ok_calls_for("Your subtask:\nDraft one") == 1  # kept, never bought twice
    assert server.ok_calls_for("Your subtask:\nDraft two") == 1


async def test_disconnect_while_waiting_for_a_completion_cancels_its_run(api: Served, server: ScriptedServer) -> None:
    """Not streamed: the server notices the client leave while the run goes on, and cancels it the same way."""
    server.set_latency(model_latency={"scripted-slow": 60.0})
    body = {"model": "conductor", "messages": [{"role": "user", "content": "Two drafts, not streamed."}],
            "conductor": {"workflow": CHAIN}}
    async with httpx.AsyncClient(timeout=60) as http, anyio.create_task_group() as tg:
        tg.start_soon(lambda: http.post(f"{api.base}/chat/completions", json=body))
        # leave once step 0 is done and step 1's call is in flight
        await until(lambda: server.ok_calls_for("Your subtask:\nDraft one") == 1
                    and server.stats(include_calls=False)["in_flight"] == 1)
        tg.cancel_scope.cancel()
    await until(lambda: any(x.model == "scripted-slow" and x.outcome == "client_gone" for x in server.calls()))
    async with Client(f"{api.root}/mcp") as c:
        listed = (await c.read_resource("conductor://runs")).contents[0]
        run_id = json.loads(listed.text)["runs"][0]["run_id"]  # type: ignore[union-attr]
        got = await settled(c, run_id)
    assert got["status"] == "cancelled" and [s["status"] for s in got["steps"]] == ["completed", "pending"]


# -- authentication, Host, Origin and CORS -------------------------------------------------------------------
@pytest.fixture
def guarded(tmp_path: Path, server: ScriptedServer) -> Iterator[Served]:
    """Bound off loopback, so a token is required; one extra origin is allowed."""
    served = serve(tmp_path, server.base_url, "--allowed-origin", "https://app.example", host="0.0.0.0",
                   env_extra={"CONDUCTOR_TOKEN": STRONG_TOKEN})
    yield served
    stop_proc(served.proc)


@pytest.mark.parametrize(("raw", "param", "says"), [
    (b'{"model": "fast", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", None, "nests deeper than 32"),
    (b'{"model": "fast", "messages": [{"role": "user", "content": "x\\ud800y"}]}', "messages[0].content",
     "lone surrogate U+D800"),
    (b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], "user": "\\udfff"}', "user",
     "not valid Unicode"),
    (b'{"model": "fast", "messages": [{"role": "user", "content": "\xff\xfe"}]}', None, "not valid JSON"),
])
def test_hostile_bodies_get_400_and_nothing_is_stored(api: Served, server: ScriptedServer, raw: bytes,
                                                      param: str | None, says: str) -> None:
    store = api.store()
    before = store.find_runs(1000)
    r = httpx.post(f"{api.base}/chat/completions", content=raw, headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and says in error["message"]
    assert store.find_runs(1000) == before and server.calls() == []  # refused before anything was stored or spent
    assert httpx.get(f"{api.base}/models", timeout=30).status_code == 200  # and the server still serves


def test_token_off_loopback(guarded: Served, server: ScriptedServer) -> None:
    r = httpx.get(f"{guarded.base}/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.base, api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=guarded.base, api_key=STRONG_TOKEN, max_retries=0)
    assert [m.id for m in client.models.list()] == MODELS
    r2 = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "Hi.\nREPLY: ok"}])
    assert r2.choices[0].message.content == "ok"
    auth = {"authorization": f"Bearer {STRONG_TOKEN}"}
    assert httpx.get(f"{guarded.base}/models", headers={**auth, "host": "evil.example"}).status_code == 421
    r = httpx.get(f"{guarded.base}/models", headers={**auth, "origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_origin"
    assert "access-control-allow-origin" not in r.headers


MCP_HEADERS = "authorization, content-type, mcp-session-id, mcp-protocol-version"


def preflight(url: str, origin: str, method: str = "POST", headers: str = MCP_HEADERS) -> httpx.Response:
    return httpx.options(url, headers={"origin": origin, "access-control-request-method": method,
                                       "access-control-request-headers": headers})


def test_cors_preflight(api: Served, guarded: Served) -> None:
    """Browser clients: a preflight (which never carries the token) is answered for allowed origins only."""
    for path in ("/mcp", "/v1/chat/completions", "/v1/models"):
        for served, origin in ((api, f"http://127.0.0.1:{api.port}"), (api, f"http://localhost:{api.port}"),
                               (guarded, "https://app.example")):
            r = preflight(served.root + path, origin)
            assert r.status_code == 204, (path, origin, r.text)
            assert r.headers["access-control-allow-origin"] == origin and "Origin" in r.headers["vary"]
            allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
            assert {"authorization", "content-type", "mcp-session-id", "mcp-protocol-version"} <= allowed
            assert "POST" in r.headers["access-control-allow-methods"]
            assert "mcp-session-id" in r.headers["access-control-expose-headers"].lower()
        for served, origin in ((api, "http://evil.example"), (api, "https://app.example"), (guarded, "null"),
                               (guarded, f"http://127.0.0.1:{api.port + 1}")):
            r = preflight(served.root + path, origin)
            assert r.status_code == 403, (path, origin)
            assert not any(h.startswith("access-control-") for h in r.headers)
    r = httpx.options(f"{api.root}/mcp", headers={"origin": f"http://127.0.0.1:{api.port}",
                                                   "access-control-request-method": "POST", "host": "evil.example"})
    assert r.status_code == 421 and "access-control-allow-origin" not in r.headers


def test_cors_on_answers(guarded: Served) -> None:
    """An allowed origin may read the answers, the MCP session id and 401s included; others are refused."""
    origin = {"origin": "https://app.example"}
    auth = {"authorization": f"Bearer {STRONG_TOKEN}"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "browser", "version": "0"}}}
    accept = {"accept": "application/json, text/event-stream"}
    r = httpx.post(f"{guarded.root}/mcp", json=init, headers={**origin, **auth, **accept})
    assert r.status_code == 200 and r.headers["mcp-session-id"]
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "mcp-session-id" in r.headers["access-control-expose-headers"].lower()
    r = httpx.get(f"{guarded.base}/models", headers=origin)
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = httpx.get(f"{guarded.base}/models", headers={**origin, **auth})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = httpx.post(f"{guarded.root}/mcp", json=init, headers={"origin": "http://evil.example", **auth, **accept})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_sse_transport_serves_the_api_too(tmp_path: Path, server: ScriptedServer) -> None:
    served = serve(tmp_path, server.base_url, transport="sse")
    try:
        client = openai.OpenAI(base_url=served.base, api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == MODELS
        r = client.chat.completions.create(model="strong", messages=[{"role": "user", "content": "Hi.\nREPLY: sse"}])
        assert r.choices[0].message.content == "sse"
    finally:
        stop_proc(served.proc)
