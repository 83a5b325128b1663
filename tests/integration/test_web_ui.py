"""The web view of runs in a real browser: headless Chromium from Debian's packages, driven by Selenium with the
driver's path given (so nothing downloads a browser), against `mcp-conductor serve --transport http` as a
subprocess whose workers reach the scripted OpenAI-compatible server through litellm, on a real SQLite store.

Screenshots go to $CONDUCTOR_SCREENSHOTS when set (else the test's tmp folder). CONDUCTOR_SKIP_BROWSER=1 turns
the browser tests into reported skips; without it a missing Chromium or chromedriver fails them, saying what
to install.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client

from conductor_mcp.store import Store

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import server_env
from .test_cli import cli
from .test_eval_cli import suite
from .test_learning import right, wrong
from .test_mcp_transports import STRONG_TOKEN, start_http

if "SE_OFFLINE" not in os.environ:
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, should anything reach it, must not download

WAIT_S = 60  # an upper bound on waiting for the page, never an assertion about time

XSS_OUTPUT = 'Draft:\n<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> & done'
XSS_INSTRUCTION = "Review <img src=x onerror=window.pwned=3> the draft"
DIRECTIVE = "%%{init: {'themeCSS': 'rect{fill:red}'}}%%"  # Mermaid finds directives inside quoted labels too
WORKFLOW = {"steps": [
    {"worker": "fast", "instruction": "Draft one", "access": "none"},
    {"worker": "slow", "instruction": XSS_INSTRUCTION, "access": "none"},
    {"worker": "strong", "instruction": "Merge the drafts", "access": "all"},
]}


def write_manifest(tmp_path: Path, base_url: str) -> Path:
    """Three workers on the scripted server, with room for a step the test holds open."""
    path = tmp_path / "workers.yaml"
    lines = ["conductor: {gguf: bundled, max_steps: 3}", "workers:"]
    for wid in ("strong", "fast", "slow"):
        lines += [f"  - id: {wid}", f"    model: openai/scripted-{wid}", f"    api_base: {base_url}",
                  f"    description: scripted {wid}", "    timeout_s: 120"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CONDUCTOR_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- the browser ------------------------------------------------------------------------------------------


def browser_paths() -> tuple[str, str]:
    """Chromium and its driver from the system's packages; a clear failure (or an asked-for skip) without them."""
    if os.environ.get("CONDUCTOR_SKIP_BROWSER") == "1":
        pytest.skip("CONDUCTOR_SKIP_BROWSER=1: the web view's browser tests are skipped on request")
    chromium = os.environ.get("CONDUCTOR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver = os.environ.get("CONDUCTOR_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [p for p in (chromium, driver) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: the web view's tests drive a real headless Chromium. Install "
                    "Debian's chromium and chromium-driver (`make test` does so on a root machine with apt-get), "
                    "point CONDUCTOR_CHROMIUM and CONDUCTOR_CHROMEDRIVER at them, or set CONDUCTOR_SKIP_BROWSER=1 "
                    "to skip these tests on purpose", pytrace=False)
    return chromium, driver


@pytest.fixture
def browser() -> tuple[str, str]:
    """Checked before a test starts anything else, so that a missing browser fails (or skips) at once."""
    return browser_paths()


@contextmanager
def chromium(paths: tuple[str, str], *extra: str) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = paths
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--disable-gpu", "--no-first-run", "--disable-extensions", *extra):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message=f"waited for {what}")


def by_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def full_screenshot(driver: Any, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 40, 4000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)


# -- runs made the way hosts make them ---------------------------------------------------------------------


async def planned(port: int, workflow: dict[str, Any], task: str) -> str:
    async with Client(f"http://127.0.0.1:{port}/mcp") as c:
        r = await c.call_tool("plan_workflow", {"task": task, "workflow": workflow})
        assert r.structured_content is not None, r.content
        return str(r.structured_content["run_id"])


async def resumed(port: int, run_id: str, wait_s: float) -> str:
    async with Client(f"http://127.0.0.1:{port}/mcp") as c:
        r = await c.call_tool("resume", {"run_id": run_id, "wait_s": wait_s})
        assert r.structured_content is not None, r.content
        return str(r.structured_content["status"])


async def resumed_with(port: int, run_id: str, arguments: dict[str, Any]) -> str:
    async with Client(f"http://127.0.0.1:{port}/mcp") as c:
        r = await c.call_tool("resume", {"run_id": run_id, **arguments})
        assert r.structured_content is not None, r.content
        return str(r.structured_content["status"])


async def solved(port: int, task: str, strategy: str = "single:fast") -> str:
    async with Client(f"http://127.0.0.1:{port}/mcp") as c:
        r = await c.call_tool("solve", {"task": task, "strategy": strategy, "wait_s": 60})
        assert r.structured_content is not None and r.structured_content["status"] == "completed", r.content
        return str(r.structured_content["run_id"])


# -- the tests --------------------------------------------------------------------------------------------


def test_list_and_run_page(browser: tuple[str, str], env: dict[str, str], server: ScriptedServer,
                                 stop: list[subprocess.Popen[bytes]], shots: Path) -> None:
    """The list shows a run made here; its page draws the workflow (the bundled Mermaid, nothing fetched from
    elsewhere) with each step's worker, shows each step's instruction, access, output and attempts, and renders
    HTML in outputs and instructions, and a Mermaid directive in the task, as text."""
    server.script(contains="Draft one", reply=XSS_OUTPUT)
    proc, port = start_http(env, "http")
    stop.append(proc)
    task = f"{DIRECTIVE} Write a haiku about small robots <b>playing</b> in an orchestra"
    run_id = anyio.run(planned, port, WORKFLOW, task)
    assert anyio.run(resumed, port, run_id, 60) == "completed"
    base = f"http://127.0.0.1:{port}"
    with chromium(browser) as driver:
        driver.get(f"{base}/ui/")
        row = wait_until(driver, lambda d: by_css(d, f'tr a[href="/ui/runs/{run_id}"]'), "the run in the list")
        table = by_css(driver, "table.runs")[0].text
        assert run_id in table and "completed" in table and "host" in table
        assert "Write a haiku about small robots <b>playing</b>" in table  # the task, as text
        store = Store(Path(env["CONDUCTOR_DB"]))
        try:
            total, run = store.tree_usage(run_id), store.get_run(run_id)
        finally:
            store.close()
        cells = [td.text for td in by_css(driver, f'tr:has(a[href="/ui/runs/{run_id}"]) td.num')]
        assert cells[:2] == ["3", f"{total.total_tokens:,}"], cells  # steps, and tokens as the store counts them
        full_screenshot(driver, shots / "runs-list.png")
        row[0].click()
        wait_until(driver, lambda d: d.current_url.endswith(f"/ui/runs/{run_id}"), "the run's page")
        svg = wait_until(driver, lambda d: by_css(d, "#diagram svg"), "the drawn diagram")[0]
        labels = svg.text
        for i, step in enumerate(WORKFLOW["steps"]):
            assert f"{i}. {step['worker']}" in labels, labels
        assert "<img src=x onerror" in labels  # an instruction's HTML is a label's text
        assert "task: %%{init: {'themeCSS': 'rect{fill:red}..." in labels  # a directive too: it restyles nothing
        fills = driver.execute_script("return [...document.querySelectorAll('#diagram svg g.node rect')]"
                                      ".map(r => getComputedStyle(r).fill)")
        assert fills and "rgb(255, 0, 0)" not in fills, fills
        assert len(by_css(driver, "#diagram svg g.node")) == len(WORKFLOW["steps"]) + 2  # task and answer too
        cards = by_css(driver, "#steps article.step")
        assert [c.find_element("css selector", ".worker").text for c in cards] == ["fast", "slow", "strong"]
        for card, step in zip(cards, WORKFLOW["steps"], strict=True):
            assert step["instruction"] in card.find_element("css selector", ".instruction").text
            assert "completed" in card.find_element("css selector", ".meta").text
            assert "1 attempt" in card.find_element("css selector", ".meta").text
        for card, record in zip(cards, run.steps, strict=True):
            assert f"{record.usage.total_tokens:,} tokens" in card.find_element("css selector", ".meta").text
        assert "Sees: only the task" in cards[0].text and "Sees: all earlier steps" in cards[2].text
        output = cards[0].find_element("css selector", "details.output pre").text
        assert output == XSS_OUTPUT  # the markup shown as it was written
        assert driver.execute_script("return window.pwned") is None  # and none of it ran
        # offline: every script, style and image the page used came from this server
        sources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert sources and all(s.startswith(base) for s in sources), sources
        assert any(s.startswith(f"{base}/ui/static/mermaid.min.js") for s in sources)
        full_screenshot(driver, shots / "run-page.png")


def test_running_run_updates_without_reload(browser: tuple[str, str], env: dict[str, str],
                                                  server: ScriptedServer, stop: list[subprocess.Popen[bytes]],
                                                  shots: Path) -> None:
    """A run's page polls while the run goes: a step held open on the worker shows running, then, released,
    completed with its output, in the same document (no reload)."""
    release = threading.Event()

    def held(messages: list[dict[str, Any]]) -> str:
        release.wait(WAIT_S * 2)
        return "the merged answer"

    server.script(contains="Merge the drafts", reply=held)
    proc, port = start_http(env, "http")
    stop.append(proc)
    workflow = {"steps": [WORKFLOW["steps"][0], WORKFLOW["steps"][2]]}
    run_id = anyio.run(planned, port, workflow, "a run to watch")
    try:
        assert anyio.run(resumed, port, run_id, 0) == "running"
        with chromium(browser) as driver:
            driver.get(f"http://127.0.0.1:{port}/ui/runs/{run_id}")
            wait_until(driver, lambda d: by_css(d, "#step-1.st-running") and by_css(d, "#step-0.st-completed"),
                       "step 0 done and step 1 running")
            wait_until(driver, lambda d: by_css(d, "#diagram svg g.node.running"), "the running step drawn")
            assert by_css(driver, "#live") and by_css(driver, "#live")[0].is_displayed()
            assert "running" in by_css(driver, "#summary .badge")[0].text
            assert not by_css(driver, "#rate")  # nothing to rate before the run has finished
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                r = http.post(f"/ui/runs/{run_id}/rate", data={"score": "1"},
                              headers={"origin": f"http://127.0.0.1:{port}"})
                assert r.status_code == 409 and f"run {run_id} is running, not finished" in r.text, r.text
            full_screenshot(driver, shots / "run-page-running.png")
            driver.execute_script("window.sameDocument = true")
            release.set()
            wait_until(driver, lambda d: by_css(d, "#step-1.st-completed"), "step 1 completed on the page")
            wait_until(driver, lambda d: "completed" in by_css(d, "#summary .badge")[0].text, "the run completed")
            assert by_css(driver, "#step-1 details.output pre")[0].text == "the merged answer"
            assert "the merged answer" in by_css(driver, "#result .answer")[0].text
            wait_until(driver, lambda d: not by_css(d, "#diagram svg g.node.running")
                       and len(by_css(d, "#diagram svg g.node.completed")) == 2, "the diagram redrawn")
            wait_until(driver, lambda d: by_css(d, "#rate form"), "the rating form, once the run has finished")
            assert driver.execute_script("return window.sameDocument") is True
            assert not by_css(driver, "#live")[0].is_displayed()  # polling stopped
    finally:
        release.set()


def test_child_runs_and_review_rounds_are_linked(browser: tuple[str, str], tmp_path: Path, server: ScriptedServer,
                                                 stop: list[subprocess.Popen[bytes]], shots: Path) -> None:
    """A step handed to the conductor (recursion) and a corrective review round are child runs: the run's page
    draws them as subgraphs and links them, with the reviews; a child's page links back to its parent. The
    conductor is a remote planner on the scripted server, so its plans and reviews are scripted."""
    reviews = iter([json.dumps({"steps": [{"worker": "strong", "instruction": "Fix the answer", "access": "all"}]}),
                    '{"steps": []}'])
    server.script(model="scripted-conductor", contains="Review the answer", reply=lambda _m: next(reviews))
    server.script(model="scripted-conductor", contains="Hard part",
                  reply=json.dumps({"steps": [{"worker": "slow", "instruction": "Child step", "access": "none"}]}))
    manifest = write_manifest(tmp_path, server.base_url)
    manifest.write_text(manifest.read_text().replace(
        "conductor: {gguf: bundled, max_steps: 3}",
        f"conductor: {{model: openai/scripted-conductor, api_base: '{server.base_url}', max_steps: 3}}"))
    proc, port = start_http(server_env(tmp_path, manifest), "http")
    stop.append(proc)
    workflow = {"steps": [{"worker": "fast", "instruction": "First try", "access": "none"},
                          {"worker": "conductor", "instruction": "Hard part", "access": "all"}]}
    run_id = anyio.run(planned, port, workflow, "a task with parts")
    assert anyio.run(resumed_with, port, run_id, {"max_rounds": 3, "wait_s": 60}) == "completed"
    base = f"http://127.0.0.1:{port}"
    with chromium(browser) as driver:
        driver.get(f"{base}/ui/runs/{run_id}")
        wait_until(driver, lambda d: by_css(d, "#diagram svg"), "the diagram")
        assert len(by_css(driver, "#diagram svg g.cluster")) == 2  # the child workflow and round 2
        related = by_css(driver, "#related")[0].text
        assert "recursion: step 1 handed to the conductor" in related and "review round 2" in related
        assert "Review of round 1: asked for a correction: round 2" in related
        assert "Review of round 2: accepted the answer" in related
        full_screenshot(driver, shots / "run-page-children.png")
        child_link = by_css(driver, "#step-1 .child a")[0]
        child_id = child_link.text
        child_link.click()
        wait_until(driver, lambda d: d.current_url.endswith(f"/ui/runs/{child_id}"), "the child's page")
        crumbs = by_css(driver, ".crumbs")[0].text
        assert f"part of run {run_id} (step 1)" in crumbs
        assert [c.text for c in by_css(driver, "#steps .worker")] == ["slow"]
        assert not by_css(driver, "#rate")  # a part of a run is not rated on its own
        by_css(driver, ".crumbs a")[1].click()
        wait_until(driver, lambda d: d.current_url.endswith(f"/ui/runs/{run_id}"), "back on the parent")
        round_link = next(a for a in by_css(driver, "#related a") if a.text == "round 2")
        round_link.click()
        wait_until(driver, lambda d: "review round 2" in by_css(d, ".crumbs")[0].text, "round 2's page")
        assert [c.text for c in by_css(driver, "#steps .worker")] == ["strong"]


def test_rating_from_the_page_reaches_the_store(browser: tuple[str, str], env: dict[str, str],
                                                      stop: list[subprocess.Popen[bytes]], shots: Path) -> None:
    """The rating form stores the same reward as rate_run; a form posted from another origin, or with no
    Origin at all, is refused (CSRF) and changes nothing."""
    proc, port = start_http(env, "http")
    stop.append(proc)
    run_id = anyio.run(solved, port, "Say hello.\nREPLY: hello")
    base = f"http://127.0.0.1:{port}"
    with chromium(browser) as driver:
        driver.get(f"{base}/ui/runs/{run_id}")
        wait_until(driver, lambda d: by_css(d, "#rate form"), "the rating form")
        by_css(driver, '#rate input[name="score"][value="0.5"]')[0].click()
        by_css(driver, '#rate textarea[name="note"]')[0].send_keys("right idea, <wrong> number")
        by_css(driver, '#rate button[type="submit"]')[0].click()
        wait_until(driver, lambda d: by_css(d, ".flash"), "the saved notice")
        assert "Rating saved" in by_css(driver, ".flash")[0].text
        assert "0.5" in by_css(driver, "#summary .reward")[0].text
        assert "right idea, <wrong> number" in by_css(driver, "#summary .reward-note")[0].text
        full_screenshot(driver, shots / "run-page-rated.png")
    store = Store(Path(env["CONDUCTOR_DB"]))
    try:
        run = store.get_run(run_id)
        assert (run.reward, run.reward_note, run.reward_source) == (0.5, "right idea, <wrong> number", "user")
        with httpx.Client(base_url=base, timeout=30) as http:
            url = f"/ui/runs/{run_id}/rate"
            assert http.post(url, data={"score": "0"}, headers={"origin": "http://evil.example"}).status_code == 403
            assert http.post(url, data={"score": "0"}).status_code == 403  # no Origin: not from our page
            assert http.post(url, data={"score": "2"}, headers={"origin": base}).status_code == 400
        assert store.get_run(run_id).reward == 0.5
    finally:
        store.close()


def test_foreign_host_is_refused(browser: tuple[str, str], env: dict[str, str],
                                       stop: list[subprocess.Popen[bytes]]) -> None:
    """A page asked for under another name (DNS rebinding: evil.example resolving to this machine) is refused,
    as /mcp refuses it; so is a request from a foreign Origin."""
    proc, port = start_http(env, "http")
    stop.append(proc)
    run_id = anyio.run(solved, port, "Say hi.\nREPLY: hi")
    with chromium(browser, "--host-resolver-rules=MAP evil.example 127.0.0.1") as driver:
        for path in ("/ui/", f"/ui/runs/{run_id}", f"/ui/runs/{run_id}/state"):
            driver.get(f"http://evil.example:{port}{path}")
            body = by_css(driver, "body")[0].text
            assert "Invalid Host header" in body and run_id not in body
        driver.get(f"http://127.0.0.1:{port}/ui/")  # the same browser, the server's own name: served
        assert run_id in wait_until(driver, lambda d: by_css(d, "table.runs"), "the list")[0].text
    with httpx.Client(timeout=30) as http:
        page = f"http://127.0.0.1:{port}/ui/runs/{run_id}"
        assert http.get(page, headers={"host": f"evil.example:{port}"}).status_code == 421
        assert http.get(page, headers={"origin": "http://evil.example"}).status_code == 403
        assert http.get(page).status_code == 200


def solved_then_guarded(env: dict[str, str],
                        stop: list[subprocess.Popen[bytes]]) -> tuple[str, subprocess.Popen[bytes], str]:
    """A run solved by the CLI, then the HTTP server on its store bound off loopback, so STRONG_TOKEN is required:
    the run's id, the server's process (in `stop`) and its base address."""
    solve = subprocess.run([sys.executable, "-m", "conductor_mcp", "solve", "Say yes.\nREPLY: yes",
                            "--strategy", "single:fast", "--json"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert solve.returncode == 0, solve.stderr
    run_id = json.loads(solve.stdout)["run_id"]
    proc, port = start_http({**env, "CONDUCTOR_TOKEN": STRONG_TOKEN}, "http", host="0.0.0.0")
    stop.append(proc)
    base = f"http://127.0.0.1:{port}"
    return run_id, proc, base


def test_off_loopback_needs_the_token(browser: tuple[str, str], env: dict[str, str],
                                            stop: list[subprocess.Popen[bytes]], shots: Path) -> None:
    """Bound off loopback, the view asks for the token on a sign-in form and keeps an HttpOnly, SameSite=Strict
    session cookie that holds no token; nothing is shown before, and the token never appears in an address."""
    run_id, proc, base = solved_then_guarded(env, stop)
    with httpx.Client(base_url=base, timeout=30) as http:
        for path in ("/ui/", f"/ui/runs/{run_id}", f"/ui/runs/{run_id}/state"):
            r = http.get(path, headers={"accept": "application/json"})
            assert r.status_code == 401 and run_id not in r.text
        assert http.get(f"/ui/runs/{run_id}", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert http.get(f"/ui/runs/{run_id}", headers={"authorization": f"Bearer {STRONG_TOKEN}"}).status_code == 200
        r = http.post(f"/ui/runs/{run_id}/rate", data={"score": "1"}, headers={"origin": base})
        assert r.status_code == 401  # a same-origin form, but not signed in
    with chromium(browser) as driver:
        driver.get(f"{base}/ui/runs/{run_id}")
        wait_until(driver, lambda d: "/ui/login" in d.current_url, "the sign-in form")
        assert run_id not in by_css(driver, "main")[0].text
        assert not by_css(driver, "table.runs") and not by_css(driver, "#steps")
        full_screenshot(driver, shots / "login.png")
        by_css(driver, 'input[name="token"]')[0].send_keys("not-the-token-" + STRONG_TOKEN[:20])
        by_css(driver, 'button[type="submit"]')[0].click()
        wait_until(driver, lambda d: by_css(d, ".login .error"), "the refusal")
        assert "not this server's token" in by_css(driver, ".login .error")[0].text
        assert driver.get_cookie("conductor_ui") is None
        by_css(driver, 'input[name="token"]')[0].send_keys(STRONG_TOKEN)
        by_css(driver, 'button[type="submit"]')[0].click()
        wait_until(driver, lambda d: d.current_url == f"{base}/ui/runs/{run_id}", "back on the run's page")
        wait_until(driver, lambda d: by_css(d, "#diagram svg"), "the diagram")
        cookie = driver.get_cookie("conductor_ui")
        assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert STRONG_TOKEN not in cookie["value"] and cookie["path"] == "/ui"
        assert driver.execute_script("return document.cookie") == ""  # out of scripts' reach
        driver.get(f"{base}/ui/")
        assert run_id in wait_until(driver, lambda d: by_css(d, "table.runs"), "the list")[0].text
        by_css(driver, ".signout button")[0].click()
        wait_until(driver, lambda d: "/ui/login" in d.current_url, "signed out")
        driver.get(f"{base}/ui/")
        wait_until(driver, lambda d: "/ui/login" in d.current_url, "the sign-in form again")
        history = driver.execute_script("return performance.getEntriesByType('navigation').map(e => e.name)")
        assert all(STRONG_TOKEN not in u for u in [driver.current_url, *history])
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert STRONG_TOKEN not in err.decode(errors="replace")  # nor in the server's log


def test_session_cookie_cannot_be_forged(env: dict[str, str], stop: list[subprocess.Popen[bytes]]) -> None:
    """A session cookie is an HMAC keyed by the token: one made with another key, altered, or too old is refused;
    a sign-in posted from another origin is refused too (login CSRF)."""
    proc, port = start_http({**env, "CONDUCTOR_TOKEN": STRONG_TOKEN}, "http", host="0.0.0.0")
    stop.append(proc)
    base = f"http://127.0.0.1:{port}"

    def cookie(key: str, issued: int) -> str:
        mac = hmac.new(key.encode(), f"conductor-mcp web session {issued}".encode(), hashlib.sha256).hexdigest()
        return f"{issued}.{mac}"

    now = int(time.time())
    with httpx.Client(base_url=base, timeout=30) as http:
        def status(value: str) -> int:
            return http.get("/ui/", headers={"cookie": f"conductor_ui={value}", "accept": "text/html"}).status_code

        assert status(cookie(STRONG_TOKEN, now)) == 200  # the scheme as the server makes it
        assert status(cookie("another key of thirty-two chars!", now)) == 303
        real = cookie(STRONG_TOKEN, now)
        assert status(real[:-1] + ("1" if real.endswith("0") else "0")) == 303  # one hex digit changed
        assert status(cookie(STRONG_TOKEN, now - 31 * 86400)) == 303
        assert status(f"{now}.") == 303
        r = http.post("/ui/login", data={"token": STRONG_TOKEN, "next": "/ui/"},
                      headers={"origin": "http://evil.example"})
        assert r.status_code == 403 and "set-cookie" not in r.headers
        r = http.post("/ui/login", data={"token": STRONG_TOKEN, "next": "https://evil.example/"},
                      headers={"origin": base})
        assert r.status_code == 303 and r.headers["location"] == "/ui/"  # never sent to another site
        assert re.search(r"conductor_ui=\d+\.[0-9a-f]{64};", r.headers["set-cookie"])


def test_wrong_tokens_are_slowed_down(env: dict[str, str], stop: list[subprocess.Popen[bytes]]) -> None:
    """Five wrong tokens a minute from one client, then 429 with Retry-After, even for the right token."""
    proc, port = start_http({**env, "CONDUCTOR_TOKEN": STRONG_TOKEN}, "http", host="0.0.0.0")
    stop.append(proc)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30, headers={"origin": base}) as http:
        for _ in range(5):
            assert http.post("/ui/login", data={"token": "a wrong guess", "next": "/ui/"}).status_code == 401
        for guess in ("another wrong guess", STRONG_TOKEN):
            r = http.post("/ui/login", data={"token": guess, "next": "/ui/"})
            assert r.status_code == 429 and "set-cookie" not in r.headers, r.text
            assert 1 <= int(r.headers["retry-after"]) <= 60 and "Too many wrong tokens" in r.text
        # the bearer header on other pages is not what is throttled: a script with the token still gets in
        assert http.get("/ui/", headers={"authorization": f"Bearer {STRONG_TOKEN}"}).status_code == 200


def test_form_fields_must_be_valid_unicode_and_within_the_limit(env: dict[str, str],
                                                                 stop: list[subprocess.Popen[bytes]]) -> None:
    """A form field with bytes that are not UTF-8 (raw, or %-escaped as a lone surrogate's would be) is refused
    with 400 naming it, and a form over 16 KiB with 413 naming the field it was cut in, as every surface refuses
    such text: never repaired and stored, never compared as a token (no wrong guess counted)."""
    run_id, _, base = solved_then_guarded(env, stop)
    form = {"origin": base, "content-type": "application/x-www-form-urlencoded"}
    with httpx.Client(base_url=base, timeout=30, headers=form) as http:
        for body, status, named in [
            (b"token=abc%ED%A0%80&next=/ui/", 400, "token: not valid Unicode text"),  # U+D800 as WTF-8
            (b"token=abc\xff&next=/ui/", 400, "token: not valid Unicode text"),
            (b"next=/ui/&token=" + b"x" * 20_000, 413, "token: the form is over 16384 bytes"),
            (b"%FF=1&token=x", 400, "\\udcff: not valid Unicode text"),
        ] * 2:  # 8 refusals, more than the 5 wrong tokens a minute allowed: none was counted as a guess
            r = http.post("/ui/login", content=body)
            assert r.status_code == status and named in r.text and "set-cookie" not in r.headers, (body[:40], r.text)
        assert http.post("/ui/login", data={"token": STRONG_TOKEN, "next": "/ui/"}).status_code == 303
        rate = f"/ui/runs/{run_id}/rate"
        bearer = {"authorization": f"Bearer {STRONG_TOKEN}"}
        for body, status, named in [(b"score=1&note=right%ED%B0%80", 400, "note: not valid Unicode text"),
                                    (b"score=1&note=" + b"y" * 17_000, 413, "note: the form is over 16384 bytes")]:
            r = http.post(rate, content=body, headers=bearer)
            assert r.status_code == status and named in r.text, r.text
        assert http.post(rate, data={"score": "1", "note": "z" * 2001}, headers=bearer).status_code == 400
    store = Store(Path(env["CONDUCTOR_DB"]))
    try:
        assert store.get_run(run_id).reward is None  # nothing refused reached the store
    finally:
        store.close()


def test_runs_list_is_paged(env: dict[str, str], stop: list[subprocess.Popen[bytes]]) -> None:
    proc, port = start_http(env, "http")
    stop.append(proc)
    ids = [anyio.run(solved, port, f"Say {n}.\nREPLY: {n}") for n in ("one", "two", "three")]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        first = http.get("/ui/", params={"limit": 2}).text
        assert [i for i in reversed(ids) if i in first] == [ids[2], ids[1]]  # newest first
        older = re.search(r'href="(/ui/\?limit=2&amp;cursor=[^"]+)"', first)
        assert older is not None
        second = http.get(older.group(1).replace("&amp;", "&")).text
        assert ids[0] in second and ids[1] not in second and "cursor=" not in second
        assert http.get("/ui/", params={"limit": 0}).status_code == 400
        assert http.get("/ui/", params={"cursor": "nope"}).status_code == 400
        assert http.get("/ui/runs/nope").status_code == 404


def test_ui_command_prints_the_address(env: dict[str, str], stop: list[subprocess.Popen[bytes]]) -> None:
    """`mcp-conductor ui` serves MCP over HTTP with the view, and prints the view's address on stdout."""
    proc = subprocess.Popen([sys.executable, "-m", "conductor_mcp", "ui", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stop.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/ui/", line)
    assert m, line
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            r = httpx.get(line, timeout=30)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
            time.sleep(0.1)
    assert r.status_code == 200 and "<h1>Runs</h1>" in r.text
    mcp = httpx.post(f"http://127.0.0.1:{m.group(1)}/mcp", timeout=30, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        headers={"accept": "application/json, text/event-stream"})
    assert mcp.status_code == 200


@pytest.mark.parametrize("opt_out", [False, True])
def test_browser_tests_fail_without_chromium(tmp_path: Path, opt_out: bool) -> None:
    """With no Chromium, a browser test fails and says what to install; only CONDUCTOR_SKIP_BROWSER=1 makes
    it a skip, which says so."""
    env = {k: v for k, v in os.environ.items() if k != "CONDUCTOR_SKIP_BROWSER"}
    env.update(CONDUCTOR_CHROMIUM=str(tmp_path / "no-chromium"), CONDUCTOR_CHROMEDRIVER=str(tmp_path / "no-driver"))
    if opt_out:
        env["CONDUCTOR_SKIP_BROWSER"] = "1"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", "-p", "no:cacheprovider",
                           f"{Path(__file__).relative_to(root)}::test_foreign_host_is_refused"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=240)
    if opt_out:
        assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout
        assert "CONDUCTOR_SKIP_BROWSER=1" in proc.stdout
    else:
        assert proc.returncode == 1 and "1 error" in proc.stdout, proc.stdout  # failed in its fixture
        assert "chromium and chromium-driver" in proc.stdout


EVAL_STRATEGIES = ("conductor", "moa", "single:strong", "single:fast")


def test_evals_page_compares_a_recorded_eval(browser: tuple[str, str], env: dict[str, str], server: ScriptedServer,
                                             tmp_path: Path, stop: list[subprocess.Popen[bytes]], shots: Path) -> None:
    """`mcp-conductor eval` records its report; the view lists it, and its page shows the report's figures for
    each strategy side by side, a scatter plot with one point per strategy (inline SVG drawn on the server:
    nothing fetched), and each run's grade linked to the run."""
    server.script(model="scripted-strong", reply=right)
    server.script(model="scripted-fast", reply=wrong)
    server.script(model="scripted-slow", reply=right)
    proc = cli("eval", str(suite(tmp_path, 2)), "--strategies", ",".join(EVAL_STRATEGIES), "--json", env=env)
    report = json.loads(proc.stdout)
    recorded = re.search(r"recorded as eval ([0-9a-f]+)", proc.stderr)
    assert recorded is not None, proc.stderr
    eval_id = recorded.group(1)
    server_proc, port = start_http(env, "http")
    stop.append(server_proc)
    base = f"http://127.0.0.1:{port}"
    with chromium(browser) as driver:
        driver.get(f"{base}/ui/")
        wait_until(driver, lambda d: by_css(d, 'header nav a[href="/ui/evals"]'), "the Evals link")[0].click()
        link = wait_until(driver, lambda d: by_css(d, f'table.evals a[href="/ui/evals/{eval_id}"]'), "the eval listed")
        row = by_css(driver, "table.evals tbody tr")
        assert len(row) == 1 and "eval" in row[0].text and "suite.jsonl" in row[0].text
        assert all(name in row[0].text for name in EVAL_STRATEGIES)
        assert by_css(driver, "table.evals tbody td.num")[0].text == "2"  # tasks
        full_screenshot(driver, shots / "evals-list.png")
        link[0].click()
        wait_until(driver, lambda d: d.current_url.endswith(f"/ui/evals/{eval_id}"), "the eval's page")
        rows = wait_until(driver, lambda d: by_css(d, "table.compare tbody tr"), "the strategies table")
        assert [r.find_element("css selector", "td.strategy").text for r in rows] == list(EVAL_STRATEGIES)
        for r in rows:
            figures = report["strategies"][r.get_attribute("data-strategy")]
            assert r.find_element("css selector", "td.correct").text == f"{figures['correct']}/{figures['n']}"
            cells = r.find_elements("css selector", "td[data-value]")
            stored = [float(c.get_attribute("data-value")) for c in cells[:4]]
            assert stored == [figures[k] for k in ("accuracy", "mean_tokens", "mean_seconds", "mean_steps")]
            assert [c.text for c in cells[:4]] == [f"{figures['accuracy']:.1%}", f"{figures['mean_tokens']:,.1f}",
                                                   f"{figures['mean_seconds']:.2f} s", f"{figures['mean_steps']:.2f}"]
        points = by_css(driver, "figure.plot svg circle.point")
        assert [p.get_attribute("data-label") for p in points] == list(EVAL_STRATEGIES)
        assert [t.text for t in by_css(driver, "figure.plot svg text.point-label")] == list(EVAL_STRATEGIES)
        assert all(p.is_displayed() for p in points)
        sources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(s.startswith(base) for s in sources), sources  # offline: no script at all, a stylesheet
        links = {a.get_attribute("href") for a in by_css(driver, "table.matrix a")}
        assert links == {f"{base}/ui/runs/{r['run_id']}" for r in report["runs"]}
        full_screenshot(driver, shots / "evals-page.png")
        by_css(driver, "table.matrix a")[0].click()
        wait_until(driver, lambda d: "/ui/runs/" in d.current_url and by_css(d, "#summary"), "a run's page")
    with httpx.Client(base_url=base, timeout=30) as http:
        r = http.get("/ui/evals/nope")
        assert r.status_code == 404 and "No such eval" in r.text and "no eval &#x27;nope&#x27;" in r.text
