"""The MCP capabilities a host uses beside tools and resources, through real clients on real transports: log
notifications at the level the client chose, run ids completed, resource subscriptions that follow a run to its
end, `list_changed` when a run is added; in the handshake era (2025-11-25: the hosts of today, `mode="legacy"`) and
the 2026-07-28 one; and the MCP conformance suite (npm) against `serve --transport http`."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from mcp import Client
from mcp.client.session import IncomingMessage
from mcp.server import MCPServer
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp_types import (
    LoggingLevel,
    LoggingMessageNotificationParams,
    PromptReference,
    ResourceListChangedNotification,
    ResourceTemplateReference,
    ResourceUpdatedNotification,
)

from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.surfaces.mcp_server import build_server

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import WORKFLOW, require_npx, server_env, write_manifest
from .test_mcp_transports import start_http

# the handshake-era calls (logging/setLevel, resources/subscribe) are what hosts speak; the SDK warns they are gone
# from 2026-07-28
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]
LEVELS: tuple[LoggingLevel, ...] = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
NOWHERE = "conductor://runs/no-such-run"  # URIs the server does not serve: subscribing works, nothing ever comes
UNKNOWN = "test://watched-resource"


def manifest(tmp_path: Path, base_url: str) -> Path:
    """The helpers' three scripted workers, `fast` falling back to `strong`."""
    path = write_manifest(tmp_path, base_url)
    path.write_text(path.read_text().replace("    description: fast drafts\n",
                                             "    description: fast drafts\n    fallback: strong\n"))
    return path


@pytest.fixture
def mcp_server(tmp_path: Path, server: ScriptedServer) -> MCPServer[Any]:
    return build_server(manifest(tmp_path, server.base_url), tmp_path / "traces.db")


@dataclass
class Heard:
    """What a client was told: log notifications and resource notifications, with a wake-up for each."""

    logs: list[LoggingMessageNotificationParams] = field(default_factory=list)
    notes: list[Any] = field(default_factory=list)
    arrived: anyio.Event = field(default_factory=anyio.Event)

    async def log(self, params: LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def message(self, message: IncomingMessage) -> None:
        if isinstance(message, ResourceUpdatedNotification | ResourceListChangedNotification):
            self.notes.append(message)
            self.arrived.set()
            self.arrived = anyio.Event()

    def updated(self, uri: str) -> int:
        return sum(isinstance(n, ResourceUpdatedNotification) and n.params.uri == uri for n in self.notes)

    def list_changed(self) -> int:
        return sum(isinstance(n, ResourceListChangedNotification) for n in self.notes)

    async def until(self, enough: Any, timeout_s: float = 10) -> None:
        with anyio.fail_after(timeout_s):
            while not enough():
                await self.arrived.wait()

    def messages(self) -> list[str]:
        return [str(p.data["message"]) for p in self.logs]

    def levels(self) -> set[str]:
        return {p.level for p in self.logs}


async def plan(c: Client, task: str = "Two drafts and a merge") -> str:
    r = await c.call_tool("plan_workflow", {"task": task, "workflow": WORKFLOW})
    assert r.structured_content is not None, r.content
    return str(r.structured_content["run_id"])


async def resume(c: Client, run_id: str, **args: Any) -> dict[str, Any]:
    r = await c.call_tool("resume", {"run_id": run_id, "wait_s": 30, **args})
    assert r.structured_content is not None, r.content
    return dict(r.structured_content)


async def status(c: Client, uri: str) -> str:
    return str(json.loads((await c.read_resource(uri)).contents[0].text)["status"])  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_capabilities_are_declared(mcp_server: MCPServer[Any], mode: Literal["legacy", "auto"]) -> None:
    async with Client(mcp_server, mode=mode) as c:
        caps = c.server_capabilities
        assert caps.logging is not None and caps.completions is not None
        assert caps.resources is not None and caps.resources.subscribe and caps.resources.list_changed


async def test_log_notifications_at_the_level_the_client_chose(mcp_server: MCPServer[Any],
                                                               server: ScriptedServer) -> None:
    """Before logging/setLevel: info and above. Then only the levels asked for: retries and fallbacks are
    warnings, a budget stop too; a client that asks for errors only hears nothing of runs that went well."""
    server.set_faults(fail_models={"scripted-fast": "500"})  # step 0 fails on fast, is retried, falls back
    heard = Heard()
    async with Client(mcp_server, mode="legacy", logging_callback=heard.log) as c:
        run_id = await plan(c)
        assert (await resume(c, run_id))["status"] == "completed"
        said = heard.messages()
        assert heard.levels() == {"info", "warning"}, heard.logs
        assert said[0] == "plan written: 3 step(s) (host)" and said[-1] == "run completed"
        assert "started step 0 of 0..2 fast: Draft one" in said
        assert "step 0: attempt 1 on fast failed: " in "\n".join(said)
        assert "step 0: fell back from fast to strong" in said
        assert all(p.logger == "conductor" and p.data["run_id"] == run_id for p in heard.logs)

        await c.set_logging_level("warning")
        heard.logs.clear()
        assert (await resume(c, await plan(c)))["status"] == "completed"
        assert heard.levels() == {"warning"} and "step 0: fell back from fast to strong" in heard.messages()
        heard.logs.clear()
        stopped = await resume(c, await plan(c), max_total_tokens=1)
        assert stopped["status"] == "budget_exceeded"
        assert [m for m in heard.messages() if m.startswith("run stopped by its budget: ")], heard.logs

        await c.set_logging_level("error")
        heard.logs.clear()
        assert (await resume(c, await plan(c)))["status"] == "completed"
        assert heard.logs == []

        await c.set_logging_level("debug")
        r = await c.call_tool("run_step", {"run_id": await plan(c), "step": 1})
        assert not r.is_error
        assert heard.messages()[-1] == "ended step 1 slow [completed]"


async def test_log_notifications_opted_in_per_request_from_2026(mcp_server: MCPServer[Any],
                                                                server: ScriptedServer) -> None:
    """A 2026-07-28 client asks for logs in each request's `_meta`; without asking it hears none."""
    server.set_faults(fail_models={"scripted-fast": "500"})
    quiet, warned = Heard(), Heard()
    async with Client(mcp_server, logging_callback=quiet.log) as c:
        assert (await resume(c, await plan(c)))["status"] == "completed"
    async with Client(mcp_server, logging_callback=warned.log, log_level="warning") as c:
        assert (await resume(c, await plan(c)))["status"] == "completed"
    assert quiet.logs == []
    assert warned.levels() == {"warning"} and "step 0: fell back from fast to strong" in warned.messages()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_run_ids_are_completed_newest_first(mcp_server: MCPServer[Any], mode: Literal["legacy", "auto"]) -> None:
    async with Client(mcp_server, mode=mode) as c:
        first, second, third = [await plan(c, f"task {i}") for i in range(3)]
        for template in ("conductor://runs/{run_id}", "conductor://runs/{run_id}/steps/{index}"):
            ref = ResourceTemplateReference(uri=template)
            got = (await c.complete(ref, {"name": "run_id", "value": ""})).completion
            assert got.values == [third, second, first] and not got.has_more
            got = (await c.complete(ref, {"name": "run_id", "value": first[:10].upper()})).completion
            assert got.values == [first]
        steps = ResourceTemplateReference(uri="conductor://runs/{run_id}/steps/{index}")
        got = (await c.complete(steps, {"name": "index", "value": ""}, {"run_id": second})).completion
        assert got.values == ["0", "1", "2"]
        # what the server does not complete is an empty list, never an error
        unknown: list[tuple[ResourceTemplateReference | PromptReference, str]] = [
            (PromptReference(name="test_prompt_with_arguments"), "arg1"),
            (ResourceTemplateReference(uri="conductor://nothing/{id}"), "id"),
            (ResourceTemplateReference(uri="conductor://runs/{run_id}"), "other")]
        for what, arg in unknown:
            assert (await c.complete(what, {"name": arg, "value": "x"})).completion.values == []


async def follow(c: Client, heard: Heard, uri: str) -> int:
    """A host following a run by its notifications, as one without polling would: read the run at each
    `updated`, until a read shows it ended. Only a notification after the end ends this. Returns how many came."""
    seen = 0

    def more() -> bool:
        return heard.updated(uri) > seen

    with anyio.fail_after(30):
        while True:
            await heard.until(more)
            seen = heard.updated(uri)
            if await status(c, uri) != "running":
                return seen


async def test_a_subscription_follows_a_run_until_it_ends(mcp_server: MCPServer[Any], server: ScriptedServer) -> None:
    server.set_latency(model_latency={"scripted-slow": 0.5})
    heard = Heard()
    async with Client(mcp_server, mode="legacy", message_handler=heard.message) as c:
        run_id = await plan(c)
        run_uri, step_uri = f"conductor://runs/{run_id}", f"conductor://runs/{run_id}/steps/2"
        for uri in (run_uri, step_uri, NOWHERE, UNKNOWN):
            await c.subscribe_resource(uri)  # every one succeeds, known or not
        assert (await resume(c, run_id, wait_s=0))["status"] == "running"
        assert await follow(c, heard, run_uri) >= 2
        assert await status(c, run_uri) == "completed" and heard.updated(step_uri) >= 1

        # unsubscribed: a change to the run (a rating) reaches the step's subscription, not the run's
        await c.unsubscribe_resource(run_uri)
        before_run, before_step = heard.updated(run_uri), heard.updated(step_uri)
        assert not (await c.call_tool("rate_run", {"run_id": run_id, "score": 1})).is_error
        await heard.until(lambda: heard.updated(step_uri) > before_step)
        await anyio.sleep(0.2)
        assert heard.updated(run_uri) == before_run
    assert heard.updated(NOWHERE) == heard.updated(UNKNOWN) == 0


async def test_a_rating_made_on_a_worker_thread_notifies(tmp_path: Path, server: ScriptedServer) -> None:
    """The web view rates a run on a worker thread (as `serve` does, beside the MCP server): subscribers hear it."""
    runs = RunManager(manifest(tmp_path, server.base_url), tmp_path / "traces.db")
    heard = Heard()
    async with Client(build_server(manager=runs), mode="legacy", message_handler=heard.message) as c:
        run_id = await plan(c)
        assert (await resume(c, run_id))["status"] == "completed"
        uri = f"conductor://runs/{run_id}"
        await c.subscribe_resource(uri)
        await anyio.to_thread.run_sync(lambda: runs.rate(run_id, 0.5, "from a thread", source="user"))
        await heard.until(lambda: heard.updated(uri) == 1)


async def test_list_changed_when_a_run_is_added(mcp_server: MCPServer[Any]) -> None:
    heard = Heard()
    async with Client(mcp_server, mode="legacy", message_handler=heard.message) as c:
        await plan(c)
        await heard.until(lambda: heard.list_changed() == 1)
        r = await c.call_tool("solve", {"task": "Say yes.\nREPLY: yes", "workers": ["strong"], "wait_s": 60})
        assert r.structured_content is not None and r.structured_content["status"] == "completed"
        await heard.until(lambda: heard.list_changed() == 2)


async def test_subscriptions_listen_from_2026(mcp_server: MCPServer[Any], server: ScriptedServer) -> None:
    """A 2026-07-28 client subscribes with subscriptions/listen: the same changes reach it."""
    server.set_latency(model_latency={"scripted-slow": 0.5})
    events: list[Any] = []
    listed = anyio.Event()
    async with Client(mcp_server) as c:
        run_id = await plan(c)
        run_uri = f"conductor://runs/{run_id}"
        async with c.listen(resource_subscriptions=[run_uri, NOWHERE], resources_list_changed=True) as sub:
            async def collect() -> None:
                async for event in sub:
                    events.append(event)
                    if event == ResourcesListChanged():
                        listed.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                assert (await resume(c, run_id))["status"] == "completed"
                await plan(c, "another")
                with anyio.fail_after(10):
                    await listed.wait()
                tg.cancel_scope.cancel()
    assert events.count(ResourceUpdated(uri=run_uri)) >= 2 and ResourceUpdated(uri=NOWHERE) not in events


# -- over streamable HTTP, as `serve` runs --------------------------------------------------------------------------

@pytest.fixture
def served(tmp_path: Path, server: ScriptedServer) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, port = start_http(server_env(tmp_path, manifest(tmp_path, server.base_url)), "http")
    try:
        yield proc, f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_over_streamable_http(served: tuple[subprocess.Popen[bytes], str], server: ScriptedServer) -> None:
    """The handshake era as hosts speak it: logs on the request's stream, resource notifications on the session's
    GET stream; a client that subscribed and went away is forgotten without an error. Then a 2026-07-28 client."""
    proc, url = served
    server.set_faults(fail_models={"scripted-fast": "500"})
    server.set_latency(model_latency={"scripted-slow": 0.5})
    async with Client(url, mode="legacy") as gone:
        left = await plan(gone, "a run the client that left subscribed to")
        await gone.subscribe_resource(f"conductor://runs/{left}")
    heard = Heard()
    async with Client(url, mode="legacy", logging_callback=heard.log, message_handler=heard.message) as c:
        await c.set_logging_level("warning")
        run_id = await plan(c)
        await heard.until(lambda: heard.list_changed() >= 1)
        run_uri = f"conductor://runs/{run_id}"
        await c.subscribe_resource(run_uri)
        await c.subscribe_resource(NOWHERE)
        await c.subscribe_resource(f"conductor://runs/{left}")
        assert (await resume(c, left))["status"] == "completed"  # the departed client's run changes too
        assert (await resume(c, run_id, wait_s=0))["status"] == "running"
        assert await follow(c, heard, run_uri) >= 1
        assert heard.updated(NOWHERE) == 0 and heard.updated(f"conductor://runs/{left}") >= 1
        assert heard.levels() == {"warning"} and "step 0: fell back from fast to strong" in heard.messages()
        got = (await c.complete(ResourceTemplateReference(uri="conductor://runs/{run_id}"),
                                {"name": "run_id", "value": ""})).completion
        assert got.values == [run_id, left]
    events: list[Any] = []
    async with Client(url) as modern:
        assert modern.protocol_version == "2026-07-28"
        async with modern.listen(resources_list_changed=True) as sub:
            await plan(modern, "one more")
            with anyio.fail_after(10):
                async for event in sub:
                    events.append(event)
                    break
    assert events == [ResourcesListChanged()]
    proc.terminate()
    _, err = proc.communicate(timeout=20)
    assert b"Traceback" not in err, err.decode()


# -- the MCP conformance suite -----------------------------------------------------------------------------------

# 0.1.12 is the newest release that runs on Node 20; pinned so that `npx` resolves the same suite everywhere
CONFORMANCE = "@modelcontextprotocol/conformance@0.1.12"
# Its scenarios that apply to this server: 13 of its 30 (15 of its 32 checks). Before logging, completions and
# subscriptions were served, the first 9 passed (11 checks); logging-set-level, completion-complete,
# resources-subscribe and resources-unsubscribe are the 4 added.
APPLICABLE = ["server-initialize", "ping", "tools-list", "tools-call-simple-text", "tools-call-error",
              "server-sse-multiple-streams", "resources-list", "prompts-list", "dns-rebinding-protection",
              "logging-set-level", "completion-complete", "resources-subscribe", "resources-unsubscribe"]
# The rest call the suite's own fixtures (tools test_image_content, test_tool_with_logging, ...; resources
# test://static-text, ...; prompts test_simple_prompt, ...; sampling and elicitation from a tool) that a server
# other than the suite's reference one does not have. tools-call-simple-text and tools-call-error pass here
# only in that the unknown fixture tool is answered with an error result, as they check.
FIXTURES = ["tools-call-image", "tools-call-audio", "tools-call-embedded-resource", "tools-call-mixed-content",
            "tools-call-with-logging", "tools-call-with-progress", "tools-call-sampling", "tools-call-elicitation",
            "elicitation-sep1034-defaults", "elicitation-sep1330-enums", "resources-read-text",
            "resources-read-binary", "resources-templates-read", "prompts-get-simple", "prompts-get-with-args",
            "prompts-get-embedded-resource", "prompts-get-with-image"]


@pytest.fixture
def npx() -> None:
    """Checked before a server starts."""
    require_npx("the MCP conformance suite test")


def test_conformance_suite(npx: None, served: tuple[subprocess.Popen[bytes], str], tmp_path: Path) -> None:
    _, url = served
    env = {**os.environ, "npm_config_yes": "true", "NO_UPDATE_NOTIFIER": "1"}
    proc = subprocess.run(["npx", "-y", CONFORMANCE, "server", "--url", url, "-o", str(tmp_path / "results")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    summary = {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(r"^[✓✗] (\S+): (\d+) passed, (\d+) failed$",
                                                                 proc.stdout, re.MULTILINE)}
    assert sorted(summary) == sorted(APPLICABLE + FIXTURES), f"exit {proc.returncode}: {proc.stdout}\n{proc.stderr}"
    failed = {name: summary[name] for name in APPLICABLE if summary[name][1] or not summary[name][0]}
    assert not failed, f"scenarios that apply to this server failed: {failed}\n{proc.stdout}"
