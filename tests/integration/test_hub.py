"""`conductor: {hf, file}`: the real huggingface_hub download path against a stand-in Hub on 127.0.0.1.

The CLI runs in subprocesses with HF_ENDPOINT pointing at the stand-in (huggingface_hub reads it at
import) and HF_HOME in tmp_path, so the user's own cache is never touched. The stand-in counts requests:
a cached file must cost none, and must keep working with the server gone or HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor_mcp.errors import ConfigError
from conductor_mcp.workers.registry import bundled_gguf_path, load_manifest

from ..servers.hub_server import HubServer

SMOL = bundled_gguf_path()  # the real GGUF the stand-in serves
REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
SERVED = "smollm2-135m-instruct-q4_1.gguf"  # not the bundled file's name: the plan shows which one ran


@pytest.fixture
def hub() -> Iterator[HubServer]:
    repos: dict[str, dict[str, Path | bytes]] = {
        REPO: {SERVED: SMOL, "smollm2-135m-instruct-q8_0.gguf": b"GGUF not this one", "README.md": b"# smol\n"},
        "test-org/split-GGUF": {f"big-q4_k_m-0000{i}-of-00003.gguf": b"GGUF part %d" % i for i in (1, 2, 3)},
        "test-org/many-GGUF": {"a-q4_k_m.gguf": b"GGUF a", "b-q4_k_m.gguf": b"GGUF b"},
    }
    with HubServer(repos) as server:
        yield server


@pytest.fixture
def env(tmp_path: Path, hub: HubServer) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGINGFACE_")) and not k.endswith("_API_KEY")
            and k not in ("TRANSFORMERS_OFFLINE", "OLLAMA_API_BASE")}
    return {**base, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url,
            "CONDUCTOR_DB": str(tmp_path / "t.db"), "CONDUCTOR_WORKERS": manifest(tmp_path, REPO, "*Q4_1.gguf")}


def manifest(tmp_path: Path, repo: str, file: str, name: str = "workers.yaml") -> str:
    path = tmp_path / name
    path.write_text(f"""
conductor: {{hf: "{repo}", file: "{file}", max_steps: 2}}
workers:
  - id: smol
    gguf: bundled
    description: the bundled model
    params: {{max_tokens: 32}}
""")
    return str(path)


def cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "conductor_mcp", *args], capture_output=True, text=True,
                          env=env, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


@pytest.mark.slow
def test_pull_once_then_offline(env: dict[str, str], hub: HubServer, tmp_path: Path) -> None:
    pulled = cli("pull", env=env)
    path = Path(pulled.stdout.strip())  # the path and nothing else on stdout
    assert path.name == SERVED and path.is_relative_to(tmp_path / "hf" / "hub")
    assert filecmp.cmp(path, SMOL, shallow=False)
    assert f"downloading {REPO}: {SERVED} (98.36 MB)" in pulled.stderr
    counts = hub.counts()  # "other": huggingface_hub may fetch its agent list for its User-Agent
    assert (counts["info"], counts["head"], counts["download"]) == (1, 1, 1), hub.requests

    assert cli("pull", env=env).stdout.strip() == str(path)  # cached: not a single request
    doctor = json.loads(cli("doctor", "--json", env=env).stdout)
    assert doctor["conductor"]["model"] == str(path)
    assert hub.counts() == counts, hub.requests

    hub.stop()  # no Hub at all now, and the offline switch on
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    assert json.loads(cli("doctor", "--json", env=offline).stdout)["conductor"]["model"] == str(path)
    planned = json.loads(cli("plan", "Name a prime number.", "--json", env=env).stdout)
    assert planned["status"] == "planned" and planned["plan"]["planner"] == f"gguf:{SERVED}"
    assert planned["plan"]["attempts"] >= 1 and planned["workflow"]["steps"][0]["worker"] == "smol"


@pytest.mark.slow
def test_first_plan_downloads(env: dict[str, str], hub: HubServer) -> None:
    doctor = cli("doctor", env=env).stdout
    assert f"hf:{REPO} *Q4_1.gguf (not downloaded yet: run `mcp-conductor pull`)" in doctor
    assert sum(hub.counts().values()) == 0  # loading the registry asks nothing
    proc = cli("plan", "Name a prime number.", "--json", env=env)
    assert f"downloading {REPO}: {SERVED} (98.36 MB)" in proc.stderr
    assert json.loads(proc.stdout)["plan"]["planner"] == f"gguf:{SERVED}"
    assert hub.counts()["download"] == 1


def test_split_model_downloads_every_part(env: dict[str, str], hub: HubServer, tmp_path: Path) -> None:
    proc = cli("pull", "--workers", manifest(tmp_path, "test-org/split-GGUF", "*Q4_K_M*.gguf", "s.yaml"), env=env)
    first = Path(proc.stdout.strip())
    assert first.name == "big-q4_k_m-00001-of-00003.gguf"
    assert sorted(p.name for p in first.parent.iterdir()) == [f"big-q4_k_m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert (first.parent / "big-q4_k_m-00003-of-00003.gguf").read_bytes() == b"GGUF part 3"
    assert hub.counts()["download"] == 3
    cli("pull", "--workers", str(tmp_path / "s.yaml"), env=env)
    assert hub.counts()["download"] == 3


def test_errors_name_the_field(env: dict[str, str], hub: HubServer, tmp_path: Path) -> None:
    def fails(repo: str, file: str, run_env: dict[str, str] = env) -> str:
        proc = cli("pull", "--workers", manifest(tmp_path, repo, file, "e.yaml"), env=run_env, check=False)
        assert proc.returncode == 1 and proc.stdout == "", proc
        return proc.stderr

    err = fails(REPO, "*q2_k.gguf")
    assert (f"conductor: field 'file': no file in {REPO} matches '*q2_k.gguf'; files: "
            f"{SERVED}, smollm2-135m-instruct-q8_0.gguf") in err
    err = fails("test-org/many-GGUF", "*q4_k_m.gguf")
    assert "field 'file': 2 files in test-org/many-GGUF match '*q4_k_m.gguf': a-q4_k_m.gguf, b-q4_k_m.gguf" in err
    err = fails("test-org/nope", "*.gguf")
    assert f"conductor: field 'hf': repository 'test-org/nope' not found at {hub.url}" in err
    assert hub.counts()["download"] == 0

    err = fails(REPO, "*Q4_1.gguf", {**env, "HF_HUB_OFFLINE": "1"})
    assert "is not in the Hugging Face cache" in err and "HF_HUB_OFFLINE is set" in err
    hub.stop()
    err = fails(REPO, "*Q4_1.gguf")
    assert f"cannot reach the Hugging Face Hub at {hub.url}" in err and "run `mcp-conductor pull`" in err
    plan = cli("plan", "Name a prime number.", env=env, check=False)  # the first plan cannot download either
    assert plan.returncode == 1 and "cannot reach the Hugging Face Hub" in plan.stderr


def test_nothing_to_pull(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text("workers:\n  - {id: smol, gguf: bundled}\n")
    assert cli("pull", "--workers", str(path), env=env).stdout.startswith("nothing to pull: the conductor is bundled")


@pytest.mark.parametrize(("conductor", "message"), [
    ('{hf: "a/b"}', "field 'hf' needs field 'file'"),
    ('{hf: "a/b", file: "*.gguf", gguf: bundled}', "field 'hf' excludes field 'gguf'"),
    ('{hf: "a/b", file: "*.gguf", model: openai/gpt-5}', "field 'hf' excludes field 'model'"),
    ('{file: "*.gguf"}', "field 'file' only applies with field 'hf'"),
    ('{hf: "not a repo id", file: "*.gguf"}', "field 'conductor.hf'"),
])
def test_manifest_validation(tmp_path: Path, conductor: str, message: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(f"conductor: {conductor}\nworkers:\n  - {{id: smol, gguf: bundled}}\n")
    with pytest.raises(ConfigError, match="conductor") as err:
        load_manifest(path)
    assert message in str(err.value) and str(path) in str(err.value)
