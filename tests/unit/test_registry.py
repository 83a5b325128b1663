"""Manifests: validation errors name the file, the worker and the field; env discovery; availability."""

from __future__ import annotations

from pathlib import Path

import pytest

from conductor_mcp.errors import ConfigError
from conductor_mcp.workers.registry import BUNDLED_WORKER_ID, bundled_gguf_path, from_environment, load_manifest


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workers.yaml"
    path.write_text(text)
    return path


def test_shipped_manifests_load(tmp_path: Path) -> None:
    root = Path(__file__).parents[2] / "manifests" / "workers"
    env = {"OPENAI_API_KEY": "k"}
    paper = load_manifest(root / "paper.yaml", env)
    assert paper.ids == ["gpt-5", "claude-sonnet-4", "gemini-2.5-pro", "deepseek-r1-distill-qwen-32b", "qwen3-32b"]
    assert paper.get("claude-sonnet-4").reason == "ANTHROPIC_API_KEY is not set"
    assert paper.get("gpt-5").available
    assert load_manifest(root / "offline.yaml", {}).available_ids() == ["smollm2-135m"]
    assert "smollm2-135m" in load_manifest(root / "local.yaml", {}).available_ids()


def test_unknown_key_names_file_worker_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "workers:\n  - id: a\n    model: openai/x\n    temprature: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_manifest(path, {})
    msg = str(err.value)
    assert str(path) in msg and "worker 'a'" in msg and "temprature" in msg


def test_duplicate_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "workers:\n  - {id: a, model: openai/x}\n  - {id: a, model: openai/y}\n")
    with pytest.raises(ConfigError, match=r"worker 'a' \(workers\[1\]\): field 'id': duplicate id"):
        load_manifest(path, {})


def test_unknown_fallback(tmp_path: Path) -> None:
    path = write(tmp_path, "workers:\n  - {id: a, model: openai/x, fallback: nope}\n")
    with pytest.raises(ConfigError, match=r"worker 'a'.*field 'fallback': 'nope'"):
        load_manifest(path, {})


def test_unreadable_gguf(tmp_path: Path) -> None:
    path = write(tmp_path, "workers:\n  - {id: loc, gguf: missing.gguf}\n")
    with pytest.raises(ConfigError, match=r"worker 'loc': field 'gguf': cannot read .*missing.gguf"):
        load_manifest(path, {})


def test_bad_yaml_and_shape(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_manifest(write(tmp_path, "workers: [\n"), {})
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_manifest(write(tmp_path, "- a\n"), {})
    with pytest.raises(ConfigError, match="cannot read the manifest"):
        load_manifest(tmp_path / "absent.yaml", {})
    with pytest.raises(ConfigError, match="exactly one of `model`"):
        load_manifest(write(tmp_path, "workers:\n  - {id: a}\n"), {})
    with pytest.raises(ConfigError, match="reserved"):
        load_manifest(write(tmp_path, "workers:\n  - {id: conductor, model: openai/x}\n"), {})


def test_missing_key_is_unavailable_not_error(tmp_path: Path) -> None:
    path = write(tmp_path, "workers:\n  - {id: a, model: openai/x, api_key_env: KEY_A}\n"
                           "  - {id: b, model: openai/y, api_key_env: KEY_B}\n")
    reg = load_manifest(path, {"KEY_B": "secret"})
    assert reg.available_ids() == ["b"]
    assert reg.get("a").reason == "KEY_A is not set"
    with pytest.raises(ConfigError, match=r"no usable worker.*KEY_A is not set"):
        load_manifest(path, {})


def test_select_subset(tmp_path: Path) -> None:
    path = write(tmp_path, "workers:\n  - {id: a, model: openai/x}\n  - {id: b, model: openai/y}\n")
    reg = load_manifest(path, {})
    assert reg.select(["b"]) == ["b"]
    with pytest.raises(ConfigError, match=r"unknown id\(s\) \['evil'\]; allowed: \['a', 'b'\]"):
        reg.select(["evil"])
    with pytest.raises(ConfigError, match="empty list"):
        reg.select([])


def test_environment_discovery() -> None:
    reg = from_environment({"OPENAI_API_KEY": "x", "OLLAMA_API_BASE": "http://127.0.0.1:11434"})
    assert reg.ids == ["gpt-5", "ollama-qwen2.5-7b"]
    assert reg.spec("ollama-qwen2.5-7b").api_base == "http://127.0.0.1:11434"
    assert reg.source == "environment"
    offline = from_environment({})
    assert offline.ids == [BUNDLED_WORKER_ID] and offline.source == "embedded default"
    assert offline.get(BUNDLED_WORKER_ID).gguf_path == bundled_gguf_path()
    assert offline.conductor_gguf() == bundled_gguf_path()


def test_price_and_conductor_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "conductor: {model: openai/gpt-5, format: paper, max_steps: 3}\n"
                           "workers:\n  - {id: a, model: openai/x, price: {input_per_mtok: 1, output_per_mtok: 2}}\n")
    reg = load_manifest(path, {})
    assert reg.conductor.format == "paper" and reg.conductor.gguf is None
    price = reg.spec("a").price
    assert price is not None and price.output_per_mtok == 2
    bad = write(tmp_path, "conductor: {max_steps: 9}\nworkers:\n  - {id: a, model: openai/x}\n")
    with pytest.raises(ConfigError, match=r"conductor\.max_steps"):
        load_manifest(bad, {})
