"""Figure 2: what the engine adds to one worker call (plan a host workflow, execute, trace to SQLite).

Baseline and engine path call the same zero-latency scripted worker through the same client with the same
messages: the baseline is the bare call of the client the engine uses for that worker (one POST on a pooled
httpx client when the pool calls it directly, else litellm.acompletion). They are interleaved (alternating
order) so that drift in the machine's load hits both alike; the overhead is the paired difference of each
engine run and its neighbouring bare call.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from pyinstrument import Profiler

from conductor_mcp.models import RunStatus, Workflow
from conductor_mcp.runs.engine import Engine, worker_messages
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.workers.llm import completion_cap
from conductor_mcp.workers.pool import litellm_module

from .figures import Figure
from .profiles import OUT_DIR, charge_to_project, top
from .scripted import ScriptedProcess, scripted_registry
from .stats import summarise
from .timed import Spent

TASK = "Summarise the trade-offs between optimistic and pessimistic locking in two short paragraphs."
WORKFLOW: dict[str, Any] = {"steps": [{"worker": "strong", "instruction": TASK, "access": "none"}]}
PROFILE_TEXT = OUT_DIR / "engine_profile.txt"
STORE_RUNS = 50


class Paths:
    """The two code paths under test, sharing one registry, store and server."""

    def __init__(self, base_url: str, db: Path) -> None:
        self.registry = scripted_registry(base_url, ("strong",))
        self.engine = Engine(self.registry, Store(db))
        self.spec = self.registry.spec("strong")
        self.messages = worker_messages(TASK, Workflow.model_validate(WORKFLOW), 0, {})
        self.endpoint = self.engine.pool.endpoint("strong")  # None: the engine calls this worker through litellm
        self.client = "litellm" if self.endpoint is None else "httpx"
        self.litellm: Any = litellm_module() if self.endpoint is None else None
        self.http = httpx.AsyncClient(base_url=base_url, headers={"authorization": "Bearer none"})

    async def direct(self) -> float:
        """The call WorkerPool makes, without the engine: same client, model, cap, messages and server."""
        started = time.perf_counter()
        if self.endpoint is None:
            response = await self.litellm.acompletion(model=self.spec.model, messages=self.messages,
                                                      api_base=self.spec.api_base, api_key="none",
                                                      max_tokens=completion_cap(self.spec),
                                                      timeout=self.spec.timeout_s, max_retries=0, num_retries=0)
            text = response.choices[0].message.content
        else:
            r = await self.http.post("/chat/completions", json={
                "model": self.endpoint.model, "messages": self.messages, "max_tokens": completion_cap(self.spec)})
            text = r.json()["choices"][0]["message"]["content"]
        elapsed = time.perf_counter() - started
        if not text:
            raise RuntimeError("direct call returned no text")
        return elapsed

    async def engine_run(self) -> tuple[float, float]:
        """Seconds in engine.plan (host workflow) and in engine.execute for a 1-step run."""
        started = time.perf_counter()
        run = await self.engine.plan(TASK, workflow=WORKFLOW)
        planned = time.perf_counter()
        run = await RunManager(engine=self.engine).drive(run.id)
        done = time.perf_counter()
        if run.status != RunStatus.COMPLETED:
            raise RuntimeError(f"engine run ended {run.status}: {run.error}")
        return planned - started, done - planned


def count_store_calls(store: Store) -> Spent:
    """Wrap the store instance's public methods (this instance only) to count calls and time them (wall)."""
    spent = Spent(clock=time.perf_counter)
    for name in dir(Store):
        if not name.startswith("_") and callable(getattr(Store, name)) and name != "close":
            setattr(store, name, spent.timed(name, getattr(store, name)))
    return spent


async def _measure(repeats: int, warmup: int, profile_runs: int) -> dict[str, Any]:
    with ScriptedProcess(latency_ms=0) as srv, tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        paths = Paths(srv.base_url, Path(tmp) / "traces.db")
        for _ in range(warmup):
            await paths.direct()
            await paths.engine_run()
        direct: list[float] = []
        plan: list[float] = []
        execute: list[float] = []
        for i in range(repeats):
            if i % 2:
                direct.append(await paths.direct())
                p, e = await paths.engine_run()
            else:
                p, e = await paths.engine_run()
                direct.append(await paths.direct())
            plan.append(p)
            execute.append(e)
        profiler = Profiler(interval=0.0001, async_mode="disabled")  # whole thread: loop and callbacks too
        profiler.start()
        for _ in range(profile_runs):
            await paths.engine_run()
        session = profiler.stop()
        OUT_DIR.mkdir(exist_ok=True)
        PROFILE_TEXT.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        root = session.root_frame()
        charged = charge_to_project(root) if root is not None else {}
        spent = count_store_calls(paths.engine.store)
        for _ in range(STORE_RUNS):
            await paths.engine_run()
        await paths.http.aclose()
        await paths.engine.pool.aclose()
        paths.engine.store.close()
    return {"direct": direct, "plan": plan, "execute": execute, "charged": charged,
            "store_calls": {k: v / STORE_RUNS for k, v in spent.made.items()},
            "store_ms": {k: v * 1e3 / STORE_RUNS for k, v in spent.items()},
            "profile_s": session.duration, "profile_runs": profile_runs, "client": paths.client}


def measure(repeats: int, warmup: int = 30) -> Figure:
    raw = anyio.run(_measure, repeats, warmup, repeats, backend="asyncio")
    direct, plan, execute = raw["direct"], raw["plan"], raw["execute"]
    total = [p + e for p, e in zip(plan, execute, strict=True)]
    diff = summarise([t - d for t, d in zip(total, direct, strict=True)])
    exec_diff = summarise([e - d for e, d in zip(execute, direct, strict=True)])
    d, p, e = summarise(direct), summarise(plan), summarise(execute)
    per_run = {k: v / raw["profile_runs"] for k, v in raw["charged"].items()}
    costs = top(per_run, 8)
    store_lines = ", ".join(f"{name} ×{raw['store_calls'][name]:g} {ms:.3f} ms"
                            for name, ms in sorted(raw["store_ms"].items(), key=lambda kv: -kv[1]))
    profile_lines = ", ".join(f"{name} {sec * 1e3:.2f} ms" for name, sec in costs)
    client = raw["client"]
    bare = "one POST on a pooled httpx client" if client == "httpx" else "litellm.acompletion"
    return Figure(
        2, f"Engine overhead per step (1-step run vs the bare call of its client, {client})",
        f"median {diff.median * 1e3:.2f} ms, p99 {diff.p99 * 1e3:.2f} ms ({diff.spread(1e3)} ms)",
        "median < 0.5 ms", diff.median < 0.0005,
        f"{repeats} interleaved pairs after {warmup} warm-ups: (engine.plan with a host workflow + "
        f"engine.execute) minus the bare call the engine's client makes ({bare}) with the same messages and "
        "cap, zero-latency scripted worker in another process; paired differences",
        {"overhead_s": diff.as_dict(), "execute_minus_direct_s": exec_diff.as_dict(), "direct_s": d.as_dict(),
         "plan_s": p.as_dict(), "execute_s": e.as_dict(), "profile": "bench/out/engine_profile.txt",
         "profile_ms_per_run": {k: v * 1e3 for k, v in costs}, "store_calls_per_run": raw["store_calls"],
         "store_ms_per_run": raw["store_ms"]},
        [f"Engine overhead: a bare {client} call takes {d.median * 1e3:.2f} ms; the engine's 1-step run "
         f"{(p.median + e.median) * 1e3:.2f} ms ({p.median * 1e3:.2f} ms plan with a host workflow + "
         f"{e.median * 1e3:.2f} ms execute). Execute alone adds {exec_diff.median * 1e3:.2f} ms "
         f"(p99 {exec_diff.p99 * 1e3:.2f} ms).",
         f"Engine profile (pyinstrument, {raw['profile_runs']} runs, bench/out/engine_profile.txt), time charged "
         f"per run to each project function incl. the library code it calls: {profile_lines}. The profiler "
         "slows everything several-fold; compare the lines with each other, not with the overhead.",
         f"Store calls per 1-step run ({STORE_RUNS} instrumented runs; ms include nested store calls): {store_lines}."],
    )
