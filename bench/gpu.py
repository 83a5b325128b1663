"""Figure 7: GPU figures are measured on a separate device; this row takes them from a JSON file.

CONDUCTOR_BENCH_GPU_JSON names the file: the output of `python -m bench.gpu_device` (objects `gpu` and
`cpu` with decode_tok_s, warm_plan_s_median, cold_plan_s), or any object that gives `value`, `target`,
`met`, `how` and `notes` itself. Everything in it is kept in results.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .figures import Figure

ENV = "CONDUCTOR_BENCH_GPU_JSON"
NAME = "GPU (conductor planning with llama.cpp offload)"
TARGET = "binding decode ≥ 80% of llama-bench tg128"


def _side(name: str, d: dict[str, Any]) -> str:
    parts = [name]
    if isinstance(d.get("decode_tok_s"), int | float):
        parts.append(f"decode {d['decode_tok_s']:.0f} tok/s")
    if isinstance(d.get("warm_plan_s_median"), int | float):
        parts.append(f"plan {d['warm_plan_s_median']:.2f} s (prefix reused)")
    if isinstance(d.get("cold_plan_s"), int | float):
        parts.append(f"{d['cold_plan_s']:.2f} s cold")
    return " ".join(parts)


def summary(data: dict[str, Any]) -> tuple[str, bool | None]:
    if "value" in data:
        met = data.get("met")
        return str(data["value"]), met if isinstance(met, bool) else None
    sides = [_side(k, data[k]) for k in ("gpu", "cpu") if isinstance(data.get(k), dict)]
    bench = data.get("llama_bench")
    ratio = data.get("binding_vs_llama_bench")
    if isinstance(bench, dict) and isinstance(ratio, int | float):
        sides.append(f"llama-bench tg128 {bench['tg128_tok_s']:.0f} tok/s; binding/llama-bench {ratio:.2f}")
        return "; ".join(sides), ratio >= 0.8
    return "; ".join(sides), None


def _notes(data: dict[str, Any]) -> list[str]:
    gpu, cpu = data.get("gpu"), data.get("cpu")
    if not isinstance(gpu, dict) or not isinstance(cpu, dict):
        return []
    return [
        f"Device: {data.get('device', 'one NVIDIA H100 80GB HBM3, 16 CPU cores')}; llama-cpp-python "
        f"{data.get('llama_cpp_python')} built there with CUDA (sm_90); every layer offloaded: {gpu.get('offloaded')}.",
        f"Decode, no grammar: GPU {gpu['decode_tok_s']:.0f} tok/s, its 16-core CPU {cpu['decode_tok_s']:.0f} tok/s. "
        f"Under the plan grammar: GPU {gpu['nested_grammar_decode_tok_s']:.0f} tok/s with the nested GBNF against "
        f"{gpu['schema_grammar_decode_tok_s']:.0f} with the JSON-schema conversion (CPU "
        f"{cpu['nested_grammar_decode_tok_s']:.0f} vs {cpu['schema_grammar_decode_tok_s']:.0f}).",
        f"Plans (3 workers, 6 tasks): GPU {gpu['warm_plan_s_median']:.2f} s median with the prefix reused, "
        f"{gpu['cold_plan_s']:.2f} s cold; CPU {cpu['warm_plan_s_median']:.2f} s. Plans are grammar-bound: llama.cpp "
        "checks every vocabulary token against the grammar on the CPU at every step, offloaded or not.",
        "Where the rest of the decode goes (cProfile of 256 tokens on the GPU): 77% in llama_sampler_sample, which "
        "waits for the token's decode, copies 49,152 logits to the host and builds the full candidate array for "
        "greedy sampling; 12% detokenizing each token as it comes; llama_decode's launch 9%. llama-bench times the "
        "decode alone. Closing it would take sampling on the GPU (a newer llama.cpp's backend sampling) and "
        "detokenizing once per reply, which means our own generation loop instead of the binding's.",
    ]


DEFAULT = "bench/gpu_h100.json"  # measured on an H100 device; `make bench` runs from the repository root


def measure() -> Figure:
    path = os.environ.get(ENV) or (DEFAULT if Path(DEFAULT).is_file() else None)
    if not path:
        return Figure(7, NAME, "no GPU on this machine; see GPU section", TARGET, None,
                      f"measured on a separate GPU device (bench/gpu_device.py); set {ENV} to its JSON to include it",
                      {"source": None})
    data: dict[str, Any] = json.loads(Path(path).read_text())
    value, met = summary(data)
    notes = data.get("notes") or _notes(data)
    return Figure(7, NAME, value[:400], str(data.get("target", TARGET)), met,
                  str(data.get("how", f"python -m bench.gpu_device on an H100 device (16 cores); {path}")),
                  {"source": str(path), "figures": data},
                  [str(n) for n in notes] if isinstance(notes, list) else [str(notes)])
