"""Figure 5: planning with the bundled GGUF conductor on this CPU, with and without prompt-prefix reuse.

The planner prompt puts workers, rules and examples first and the task last, so consecutive plans on
one llama.cpp instance share a long token prefix that need not be evaluated again. Three regimes:
- cold: the first plan on a fresh instance (model loaded beforehand, timed separately);
- reused: later plans on the same instance, each for a different task;
- reset: the same instance with `Llama.reset()` before each plan, which forgets the evaluated tokens.
llama.cpp's own counters (llama_perf_context) say how many prompt tokens each plan evaluated and how fast
tokens were decoded; the wall time includes grammar-constrained sampling and parsing on top.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import anyio

from conductor_mcp.models import CONDUCTOR_WORKER, WorkerSpec
from conductor_mcp.planners.gguf import GGUFPlanner
from conductor_mcp.planners.prompts import planner_messages
from conductor_mcp.workers.registry import bundled_gguf_path

from .child import emit, run_rows
from .figures import Figure
from .scripted import ROOT, bench_env, worker_specs
from .stats import summarise
from .tasks import TASKS

MAX_STEPS = 5
RECURSION = True  # as the engine plans by default (Budget.max_depth > 0): the conductor may call itself
REGIME_BUDGET_S = 60.0  # a regime stops taking new tasks after this long: a loaded machine must not stall the suite
REGIMES = ("cold", "reused", "reset", "five_steps")


def perf(planner: GGUFPlanner, reset: bool = False) -> dict[str, float]:
    """llama.cpp's counters since the last reset: prompt tokens evaluated and decode tokens, with times."""
    import llama_cpp

    ctx = planner.model._llama._ctx.ctx
    data = llama_cpp.llama_perf_context(ctx)
    if reset:
        llama_cpp.llama_perf_context_reset(ctx)
    return {"prompt_eval_tokens": data.n_p_eval, "prompt_eval_s": data.t_p_eval_ms / 1e3,
            "decode_tokens": data.n_eval, "decode_s": data.t_eval_ms / 1e3}


def five_step_constraint(planner: GGUFPlanner, names: Sequence[str]) -> Any:
    """The planner's own grammar with every step after the first made compulsory: exactly five steps."""
    base = planner.constraint(names, MAX_STEPS, allow_empty=False)
    forced, n = re.subn(r'\( "," ws (s\d+) \)\?', r'"," ws \1', base) if isinstance(base, str) else ("", 0)
    if n != MAX_STEPS - 1:
        raise RuntimeError("the planner's grammar no longer has optional continuations; update five_step_constraint")
    return forced


async def plan_once(planner: GGUFPlanner, specs: list[WorkerSpec], task: str) -> dict[str, Any]:
    perf(planner, reset=True)
    started = time.perf_counter()
    result = await planner.plan(task, specs, MAX_STEPS, RECURSION)
    wall = time.perf_counter() - started
    usage = result.info.usage
    return {"wall_s": wall, "steps": len(result.workflow.steps), "source": result.info.source,
            "attempts": result.info.attempts, "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens, **perf(planner)}


async def five_steps(planner: GGUFPlanner, specs: list[WorkerSpec], task: str) -> dict[str, Any]:
    """One generation through the planner's own path, constrained to exactly five steps."""
    messages = planner_messages(task, specs, MAX_STEPS, "json", RECURSION)
    constraint = five_step_constraint(planner, [s.id for s in specs] + [CONDUCTOR_WORKER])
    perf(planner, reset=True)
    started = time.perf_counter()
    gen = await planner.generate(messages, constraint, MAX_STEPS, attempt=1)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "completion_tokens": gen.usage.completion_tokens, **perf(planner)}


def fresh_planner() -> tuple[GGUFPlanner, float]:
    planner = GGUFPlanner(bundled_gguf_path())
    started = time.perf_counter()
    planner.model.load()
    return planner, time.perf_counter() - started


def probe(*args: str) -> list[float | None]:
    """Decode tokens/s from bench.decode_probe in a fresh process (clean llama.cpp/OpenMP state);
    None for each figure when it did not finish within a minute (a very busy machine)."""
    cmd = [sys.executable, "-m", "bench.decode_probe", *args]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=bench_env(), capture_output=True, text=True, timeout=60, check=True)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        return [None, None]
    return [float(x) for x in done.stdout.strip().splitlines()[-1].split()]


def thread_sensitivity() -> dict[str, float | None]:
    """Decode tokens/s with every core and with one thread, on the machine as it
    is and beside one busy process (as the server's own event loop or any other load would be)."""
    cores = os.cpu_count() or 1
    out: dict[str, float | None] = {"cores": cores}
    for label, threads in (("all", cores), ("1", 1)):
        out[f"threads_{label}_idle"] = probe("threads", str(threads))[0]
        out[f"threads_{label}_beside_busy_process"] = probe("threads", str(threads), "--busy")[0]
    out["chat_before_overlap"], out["chat_after_overlap"] = probe("overlap")[:2]
    return out


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _within_budget(rows: list[dict[str, Any]], started: float) -> bool:
    return not rows or time.perf_counter() - started < REGIME_BUDGET_S


async def _measure(n_tasks: int, n_cold: int, n_slow: int, out: TextIO) -> None:
    """Plan in every regime; one JSON line per plan, flushed at once, so a killed run keeps what it did."""
    specs = worker_specs("http://127.0.0.1:9/v1")  # never called: planning only reads the descriptions
    tasks = list(TASKS[:n_tasks])

    def row(regime: str, data: dict[str, Any]) -> None:
        emit(out, {"regime": regime, **data})

    cold: list[dict[str, Any]] = []
    started = time.perf_counter()
    for task in tasks[:n_cold]:
        if not _within_budget(cold, started):
            break
        planner, load_s = fresh_planner()
        cold.append(await plan_once(planner, specs, task))
        row("cold", {**cold[-1], "load_s": load_s, "n_threads": planner.model.n_threads,
                      "offloaded": planner.model.offloaded})
    planner, _ = fresh_planner()
    await plan_once(planner, specs, "Warm-up task: say hello.")  # evaluates the shared prefix once
    for name, chosen in (("reused", tasks), ("reset", tasks[:n_slow]), ("five_steps", tasks[-n_slow:])):
        rows: list[dict[str, Any]] = []
        started = time.perf_counter()
        for task in chosen:
            if not _within_budget(rows, started):
                break
            if name == "reset":
                planner.model._llama.reset()  # forget every evaluated token: the plan evaluates its whole prompt
            rows.append(await (five_steps if name == "five_steps" else plan_once)(planner, specs, task))
            row(name, rows[-1])


def _regime(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def s(key: str) -> dict[str, Any]:
        return summarise([float(r[key]) for r in rows]).as_dict()

    decode = [r["decode_tokens"] / r["decode_s"] for r in rows if r["decode_s"] > 0]
    prompt_rate = [r["prompt_eval_tokens"] / r["prompt_eval_s"] for r in rows if r["prompt_eval_s"] > 0]
    # end to end: completion tokens over the time after the prompt was evaluated (sampling with grammar too)
    e2e = [r["completion_tokens"] / (r["wall_s"] - r["prompt_eval_s"]) for r in rows
           if r["wall_s"] > r["prompt_eval_s"] and r["completion_tokens"]]
    out = {"n": len(rows), "wall_s": s("wall_s"), "prompt_eval_tokens": s("prompt_eval_tokens"),
           "prompt_eval_s": s("prompt_eval_s"), "completion_tokens": s("completion_tokens"),
           "decode_tok_s": summarise(decode).as_dict() if decode else None,
           "prompt_tok_s": summarise(prompt_rate).as_dict() if prompt_rate else None,
           "end_to_end_tok_s": summarise(e2e).as_dict() if e2e else None}
    if "steps" in rows[0]:
        out["steps"] = [r["steps"] for r in rows]
        out["sources"] = [r["source"] for r in rows]
    return out


def measure(n_tasks: int, n_cold: int, n_slow: int, limit_s: float = 300.0) -> Figure:
    """`n_tasks` plans with the prefix reused; `n_cold` fresh instances; `n_slow` reset and forced plans;
    the whole set stopped after `limit_s`."""
    rows, finished = run_rows("bench.planning", [str(n_tasks), str(n_cold), str(n_slow)], limit_s)
    by_regime = {k: [r for r in rows if r["regime"] == k] for k in REGIMES}
    missing = [k for k, v in by_regime.items() if not v]
    if missing:
        raise RuntimeError(f"no plan finished in regime(s) {missing} within {limit_s:.0f} s (machine too busy?)")
    raw = {"n_threads": by_regime["cold"][0]["n_threads"], "offloaded": by_regime["cold"][0]["offloaded"],
           "threads": thread_sensitivity()}
    regimes = {k: _regime(v) for k, v in by_regime.items()}
    five, reused, reset, cold = regimes["five_steps"], regimes["reused"], regimes["reset"], regimes["cold"]
    load = summarise([r["load_s"] for r in by_regime["cold"]])
    w5 = five["wall_s"]
    value = (f"5-step plan {w5['median']:.2f} s (min–max {w5['min']:.2f}–{w5['max']:.2f}); plan with prefix reused "
             f"{reused['wall_s']['median']:.2f} s vs reset {reset['wall_s']['median']:.2f} s vs cold "
             f"{cold['wall_s']['median']:.2f} s; decode {five['decode_tok_s']['median']:.0f} tok/s")

    def line(name: str, r: dict[str, Any]) -> str:
        return (f"{name}: plan {r['wall_s']['median']:.2f} s, prompt tokens evaluated "
                f"{r['prompt_eval_tokens']['median']:.0f} in {r['prompt_eval_s']['median'] * 1e3:.0f} ms, "
                f"{r['completion_tokens']['median']:.0f} tokens generated, decode "
                f"{(r['decode_tok_s'] or {}).get('median', 0):.0f} tok/s (end to end with grammar sampling "
                f"{(r['end_to_end_tok_s'] or {}).get('median', 0):.0f} tok/s)")

    steps = reused.get("steps", [])
    th = raw["threads"]
    cut = [] if finished else [f"Stopped at the {limit_s:.0f} s limit: fewer plans than asked (see n per regime)."]
    return Figure(
        5, "Planning with the bundled GGUF conductor (SmolLM2-135M, CPU)", value, "5-step plan < 4 s",
        w5["median"] < 4.0,
        f"GGUFPlanner on {raw['n_threads']} threads, GPU offload {raw['offloaded']}, 3 described workers; "
        f"{n_tasks} tasks with the prefix reused, {n_slow} with a reset cache, {n_slow} forced to 5 steps, "
        f"{n_cold} fresh instances (cold), each regime cut at {REGIME_BUDGET_S:.0f} s; 5-step figure: the "
        "planner's own generate() with its grammar's optional steps made compulsory; prompts as the engine writes "
        "them (recursion allowed); token counts from llama_perf_context",
        {**regimes, "model_load_s": load.as_dict(), "n_threads": raw["n_threads"], "offloaded": raw["offloaded"],
         "decode_tok_s_by_threads": th, "finished": finished, "limit_s": limit_s},
        [f"Planning (model load {load.median:.2f} s, not counted in plan times): "
         + "; ".join(line(n, regimes[k]) for n, k in (("cold prefix", "cold"), ("prefix reused", "reused"),
                                                       ("cache reset", "reset"), ("forced 5 steps", "five_steps")))
         + f". Prefix reuse evaluates {reused['prompt_eval_tokens']['median']:.0f} prompt tokens instead of "
         f"{reset['prompt_eval_tokens']['median']:.0f}. Steps chosen by the conductor, unforced: {steps}.",
         f"Planner threads (bench.decode_probe, fresh processes, plain decode): {_rate(th['cores'])} threads (every "
         f"core) {_rate(th['threads_all_idle'])} tok/s, beside one busy process "
         f"{_rate(th['threads_all_beside_busy_process'])} tok/s; 1 thread {_rate(th['threads_1_idle'])} and "
         f"{_rate(th['threads_1_beside_busy_process'])} tok/s. llama.cpp's threads meet at a barrier every token, "
         "so when another process holds a core, a thread count equal to the core count stalls.",
         f"Calling thread (bench.decode_probe overlap): LocalModel.chat decodes "
         f"{_rate(th['chat_before_overlap'])} tok/s while every call lands on the same anyio worker thread, and "
         f"{_rate(th['chat_after_overlap'])} tok/s after two overlapping calls have used two threads. Most likely "
         "cause: llama.cpp's OpenMP runtime (libgomp) keeps a thread team per calling thread, and with more OpenMP "
         "threads than cores it throttles its spin-wait (GOMP_SPINCOUNT), so every token's barrier pays for "
         "sleeping and waking. It lasts until anyio retires the extra idle thread (10 s).", *cut],
    )


def main() -> int:
    """Child entry: `python -m bench.planning N_TASKS N_COLD N_SLOW ROWS.jsonl`."""
    n_tasks, n_cold, n_slow, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with open(path, "w") as out:
        anyio.run(_measure, n_tasks, n_cold, n_slow, out, backend="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
