"""Figure 7 on a GPU machine: the conductor's planning with every layer offloaded, beside the CPU.

Run there (it needs only llama-cpp-python built with a GPU backend, pydantic, anyio and this package):
    python -m bench.gpu_device MODEL.gguf OUT.json [--llama-bench PATH]
It measures, on one model file:
- raw decode tokens/s of the binding (128 tokens, no grammar), the figure llama-bench's tg128 reports;
- the same with the workflow's JSON-schema grammar applied, and full 5-step plans through GGUFPlanner
  (plan time, tokens, prefix reuse);
- the same on the CPU of that machine (n_gpu_layers=0), and llama-bench's own tg128 when given;
- a cProfile of the binding's decode loop, to show where time goes beyond llama_decode.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio

from conductor_mcp.models import WorkerSpec
from conductor_mcp.planners.gguf import GGUFPlanner
from conductor_mcp.planners.grammar import workflow_grammar
from conductor_mcp.planners.prompts import planner_messages
from conductor_mcp.planners.schema import workflow_schema

WORKERS = [
    WorkerSpec(id="gpt-5", model="openai/gpt-5", description="strongest at code and maths; final answers"),
    WorkerSpec(id="claude-sonnet-4", model="anthropic/claude-sonnet-4", description="careful review, writing"),
    WorkerSpec(id="gemini-2.5-pro", model="gemini/gemini-2.5-pro", description="science, planning, long context"),
]
TASKS = [
    "Write a Python function that merges overlapping intervals, with tests, and review it for edge cases.",
    "Explain why the sky is blue, then check the physics, then summarise it for a ten-year-old.",
    "Find all integer solutions of x^2 - y^2 = 45 and verify each one.",
    "Draft a project plan for migrating a web service to Kubernetes, review the risks, and finalise it.",
    "Prove that the square root of 2 is irrational, then have the proof checked and polished.",
    "Design a SQL schema for a library, write three queries, and check them for correctness.",
]


PROMPT = "Write a very long story about a lighthouse keeper and the sea, with many chapters.\n\nChapter 1\n"


def decode_rate(llama: Any, n: int = 128, grammar: Any = None, prompt: str = PROMPT) -> float:
    """Decode tokens per second over up to n tokens (prompt evaluation timed apart and excluded).
    No logit bias: a logits processor would put a Python callback on every token."""
    llama.reset()
    llama.eval(llama.tokenize(prompt.encode()))
    started = time.perf_counter()
    out = llama.create_completion(prompt, max_tokens=n, temperature=0.0, grammar=grammar)
    elapsed = time.perf_counter() - started
    return float(out["usage"]["completion_tokens"]) / elapsed


def profile_decode(llama: Any, n: int = 256) -> str:
    llama.reset()
    prof = cProfile.Profile()
    prof.enable()
    llama.create_completion(PROMPT, max_tokens=n, temperature=0.0)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    return buf.getvalue()


async def plans(planner: GGUFPlanner) -> list[dict[str, Any]]:
    rows = []
    for task in TASKS:
        started = time.perf_counter()
        result = await planner.plan(task, WORKERS, 5)
        rows.append({"task": task[:40], "seconds": time.perf_counter() - started,
                     "completion_tokens": result.info.usage.completion_tokens,
                     "prompt_tokens": result.info.usage.prompt_tokens, "steps": len(result.workflow.steps),
                     "source": result.info.source})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    warm = rows[1:]  # the first plan evaluates the shared prefix; the rest reuse it
    return {"cold_plan_s": rows[0]["seconds"], "warm_plan_s_median": statistics.median(r["seconds"] for r in warm),
            "warm_plan_tok_s_median": statistics.median(r["completion_tokens"] / r["seconds"] for r in warm),
            "steps": [r["steps"] for r in rows], "sources": [r["source"] for r in rows]}


def measure(model: Path, gpu_layers: int, threads: int) -> dict[str, Any]:
    from llama_cpp.llama_grammar import LlamaGrammar

    planner = GGUFPlanner(model, n_gpu_layers=gpu_layers, n_threads=threads)
    planner.model.load()
    llama = planner.model._llama
    ids = [w.id for w in WORKERS]
    schema_grammar = LlamaGrammar.from_json_schema(json.dumps(workflow_schema(ids, 5)), verbose=False)
    nested_grammar = LlamaGrammar.from_string(workflow_grammar(ids, 5), verbose=False)
    decode_rate(llama, 16)  # warm-up
    free = [decode_rate(llama) for _ in range(5)]
    # the planner's own prompt, so the grammar-forced JSON is what a plan looks like
    plan_prompt = planner_messages(TASKS[0], WORKERS, 5, "json")[0]["content"] + "\nTask: " + TASKS[0] + "\n"
    via_schema = [decode_rate(llama, 200, schema_grammar, plan_prompt) for _ in range(3)]
    nested = [decode_rate(llama, 200, nested_grammar, plan_prompt) for _ in range(3)]
    prefix = planner_messages("", WORKERS, 5, "json")[0]["content"]
    rows = anyio.run(plans, planner)
    return {"gpu_layers": gpu_layers, "offloaded": planner.model.offloaded, "threads": threads,
            "prefix_chars": len(prefix), "decode_tok_s": statistics.median(free), "decode_runs": free,
            "schema_grammar_decode_tok_s": statistics.median(via_schema),
            "nested_grammar_decode_tok_s": statistics.median(nested), "plans": rows, **summarise(rows)}


def llama_bench(binary: str, model: Path) -> dict[str, Any]:
    proc = subprocess.run([binary, "-m", str(model), "-ngl", "99", "-p", "0", "-n", "128", "-r", "5", "-o", "json"],
                          capture_output=True, text=True, timeout=300)
    rows = json.loads(proc.stdout)
    return {"tg128_tok_s": rows[0]["avg_ts"], "stddev": rows[0].get("stddev_ts"), "raw": rows}


def main() -> None:
    import llama_cpp

    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--llama-bench")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {"gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
                              "llama_cpp_python": llama_cpp.__version__, "cpu_count": cores}
    result["gpu"] = measure(args.model, -1, cores)
    result["cpu"] = measure(args.model, 0, cores)
    if args.llama_bench:
        result["llama_bench"] = llama_bench(args.llama_bench, args.model)
        result["binding_vs_llama_bench"] = result["gpu"]["decode_tok_s"] / result["llama_bench"]["tg128_tok_s"]
    gpu_planner = GGUFPlanner(args.model, n_gpu_layers=-1, n_threads=cores)
    gpu_planner.model.load()
    result["decode_profile"] = profile_decode(gpu_planner.model._llama)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "decode_profile"}, indent=1)[:6000])
    print(result["decode_profile"])


if __name__ == "__main__":
    main()
