"""The hot path of a worker call: litellm (before) against the direct httpx client (after), side by side.

`python -m bench.hot_path [--runs 150] [--rounds 5] [--pairs 200] [--profile-runs 200]` prints the figures and
writes bench/out/hot_path.json.

1. Server CPU per one-step run over /v1/chat/completions: two `mcp-conductor serve --transport http` processes at
   once, one whose workers are forced to `client: litellm`, one to `client: httpx`, on the same scripted workers
   (a third process that answers at once). Each round sends `runs` sequential non-streamed one-step runs
   (`model: strong`) to each server, the order alternating between rounds, and reads the server's user+system
   CPU from /proc before and after: CPU ms a run, one figure a round, medians over rounds.
2. Engine overhead per step (figure 2's measure, per client): in this process, plan (host workflow) + drive of a
   1-step run, interleaved with the bare call its client makes (litellm.acompletion, or one POST on a pooled
   httpx client); wall and this process's CPU a run, and the paired difference run − bare call.
3. Profile of the direct path (pyinstrument, the whole thread): time a run charged to each project function (with
   the library code it calls), own time by package, and the store calls a run makes.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import yaml
from pyinstrument import Profiler
from pyinstrument.frame import Frame

from conductor_mcp.models import Manifest, Run, RunStatus, Workflow
from conductor_mcp.redact import redact
from conductor_mcp.runs.engine import Engine, worker_messages
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Store
from conductor_mcp.workers.llm import completion_cap, litellm_module
from conductor_mcp.workers.registry import build_registry

from .engine_overhead import count_store_calls
from .load import CONSOLE_SCRIPT
from .procfs import cpu_seconds
from .profiles import OUT_DIR, charge_to_project, top
from .scripted import ScriptedProcess, bench_env, worker_specs
from .stats import summarise

Client = Literal["litellm", "httpx"]
CLIENTS: tuple[Client, Client] = ("litellm", "httpx")
OUT_JSON = OUT_DIR / "hot_path.json"
TASK = "Summarise the trade-offs between optimistic and pessimistic locking in two short paragraphs."
WORKFLOW: dict[str, Any] = {"steps": [{"worker": "strong", "instruction": TASK, "access": "none"}]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_manifest(path: Path, base_url: str, client: Client) -> Path:
    workers = [s.model_copy(update={"client": client}).model_dump(mode="json", exclude_none=True,
                                                                   exclude_defaults=True)
               for s in worker_specs(base_url, ("strong",), max_concurrency=1024)]
    path.write_text(yaml.safe_dump({"workers": workers}, sort_keys=False))
    return path


class Served:
    """`mcp-conductor serve --transport http` with one manifest, on a free loopback port; SIGINT on close."""

    def __init__(self, manifest: Path, db: Path, log: Path) -> None:
        self.port = _free_port()
        env = bench_env()
        env.update(CONDUCTOR_WORKERS=str(manifest), CONDUCTOR_DB=str(db))
        self._log = log.open("w")
        self.proc = subprocess.Popen([str(CONSOLE_SCRIPT), "serve", "--transport", "http", "--host", "127.0.0.1",
                                      "--port", str(self.port)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=self._log)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}; see {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not listen within 60 s") from None
                time.sleep(0.05)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _one_run(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"model": "strong", "messages": [{"role": "user", "content": TASK}]})
    if r.status_code != 200 or r.json()["conductor"]["status"] != "completed":
        raise RuntimeError(f"/v1: {r.status_code} {r.text[:300]}")


def server_cpu(runs: int, rounds: int, warmup: int) -> dict[str, Any]:
    """CPU ms a one-step /v1 run in each server, one sample a round; rounds alternate which server goes first."""
    per_run: dict[str, list[float]] = {c: [] for c in CLIENTS}
    wall: dict[str, list[float]] = {c: [] for c in CLIENTS}
    with ScriptedProcess(latency_ms=0) as workers, tempfile.TemporaryDirectory(prefix="bench-hot-") as tmp:
        OUT_DIR.mkdir(exist_ok=True)
        served = {c: Served(write_manifest(Path(tmp) / f"{c}.yaml", workers.base_url, c), Path(tmp) / f"{c}.db",
                            OUT_DIR / f"hot_path_server_{c}.txt") for c in CLIENTS}
        try:
            https = {c: httpx.Client(base_url=s.root, timeout=60) for c, s in served.items()}
            for c in CLIENTS:  # the first runs import and warm what the server imports lazily
                for _ in range(warmup):
                    _one_run(https[c])
            for r in range(rounds):
                for c in (CLIENTS if r % 2 == 0 else CLIENTS[::-1]):
                    pid = served[c].proc.pid
                    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                    for _ in range(runs):
                        _one_run(https[c])
                    wall[c].append((time.perf_counter() - t0) / runs)
                    per_run[c].append((cpu_seconds(pid) - cpu0) / runs)
            for h in https.values():
                h.close()
        finally:
            for s in served.values():
                s.close()
    return {c: {"cpu_s_per_run": summarise(per_run[c]).as_dict(), "wall_s_per_run": summarise(wall[c]).as_dict(),
                "rounds": per_run[c]} for c in CLIENTS}


class EnginePaths:
    """One engine per client on one scripted worker, each with its own store, and the bare call of each client."""

    def __init__(self, base_url: str, tmp: Path) -> None:
        self.engines: dict[Client, Engine] = {}
        for c in CLIENTS:
            specs = [s.model_copy(update={"client": c}) for s in worker_specs(base_url, ("strong",))]
            self.engines[c] = Engine(build_registry(Manifest(workers=specs), f"bench {c}"), Store(tmp / f"{c}.db"))
        self.spec = self.engines["httpx"].registry.spec("strong")
        self.messages = worker_messages(TASK, Workflow.model_validate(WORKFLOW), 0, {})
        self.litellm = litellm_module()
        self.http = httpx.AsyncClient(base_url=base_url, headers={"authorization": "Bearer none"})

    async def bare(self, client: Client) -> None:
        """The call the client makes, with nothing around it: same model, messages, cap and server."""
        if client == "litellm":
            response = await self.litellm.acompletion(model=self.spec.model, messages=self.messages,
                                                      api_base=self.spec.api_base, api_key="none",
                                                      max_tokens=completion_cap(self.spec),
                                                      timeout=self.spec.timeout_s, max_retries=0, num_retries=0)
            text = response.choices[0].message.content
        else:
            r = await self.http.post("/chat/completions", json={
                "model": "scripted-strong", "messages": self.messages, "max_tokens": completion_cap(self.spec)})
            text = r.json()["choices"][0]["message"]["content"]
        if not text:
            raise RuntimeError("bare call returned no text")

    async def run(self, client: Client) -> None:
        engine = self.engines[client]
        run = await engine.plan(TASK, workflow=WORKFLOW)
        run = await RunManager(engine=engine).drive(run.id)
        if run.status != RunStatus.COMPLETED:
            raise RuntimeError(f"{client} run ended {run.status}: {run.error}")

    async def close(self) -> None:
        await self.http.aclose()
        for engine in self.engines.values():
            await engine.pool.aclose()
            engine.store.close()


async def _timed(fn: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Wall and this process's CPU seconds of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    await fn()
    return time.perf_counter() - t0, time.process_time() - c0


async def _engine(pairs: int, warmup: int, profile_runs: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = defaultdict(list)
    with ScriptedProcess(latency_ms=0) as srv, tempfile.TemporaryDirectory(prefix="bench-hot-engine-") as tmp:
        paths = EnginePaths(srv.base_url, Path(tmp))
        try:
            for _ in range(warmup):
                for c in CLIENTS:
                    await paths.bare(c)
                    await paths.run(c)
            for i in range(pairs):
                for c in (CLIENTS if i % 2 == 0 else CLIENTS[::-1]):
                    order = ("run", "bare") if i % 4 < 2 else ("bare", "run")
                    for what in order:
                        fn = (lambda c=c: paths.run(c)) if what == "run" else (lambda c=c: paths.bare(c))
                        w, cpu = await _timed(fn)
                        samples[f"{c}_{what}_wall"].append(w)
                        samples[f"{c}_{what}_cpu"].append(cpu)
            profile = await _profile(paths, profile_runs) if profile_runs else None
        finally:
            await paths.close()
    out: dict[str, Any] = {k: summarise(v).as_dict() for k, v in samples.items()}
    for c in CLIENTS:
        for unit in ("wall", "cpu"):
            diff = [a - b for a, b in zip(samples[f"{c}_run_{unit}"], samples[f"{c}_bare_{unit}"], strict=True)]
            out[f"{c}_overhead_{unit}"] = summarise(diff).as_dict()
    out["profile"] = profile
    return out


def _package(path: str | None) -> str:
    """A frame's package: ours by module, the first folder under site-packages, or the stdlib module."""
    if not path:
        return "(unknown)"
    if "conductor_mcp" in path:
        parent = Path(path).parent.name
        return "conductor_mcp." + ("" if parent == "conductor_mcp" else parent + ".") + Path(path).stem
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    parent = Path(path).parent.name
    return f"stdlib {parent if parent not in ('lib', '') and not parent.startswith('python') else Path(path).stem}"


def by_package(root: Frame) -> dict[str, float]:
    """Seconds of own time (the deepest Python frame a sample saw; C code counts to its caller) by package."""
    totals: dict[str, float] = defaultdict(float)

    def walk(frame: Frame, package: str) -> None:
        if frame.file_path and not frame.is_synthetic:  # a synthetic frame ([self], [await]) is its caller's
            builtin = frame.file_path == "<built-in>"
            package = f"builtin {frame.function}" if builtin else _package(frame.file_path)
        own = frame.time - sum(c.time for c in frame.children)
        totals[package] += max(own, 0.0)
        for child in frame.children:
            walk(child, package)

    walk(root, "(unknown)")
    return dict(totals)


async def _profile(paths: EnginePaths, runs: int) -> dict[str, Any]:
    """Where a direct-path run's time goes (pyinstrument, the whole thread: the loop and its callbacks too):
    charged to project functions with the library code they call, and own time by package; and the store
    calls a run makes, timed without the profiler."""
    profiler = Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    for _ in range(runs):
        await paths.run("httpx")
    session = profiler.stop()
    (OUT_DIR / "hot_path_profile.txt").write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    root = session.root_frame()
    charged = charge_to_project(root) if root is not None else {}
    packages = by_package(root) if root is not None else {}
    alone = await pieces(paths)  # before the store's methods are wrapped to count them
    calls, seconds = count_store_calls(paths.engines["httpx"].store)
    for _ in range(runs):
        await paths.run("httpx")
    return {
        "pieces_ms": alone,
        "runs": runs, "profiled_ms_per_run": session.duration * 1e3 / runs,
        "project_ms_per_run": {k: v * 1e3 / runs for k, v in top(charged, 16)},
        "package_ms_per_run": {k: v * 1e3 / runs for k, v in top(packages, 16)},
        "store_calls_per_run": {k: v / runs for k, v in calls.items()},
        "store_ms_per_run": {k: v * 1e3 / runs for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])},
    }


def _each_ms(fn: Callable[[], object], n: int = 2000) -> float:
    """Median CPU ms of one call of `fn`, in batches of 50."""
    batches = []
    for _ in range(n // 50):
        c0 = time.process_time()
        for _ in range(50):
            fn()
        batches.append((time.process_time() - c0) / 50)
    return statistics.median(batches) * 1e3


async def pieces(paths: EnginePaths) -> dict[str, float]:
    """CPU ms of pieces of a direct-path run, each alone and unprofiled: the store reading a run back (a run reads
    its own 4 times), the pydantic half of that, the JSON of a worker call, and redact() over a plan."""
    engine = paths.engines["httpx"]
    run = await engine.plan(TASK, workflow=WORKFLOW)
    run = await RunManager(engine=engine).drive(run.id)
    dumped = run.model_dump()
    body = {"model": "scripted-strong", "messages": paths.messages, "max_tokens": completion_cap(paths.spec)}
    r = await paths.http.post("/chat/completions", json=body)
    answer = r.content
    plan_json = run.plan.model_dump_json()
    return {
        "store.get_run": _each_ms(lambda: engine.store.get_run(run.id)),
        "pydantic Run.model_validate (of a 1-step run)": _each_ms(lambda: Run.model_validate(dumped)),
        "pydantic Run.model_dump_json": _each_ms(run.model_dump_json),
        "json.dumps worker request": _each_ms(lambda: json.dumps(body)),
        "json.loads worker answer": _each_ms(lambda: json.loads(answer)),
        "redact(plan JSON)": _each_ms(lambda: redact(plan_json)),
    }


def _ratio(after: float, before: float) -> float:
    return after / before if before else float("nan")


def report(cpu: dict[str, Any], engine: dict[str, Any]) -> list[str]:
    lines = []
    lb, hb = (cpu[c]["cpu_s_per_run"]["median"] * 1e3 for c in CLIENTS)
    lw, hw = (cpu[c]["wall_s_per_run"]["median"] * 1e3 for c in CLIENTS)
    rounds = cpu["litellm"]["cpu_s_per_run"]["n"]
    lines.append(f"Server CPU per one-step /v1/chat/completions run (median of {rounds} rounds): litellm {lb:.2f} ms, "
                 f"httpx {hb:.2f} ms, ratio {_ratio(hb, lb):.2f} (saved {lb - hb:.2f} ms a run); request wall "
                 f"litellm {lw:.2f} ms, httpx {hw:.2f} ms")
    for unit, label in (("cpu", "CPU"), ("wall", "wall")):
        run = {c: engine[f"{c}_run_{unit}"]["median"] * 1e3 for c in CLIENTS}
        bare = {c: engine[f"{c}_bare_{unit}"]["median"] * 1e3 for c in CLIENTS}
        over = {c: engine[f"{c}_overhead_{unit}"]["median"] * 1e3 for c in CLIENTS}
        n = engine["litellm_run_cpu"]["n"]
        lines.append(f"Engine 1-step run, {label} (median of {n}): litellm {run['litellm']:.2f} "
                     f"ms, httpx {run['httpx']:.2f} ms, ratio {_ratio(run['httpx'], run['litellm']):.2f}; bare call "
                     f"litellm {bare['litellm']:.2f} ms, httpx {bare['httpx']:.2f} ms; engine over its own client "
                     f"(paired) litellm {over['litellm']:.2f} ms, httpx {over['httpx']:.2f} ms")
    prof = engine.get("profile")
    if prof:
        lines.append(f"Direct-path profile ({prof['runs']} runs, {prof['profiled_ms_per_run']:.2f} ms a run under the "
                     "profiler), ms a run charged to project functions: " + ", ".join(
                         f"{k} {v:.2f}" for k, v in list(prof["project_ms_per_run"].items())[:12]))
        lines.append("Own time by package, ms a run: " + ", ".join(
            f"{k} {v:.2f}" for k, v in list(prof["package_ms_per_run"].items())[:14]))
        lines.append("Pieces alone, CPU ms a call: " + ", ".join(f"{k} {v:.3f}" for k, v in prof["pieces_ms"].items()))
        lines.append("Store calls a run (ms, nested included): " + ", ".join(
            f"{k} ×{prof['store_calls_per_run'][k]:g} {v:.3f}" for k, v in prof["store_ms_per_run"].items()))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=150, help="one-step /v1 runs a round and server")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=200, help="interleaved engine runs and bare calls a client")
    parser.add_argument("--profile-runs", type=int, default=200, help="0: no profile")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args()
    started = time.time()
    cpu = server_cpu(args.runs, args.rounds, warmup=20) if not args.skip_server else {}
    engine = anyio.run(_engine, args.pairs, 30, args.profile_runs, backend="asyncio")
    lines = report(cpu, engine) if cpu else report_engine_only(engine)
    for line in lines:
        print(line)
    OUT_DIR.mkdir(exist_ok=True)
    OUT_JSON.write_text(json.dumps({"started": started, "args": vars(args), "server_cpu": cpu, "engine": engine,
                                    "lines": lines, "cpu_ms_median_ratio": None if not cpu else _ratio(
                                        statistics.median(cpu["httpx"]["rounds"]),
                                        statistics.median(cpu["litellm"]["rounds"]))}, indent=1))
    print(f"wrote {OUT_JSON}")
    return 0


def report_engine_only(engine: dict[str, Any]) -> list[str]:
    fake: dict[str, Any] = {c: {"cpu_s_per_run": {"median": 0.0, "n": 0}, "wall_s_per_run": {"median": 0.0}}
                            for c in CLIENTS}
    return report(fake, engine)[1:]


if __name__ == "__main__":
    raise SystemExit(main())
