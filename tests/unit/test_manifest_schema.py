"""The manifest's JSON Schema for editors: generated from the pydantic models, committed, and true to them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from conductor_mcp.surfaces.doctor import SCHEMA_FILE, manifest_schema, schema_text

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schema_is_the_generated_one() -> None:
    committed = (ROOT / SCHEMA_FILE).read_text(encoding="utf-8")
    assert json.loads(committed) == manifest_schema(), (
        f"{SCHEMA_FILE} is stale: regenerate it with `mcp-conductor schema > {SCHEMA_FILE}`")
    assert committed == schema_text()


def test_schema_command_prints_it() -> None:
    proc = subprocess.run([sys.executable, "-m", "conductor_mcp", "schema"], capture_output=True, text=True,
                          timeout=120, check=True)
    assert json.loads(proc.stdout) == manifest_schema()


def test_schema_describes_every_field() -> None:
    schema = manifest_schema()
    for name in ("Manifest", "ConductorSpec", "WorkerSpec"):
        props = schema["properties"] if name == "Manifest" else schema["$defs"][name]["properties"]
        missing = [key for key, prop in props.items() if not prop.get("description")]
        assert not missing, f"{name}: fields without a description: {missing}"


@pytest.mark.parametrize("path", sorted((ROOT / "manifests" / "workers").glob("*.yaml")), ids=lambda p: p.name)
def test_example_manifests_validate_and_point_at_the_schema(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# yaml-language-server: $schema=../manifest.schema.json\n")
    jsonschema.Draft202012Validator(manifest_schema()).validate(yaml.safe_load(text))


def test_schema_rejects_what_the_models_reject() -> None:
    validator = jsonschema.Draft202012Validator(manifest_schema())
    good = {"workers": [{"id": "w", "model": "openai/gpt-5", "timeout_s": 30}]}
    assert not list(validator.iter_errors(good))
    bad: dict[str, Any]
    for bad in ({"workers": []},  # no worker
                {"workers": [{"id": "w", "model": "openai/gpt-5", "timout_s": 30}]},  # a misspelt key
                {"workers": [{"id": "w", "model": "m", "max_concurrency": 0}]},
                {"conductor": {"format": "yaml"}, "workers": [{"id": "w", "model": "m"}]}):
        assert list(validator.iter_errors(bad)), bad
