"""GET /v1/openapi.json, and schemathesis driving /v1 from it: no 5xx, every response in its schema, invalid
data refused, and nothing stored for a refused request."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conductor_mcp.store import Store

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import server_env, stop_proc
from .test_mcp_transports import start_http

ABSENT = "CONDUCTOR_FUZZ_ABSENT_KEY"  # the conductor's key, unset: fuzzed runs are one step or moa, never planned


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedServer) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("openapi")
    manifest = tmp / "workers.yaml"
    manifest.write_text(f"conductor: {{model: openai/scripted-conductor, api_key_env: {ABSENT}}}\nworkers:\n" + "".join(
        f"  - {{id: {w}, model: openai/scripted-{w}, api_base: '{scripted.base_url}', timeout_s: 20}}\n"
        for w in ("fast", "strong")))
    env = server_env(tmp, manifest)
    env.pop(ABSENT, None)
    proc, port = start_http(env, "http")
    yield f"http://127.0.0.1:{port}", tmp / "traces.db"
    stop_proc(proc)


def test_the_document_describes_the_live_api(served: tuple[str, Path]) -> None:
    base, _ = served
    doc = httpx.get(f"{base}/v1/openapi.json", timeout=30).json()
    assert doc["openapi"] == "3.1.0" and set(doc["paths"]) == {"/v1/models", "/v1/models/{model}",
                                                               "/v1/chat/completions"}
    body = doc["components"]["schemas"]["ChatBody"]
    models = [m["id"] for m in httpx.get(f"{base}/v1/models", timeout=30).json()["data"]]
    assert body["properties"]["model"]["enum"] == models and "conductor" not in models  # its key is unset
    assert body["additionalProperties"] is False and body["properties"]["max_tokens"]["anyOf"][0]["minimum"] == 1
    assert doc["components"]["schemas"]["ConductorOptions"]["properties"]["max_steps"]["anyOf"][0]["maximum"] == 5


def test_schemathesis_finds_no_5xx_and_no_response_outside_the_schema(served: tuple[str, Path],
                                                                       server: ScriptedServer) -> None:
    base, db = served
    st = Path(sys.executable).parent / "st"
    proc = subprocess.run(
        [str(st), "run", f"{base}/v1/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance,ignored_auth,use_after_free,ensure_resource_availability",
         "--max-examples", "25", "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", "1",
         "--request-timeout", "30", "--max-response-time", "30", "--suppress-health-check", "all",
         "--warnings", "off", "--no-color"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        cwd=db.parent)  # its .schemathesis/ cache goes there, not into the checkout
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    # nothing stored for a refused request: every stored run was answered, and none failed or was left behind
    store = Store(db)
    try:
        runs = [store.get_run(r.run_id) for r in store.find_runs(100_000)]
    finally:
        store.close()
    # (a budget that stops a run at once is a valid request, answered with finish_reason "length")
    assert all(r.status.value in ("completed", "budget_exceeded") for r in runs), \
        json.dumps([(r.id, r.status, r.error) for r in runs])
    cases = re.search(r"(\d+) generated", proc.stdout)
    assert cases and int(cases.group(1)) >= 50, proc.stdout[-3000:]  # bounded, but not a token run
    # valid requests did run, on the workers: the document's example at least (the examples phase sends it)
    assert runs and server.stats()["requests"] >= len(runs)
