"""`mcp-conductor doctor` and `mcp-conductor schema`: what is configured, whether it answers, and the manifest's
JSON Schema for editors.

`doctor` reads the registry, the conductor and the store without calling anything. `doctor --check` also calls
each available worker once, all at once under a short timeout, so that a wrong key or a dead local server shows
before the first task does; it exits 1 when one fails. No key reaches its output: errors are redacted where they
are made (workers.py) and the whole report is redacted again here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import anyio

from .. import __version__
from ..models import Manifest, WorkerSpec
from ..redact import redact

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"  # the dialect pydantic writes
SCHEMA_FILE = "manifests/manifest.schema.json"  # the committed copy; a test keeps it equal to manifest_schema()
CONDUCTOR_ROW = "conductor"  # a remote conductor is checked too, under this name


def manifest_schema() -> dict[str, Any]:
    """The worker manifest's JSON Schema, from the pydantic models that validate it."""
    schema = Manifest.model_json_schema(mode="validation")
    return {"$schema": SCHEMA_DIALECT, **schema, "title": "conductor-mcp worker manifest"}


def schema_text() -> str:
    return json.dumps(manifest_schema(), indent=2, ensure_ascii=False) + "\n"


@dataclass
class Check:
    id: str
    status: Literal["ok", "failed", "skipped"]
    detail: str
    latency_s: float | None = None


def _targets(registry: Any) -> list[tuple[str, WorkerSpec, Path | None, str | None]]:
    """(row name, spec, GGUF path, reason it is skipped) for every worker, then a remote conductor."""
    rows: list[tuple[str, WorkerSpec, Path | None, str | None]] = [
        (s.spec.id, s.spec, s.gguf_path, None if s.available else s.reason) for s in registry.states]
    c = registry.conductor
    if c.model:
        # the call as the remote planner makes it: same model, endpoint, key variable and parameters
        spec = WorkerSpec(id="conductor-model", model=c.model, api_base=c.api_base, api_key_env=c.api_key_env,
                          params=c.params)
        unset = c.api_key_env and not os.environ.get(c.api_key_env)
        rows.append((CONDUCTOR_ROW, spec, None, f"{c.api_key_env} is not set" if unset else None))
    return rows


async def check_workers(registry: Any, timeout_s: float) -> list[Check]:
    """Call every available worker (and a remote conductor) once, concurrently; never raises for a worker."""
    from ..errors import WorkerError
    from ..workers import python_worker
    from ..workers.pool import WorkerPool, litellm_module

    pool = WorkerPool(registry)
    rows = _targets(registry)
    if any(path is None and skipped is None and spec.kind == "model" for _, spec, path, skipped in rows):
        litellm_module()  # its import takes seconds on the event loop: not inside any check's time limit
    results: list[Check | None] = [None] * len(rows)

    async def one(i: int, name: str, spec: WorkerSpec, path: Path | None) -> None:
        # a local GGUF cannot hang like a dead server, but loading one takes a while: it gets its own time limit
        limit = spec.timeout_s if path is not None else min(timeout_s, spec.timeout_s)
        started = time.perf_counter()
        if spec.kind == "python":  # no model to call: run a one-line program in its sandbox
            ran = await python_worker.run(spec, "print('OK')")
            took = time.perf_counter() - started
            results[i] = (Check(name, "failed", f"{name}: {ran.refused or ran.output()[:300]}") if not ran.ok else
                          Check(name, "ok", f"ran a program in its sandbox in {took:.2f}s "
                                            f"(network: {spec.network})", round(took, 3)))
            return
        try:
            done = await pool.probe(spec, path, limit)
        except TimeoutError:
            hint = " (its timeout_s)" if path is not None else ""
            results[i] = Check(name, "failed", f"{name}: no answer within {limit:g}s{hint}")
            return
        except WorkerError as exc:
            results[i] = Check(name, "failed", str(exc))
            return
        except Exception as exc:  # a check must report, never crash the others
            results[i] = Check(name, "failed", f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
            return
        took = time.perf_counter() - started
        tokens = f", {done.usage.prompt_tokens}+{done.usage.completion_tokens} tokens" if done.usage.calls else ""
        results[i] = Check(name, "ok", f"answered in {took:.2f}s{tokens}", round(took, 3))

    async with anyio.create_task_group() as tg:
        for i, (name, spec, path, skipped) in enumerate(rows):
            if skipped is not None:
                results[i] = Check(name, "skipped", f"not called: {skipped}")
            else:
                tg.start_soon(one, i, name, spec, path)
    return [r for r in results if r is not None]


def doctor(args: argparse.Namespace) -> int:
    from ..errors import StoreError
    from ..store import describe_target, open_store
    from ..workers.local_model import gpu_offload_supported
    from ..workers.registry import load_registry

    registry = load_registry(args.workers)
    store_path, store_problem, read_only = describe_target(args.db or None), None, None
    try:
        store = open_store(args.db)
        store_path, read_only = store.location, store.read_only
        store.check()
        store.close()
    except StoreError as exc:
        store_problem = str(exc)
    c = registry.conductor
    gpu = gpu_offload_supported()
    report: dict[str, Any] = {
        "version": __version__,
        "workers_source": registry.source,
        "workers": [{"id": s.spec.id, "available": s.available, "reason": s.reason,
                     "backend": s.spec.model or (str(s.gguf_path) if s.gguf_path else
                                                 f"python sandbox, network {s.spec.network}")}
                    for s in registry.states],
        "conductor": {"model": registry.conductor_label(), "format": c.format,
                      "max_steps": c.max_steps, "n_gpu_layers": c.n_gpu_layers if gpu else 0},
        "llama_cpp_gpu_backend": gpu,
        "store": store_path,
        "store_ok": store_problem is None,
        "store_problem": store_problem,
        "store_read_only": read_only,
    }
    checks: list[Check] = []
    if args.check:
        if not args.json:
            sys.stderr.write(f"calling each worker once ({args.timeout:g}s at most)...\n")
        checks = anyio.run(check_workers, registry, args.timeout)
        report["checks"] = [asdict(ch) for ch in checks]
    failed = store_problem is not None or any(ch.status == "failed" for ch in checks)
    if args.json:
        sys.stdout.write(redact(json.dumps(report, indent=2)) + "\n")
        return 1 if failed else 0
    lines = [f"mcp-conductor {__version__}", f"workers ({registry.source}):"]
    for w in report["workers"]:
        state = "available" if w["available"] else f"unavailable: {w['reason']}"
        lines.append(f"  {w['id']:<24} {state:<32} {w['backend']}")
    lines.append(f"conductor: {report['conductor']['model']} (format {c.format}, max_steps {c.max_steps})")
    lines.append(f"llama.cpp GPU backend: {'yes, all layers offloaded' if gpu else 'no (CPU only)'}")
    state = f"PROBLEM: {store_problem}" if store_problem else f"read-only: {read_only}" if read_only else "ok"
    lines.append(f"trace store: {store_path} ({state})")
    if args.check:
        lines.append("checks (one call each, capped at 1 completion token):")
        for ch in checks:
            lines.append(f"  {ch.id:<24} {ch.status.upper() if ch.status == 'failed' else ch.status:<8} {ch.detail}")
        bad = [ch.id for ch in checks if ch.status == "failed"]
        if bad:
            lines.append(f"{len(bad)} failed: {', '.join(bad)}; fix the key, the endpoint or the model, then run "
                         "`mcp-conductor doctor --check` again")
    sys.stdout.write(redact("\n".join(lines)) + "\n")
    return 1 if failed else 0


def schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text())
    return 0
