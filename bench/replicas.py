"""Issue 17: several replicas on one PostgreSQL behind a load balancer. Runs per second, latency and CPU per run
through nginx's round robin (deploy/nginx.conf, its upstreams and listen port rewritten as
tests/integration/test_replicas.py does) with one and with two `mcp-conductor serve --transport http --stateless`
replicas on one PostgreSQL database (tests/servers/postgres_server.py's throwaway cluster).

    python -m bench.replicas            # prints a markdown table, writes bench/out/replicas.json
    python -m bench.replicas --quick    # fewer runs, one round (a smoke test of the harness)
    python -m bench.replicas client --root URL -c N -n RUNS   # the load client alone (run by the above)

Processes: PostgreSQL (postmaster and its backends), two replicas, two nginx instances (one with one upstream,
one with both: the 1- and 2-replica levels interleave on the same replicas and database, so that drift in the
shared machine's load hits both alike), the scripted OpenAI-compatible workers (50 ms a call) and the load client.
A /v1 run is one non-streamed POST /v1/chat/completions with model "fast" (a worker id: a 1-step run); an MCP run
is bench.load_client's plan_workflow + resume of figure 4's 3-step chain over stateless MCP, so plan and resume
usually reach different replicas. CPU from /proc: a process tree's user + system time, with the children it has
reaped (a PostgreSQL backend that exited still counts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import psycopg

from tests.servers.postgres_server import PostgresServer

from .load import CONSOLE_SCRIPT, WORKER_MS, WORKER_PATH_S, free_port, run_client
from .load_client import TASK, Tally, drive
from .openai_client import v1_run, v1_session
from .procfs import task_cpu_seconds
from .profiles import OUT_DIR
from .report import _cpu_model
from .scripted import POOL, ROOT, ScriptedProcess, bench_env, write_manifest
from .stats import summarise

OUT_JSON = OUT_DIR / "replicas.json"
V1_CLIENT = ("bench.replicas", "client", "--root")
MCP_CLIENT = ("bench.load_client", "--url")
ONE_STEP_S = WORKER_MS / 1000  # a 1-step run's own worker time
_TICK = os.sysconf("SC_CLK_TCK")


# -- the load client (its own process) ---------------------------------------------------------------------------
async def _one_run(http: httpx.AsyncClient, tally: Tally, n: int) -> None:
    await v1_run(http, tally, {"model": "fast", "messages": [{"role": "user", "content": f"{TASK} (run {n})"}]})


async def client_load(root: str, concurrency: int, runs: int, timeout_s: float) -> dict[str, Any]:
    """N concurrent clients, one HTTP connection each (opened, and one run made on it, before the clock), sharing
    a quota of runs."""
    return await drive(partial(v1_session, root), _one_run, concurrency, runs, timeout_s)


# -- CPU and load from /proc -------------------------------------------------------------------------------------
def tree_cpu(pid: int, precise: bool = False) -> float:
    """CPU seconds of a process, the children it has reaped, and its live descendants (user + system).

    precise: the live processes' time from schedstat (nanoseconds; a thread that ended takes its time with it, so
    only for trees of single-threaded processes: PostgreSQL, nginx), the reaped children's from /proc/PID/stat."""
    root = psutil.Process(pid)
    t = root.cpu_times()
    reaped = t.children_user + t.children_system
    if precise:
        return reaped + sum(task_cpu_seconds(p.pid) for p in [root, *root.children(recursive=True)])
    total = t.user + t.system + reaped
    for child in root.children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.NoSuchProcess:  # exited between the listing and the read: counted in a parent's reaped time
            continue
        total += c.user + c.system
    return float(total)


def group_cpu(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each group of process trees; PostgreSQL's and nginx's to the nanosecond."""
    return {k: sum(tree_cpu(p, precise=k.startswith(("postgres", "nginx"))) for p in pids)
            for k, pids in groups.items()}


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (everything but idle and iowait), all cores together."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# -- the processes -------------------------------------------------------------------------------------------------
def _wait_http(proc: subprocess.Popen[bytes], url: str, log: Path, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=10)  # any answer means it serves
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def replica(env: dict[str, str], host_id: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`mcp-conductor serve --transport http --stateless` on a free port; its stderr in bench/out."""
    port = free_port()
    log = OUT_DIR / f"replicas_{host_id}_stderr.txt"
    with log.open("wb") as err:
        proc = subprocess.Popen([str(CONSOLE_SCRIPT), "serve", "--transport", "http", "--stateless", "--host",
                                 "127.0.0.1", "--port", str(port)], env={**env, "CONDUCTOR_HOST_ID": host_id},
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield proc, port
    finally:
        _stop(proc)


@contextmanager
def nginx(folder: Path, upstream_ports: list[int]) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """deploy/nginx.conf with the upstreams and the listen port replaced (as test_replicas.start_nginx does); its
    access log, which names each request's upstream, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    port = free_port()
    line = re.search(r"^( *)server replica1:8765(.*)$", conf, re.M)
    if line is None:
        raise RuntimeError("deploy/nginx.conf: no `server replica1:8765` upstream line")
    servers = "\n".join(f"{line[1]}server 127.0.0.1:{p}{line[2]}" for p in upstream_ports)
    conf = re.sub(r"(^ *server replica\d:8765.*\n)+", servers + "\n", conf, flags=re.M)
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    log = folder / "access.log"
    conf = conf.replace("access_log /dev/stdout", f"access_log {log}").replace(
        "error_log /dev/stderr", f"error_log {folder / 'error.log'}")
    (folder / "nginx.conf").write_text(conf)
    binary = next((p for p in ("/usr/sbin/nginx", "/usr/bin/nginx") if os.path.exists(p)), "nginx")
    proc = subprocess.Popen([binary, "-p", str(folder), "-c", str(folder / "nginx.conf"),
                             "-g", f"daemon off; pid {folder / 'nginx.pid'};"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(proc, f"http://127.0.0.1:{port}/healthz", folder / "error.log", "nginx", 20)
        yield proc, port, log
    finally:
        _stop(proc, signal.SIGQUIT)  # nginx's graceful stop


def postmaster_pid(pg: PostgresServer) -> int:
    return int((pg.data / "postmaster.pid").read_text().split()[0])


DB_COUNTERS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated",
               "tup_deleted", "blks_hit", "blks_read")


def db_counters(url: str) -> dict[str, int]:
    """pg_stat_database's counters for the benchmark's database (flushed by backends within ~10 s)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(f"SELECT {', '.join(DB_COUNTERS)} FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
    assert row is not None
    return dict(zip(DB_COUNTERS, (int(x) for x in row), strict=True))


TABLE_COUNTERS = ("seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "n_tup_ins", "n_tup_upd")


def table_counters(url: str) -> dict[str, dict[str, int]]:
    """pg_stat_user_tables: how each table was read and written (a sequential scan per run grows with the table)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(f"SELECT relname, {', '.join(f'COALESCE({c}, 0)' for c in TABLE_COUNTERS)} "
                            "FROM pg_stat_user_tables").fetchall()
    return {str(r[0]): dict(zip(TABLE_COUNTERS, (int(x) for x in r[1:]), strict=True)) for r in rows}


SETTLE_S = 11.0  # a backend flushes its statistics when idle within PGSTAT_IDLE_INTERVAL (10 s)


def db_work_per_run(url: str, root: str, runs: int, timeout_s: float) -> dict[str, dict[str, Any]]:
    """pg_stat_database's counters per run (and pg_stat_user_tables' per table), each kind of run alone (c=10
    through both replicas) between two reads taken once the backends have flushed their statistics; the clients'
    runs before the clock are runs of the same kind, counted."""
    time.sleep(SETTLE_S)
    base, base_t = db_counters(url), table_counters(url)
    out: dict[str, dict[str, Any]] = {}
    for transport, client, target in (("v1", V1_CLIENT, root), ("mcp", MCP_CLIENT, root + "/mcp")):
        out_c = run_client(target, 10, runs, timeout_s, None, client)
        done = max(out_c["completed"] + out_c.get("warm_up_runs", 0), 1)
        time.sleep(SETTLE_S)
        now, now_t = db_counters(url), table_counters(url)
        tables = {name: {k: (v[k] - base_t.get(name, dict.fromkeys(TABLE_COUNTERS, 0))[k]) / done
                         for k in TABLE_COUNTERS} for name, v in now_t.items()}
        out[transport] = {"runs": done, **{k: (now[k] - base[k]) / done for k in DB_COUNTERS},
                          "tables": {n: t for n, t in tables.items() if any(t.values())}}
        base, base_t = now, now_t
    return out


def upstream_split(log: Path, offset: int) -> dict[str, int]:
    """Requests per upstream in the access log past `offset` (run requests only: /v1/chat and /mcp)."""
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    return dict(Counter(line.rsplit("upstream=", 1)[1] for line in lines
                        if ("/v1/chat" in line or "/mcp" in line) and "upstream=" in line))


# -- a level -------------------------------------------------------------------------------------------------------
def level(n_replicas: int, transport: str, url: str, concurrency: int, runs: int, timeout_s: float,
          groups: dict[str, list[int]], log: Path, round_no: int) -> dict[str, Any]:
    """One load level: the client's figures, and CPU seconds of each process group over the client's window."""
    marks: dict[str, Any] = {}
    load_before = loadavg()

    def on_start() -> None:
        marks.update(cpu=group_cpu(groups), busy=machine_busy_s(),
                     t=time.perf_counter(), log=log.stat().st_size)

    client = V1_CLIENT if transport == "v1" else MCP_CLIENT
    out = run_client(url, concurrency, runs, timeout_s, on_start, client)
    span = max(time.perf_counter() - marks["t"], 1e-9)
    after = group_cpu(groups)
    cpu = {k: after[k] - marks["cpu"][k] for k in groups}
    busy = machine_busy_s() - marks["busy"]
    done = max(out["completed"], 1)
    lat = out.pop("latency_s")
    out.pop("plan_s")
    out.pop("resume_s")
    own_path = ONE_STEP_S if transport == "v1" else WORKER_PATH_S
    used = [f"replica-{i}" for i in range(n_replicas)]
    ours = sum(cpu.values()) + out["client_cpu_s"]
    out.update(
        replicas=n_replicas, transport=transport, round=round_no, span_s=span,
        throughput_runs_s=out["completed"] / out["wall_s"] if out["wall_s"] > 0 else 0.0,
        latency_s=summarise(lat).as_dict() if lat else None,
        beyond_workers_s=summarise([x - own_path for x in lat]).as_dict() if lat else None,
        cpu_s={**cpu, "client": out["client_cpu_s"]},
        cpu_cores={**{k: v / span for k, v in cpu.items()}, "client": out["client_cpu_s"] / span},
        # per completed run: the replicas behind this balancer, the database, the balancer
        replica_cpu_ms_per_run=sum(cpu[k] for k in used) * 1e3 / done,
        db_cpu_ms_per_run=cpu["postgres"] * 1e3 / done,
        nginx_cpu_ms_per_run=cpu[f"nginx-{n_replicas}"] * 1e3 / done,
        workers_cpu_ms_per_run=cpu["workers"] * 1e3 / done,
        client_cpu_ms_per_run=out["client_cpu_s"] * 1e3 / done,
        machine_busy_cores=busy / span, others_cores=max(busy - ours, 0.0) / span,
        upstreams=upstream_split(log, marks["log"]), loadavg_before=load_before, loadavg_after=loadavg(),
    )
    return out


def idle(groups: dict[str, list[int]], seconds: float) -> dict[str, float]:
    """CPU cores each group uses with no load at all (heartbeats, the replicas' looks for orphaned runs)."""
    before = group_cpu(groups)
    t = time.perf_counter()
    time.sleep(seconds)
    span = time.perf_counter() - t
    after = group_cpu(groups)
    return {k: (after[k] - before[k]) / span for k in groups}


# -- the whole benchmark -------------------------------------------------------------------------------------------
def measure(concurrencies: list[int], runs_min: int, runs_per_c: int, rounds: int, mcp_c: int, mcp_runs: int,
            db_runs: int, timeout_s: float, progress: Callable[[str], None]) -> dict[str, Any]:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_start = loadavg()
    levels: list[dict[str, Any]] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-replicas-")))
        workers = stack.enter_context(ScriptedProcess(latency_ms=WORKER_MS))
        pg = stack.enter_context(PostgresServer())
        db = pg.new_database()
        manifest = write_manifest(tmp / "workers.yaml", workers.base_url, ids=("fast", *POOL), max_concurrency=1024)
        env = bench_env()
        env.update(CONDUCTOR_DB=db, CONDUCTOR_WORKERS=str(manifest))
        # the first replica migrates the database alone; then the second starts
        r0, p0 = stack.enter_context(replica(env, "replica-0"))
        _wait_http(r0, f"http://127.0.0.1:{p0}/healthz", OUT_DIR / "replicas_replica-0_stderr.txt", "replica-0")
        r1, p1 = stack.enter_context(replica(env, "replica-1"))
        _wait_http(r1, f"http://127.0.0.1:{p1}/healthz", OUT_DIR / "replicas_replica-1_stderr.txt", "replica-1")
        n1, port1, log1 = stack.enter_context(nginx(tmp / "nginx-1", [p0]))
        n2, port2, log2 = stack.enter_context(nginx(tmp / "nginx-2", [p0, p1]))
        roots = {1: (f"http://127.0.0.1:{port1}", log1), 2: (f"http://127.0.0.1:{port2}", log2)}
        groups = {"replica-0": [r0.pid], "replica-1": [r1.pid], "postgres": [postmaster_pid(pg)],
                  "nginx-1": [n1.pid], "nginx-2": [n2.pid], "workers": [workers.pid]}
        progress(f"up: postgres {pg.port}, replicas {p0} {p1}, nginx {port1} (1 upstream) {port2} (2 upstreams)")
        for n in (1, 2):  # warm-up: imports, litellm's client, both replicas' first runs, the database's caches
            run_client(roots[n][0], 4, 16, timeout_s, None, V1_CLIENT)
            run_client(roots[n][0] + "/mcp", 2, 4, timeout_s, None, MCP_CLIENT)
        idle_cores = idle(groups, 5.0)
        progress("idle cores: " + ", ".join(f"{k} {v:.3f}" for k, v in idle_cores.items()))
        for round_no in range(1, rounds + 1):
            for n in (1, 2) if round_no % 2 else (2, 1):
                root, log = roots[n]
                for c in concurrencies:
                    lv = level(n, "v1", root, c, max(runs_min, runs_per_c * c), timeout_s, groups, log, round_no)
                    levels.append(lv)
                    progress(_line(lv))
                lv = level(n, "mcp", root + "/mcp", mcp_c, mcp_runs, timeout_s, groups, log, round_no)
                levels.append(lv)
                progress(_line(lv))
        db_work = db_work_per_run(db, roots[2][0], db_runs, timeout_s)
        progress("database work per run: " + json.dumps(db_work))
        rows = {t: _count(db, t) for t in ("runs", "steps", "attempts")}
        version = _pg_version(db)
    return {
        "measured_at": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)), "duration_s": time.time() - started,
        "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "postgres": version,
        "postgres_settings": "fsync=off, synchronous_commit=off, full_page_writes=off (the test cluster's)",
        "loadavg_start": load_start, "loadavg_end": loadavg(), "worker_ms": WORKER_MS,
        "idle_cores": idle_cores, "levels": levels,
        "db_work_per_run": db_work,
        "table_rows": rows,
        "summary": summary(levels, idle_cores, concurrencies),
    }


def _count(url: str, table: str) -> int | None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


def _pg_version(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def _pooled(levels: list[dict[str, Any]]) -> dict[str, float]:
    """CPU per run and throughput over every round of one (replicas, transport, concurrency)."""
    done = sum(lv["completed"] for lv in levels)
    n = levels[0]["replicas"]
    used = [f"replica-{i}" for i in range(n)]
    rep = sum(lv["cpu_s"][k] for lv in levels for k in used)
    return {"completed": done,
            "runs_s": sum(lv["throughput_runs_s"] for lv in levels) / len(levels),
            "replica_ms": rep * 1e3 / max(done, 1),
            "db_ms": sum(lv["cpu_s"]["postgres"] for lv in levels) * 1e3 / max(done, 1),
            "nginx_ms": sum(lv["cpu_s"][f"nginx-{n}"] for lv in levels) * 1e3 / max(done, 1),
            "workers_ms": sum(lv["cpu_s"]["workers"] for lv in levels) * 1e3 / max(done, 1),
            "client_ms": sum(lv["cpu_s"]["client"] for lv in levels) * 1e3 / max(done, 1),
            "replica_cores": sum(lv["cpu_cores"][k] for lv in levels for k in used) / len(levels),
            "db_cores": sum(lv["cpu_cores"]["postgres"] for lv in levels) / len(levels),
            "p99_ms": max(lv["latency_s"]["p99"] for lv in levels if lv["latency_s"]) * 1e3}


def summary(levels: list[dict[str, Any]], idle_cores: dict[str, float], concurrencies: list[int]) -> dict[str, Any]:
    keys = sorted({(lv["replicas"], lv["transport"], lv["concurrency"]) for lv in levels})
    pooled = {f"{n}x{t}@{c}": _pooled([lv for lv in levels if (lv["replicas"], lv["transport"],
                                                                 lv["concurrency"]) == (n, t, c)])
              for n, t, c in keys}
    top = concurrencies[-1]
    one, two = pooled.get(f"1xv1@{top}"), pooled.get(f"2xv1@{top}")
    out: dict[str, Any] = {"pooled": pooled}
    if one and two:
        # the costs of a run at the top level, both layouts together: the basis of the prediction
        both = [lv for lv in levels if lv["transport"] == "v1" and lv["concurrency"] == top]
        done = sum(lv["completed"] for lv in both)
        rep = sum(lv["cpu_s"][f"replica-{i}"] for lv in both for i in range(lv["replicas"])) * 1e3 / done
        db = sum(lv["cpu_s"]["postgres"] for lv in both) * 1e3 / done
        ngx = sum(lv["cpu_s"][f"nginx-{lv['replicas']}"] for lv in both) * 1e3 / done
        per_replica = 1e3 / rep  # one replica is one event loop under the GIL: about one core at most
        # the store is called on the event loop's thread over one pooled connection: the loop waits while the
        # database works for it, so a replica cannot exceed 1 / (its CPU + the database's) per run either
        serial = 1e3 / (rep + db)
        out["per_core"] = {"replica_ms_per_run": rep, "db_ms_per_run": db, "nginx_ms_per_run": ngx,
                           "runs_s_per_replica_core": per_replica, "runs_s_per_db_core": 1e3 / db,
                           "runs_s_per_nginx_core": 1e3 / ngx, "runs_s_per_replica_serialized": serial,
                           "db_idle_ms_per_s_per_replica": idle_cores["postgres"] * 1e3 / 2,
                           "replica_idle_cores": (idle_cores["replica-0"] + idle_cores["replica-1"]) / 2}
        out["prediction"] = [
            {"replicas": r, "runs_s": r * per_replica, "runs_s_serialized": r * serial,
             "db_cores": r * per_replica * db / 1e3, "nginx_cores": r * per_replica * ngx / 1e3,
             "pool_connections": 8 * r}
            for r in (1, 2, 4, 8, 16)]
    return out


def _ms(s: dict[str, Any] | None, key: str = "median") -> str:
    return "n/a" if s is None else f"{s[key] * 1e3:.0f}"


def _line(lv: dict[str, Any]) -> str:
    return (f"{lv['replicas']} replica(s) {lv['transport']} c={lv['concurrency']} round {lv['round']}: "
            f"{lv['throughput_runs_s']:.1f} runs/s, p50 {_ms(lv['latency_s'])} ms p99 {_ms(lv['latency_s'], 'p99')} "
            f"ms, {lv['completed']}/{lv['runs_asked']} ok, errors {lv['errors'] or 0}; ms/run replicas "
            f"{lv['replica_cpu_ms_per_run']:.1f} db {lv['db_cpu_ms_per_run']:.2f} nginx "
            f"{lv['nginx_cpu_ms_per_run']:.2f}; machine {lv['machine_busy_cores']:.2f} cores busy (others "
            f"{lv['others_cores']:.2f}); upstreams {lv['upstreams']}; load {lv['loadavg_before'][0]:.1f}")


def table(result: dict[str, Any]) -> str:
    head = ("| replicas | runs | c | round | runs/s | latency p50 / p99 (ms) | beyond workers p99 (ms) | ok | "
            "replica CPU ms/run | DB CPU ms/run | nginx CPU ms/run | cores: replicas / DB / nginx / workers / "
            "client / others | split over replicas | load avg |")
    lines = [head, "| " + " | ".join(["---"] * 14) + " |"]
    for lv in sorted(result["levels"], key=lambda x: (x["transport"] != "v1", x["concurrency"], x["replicas"],
                                                       x["round"])):
        cores = lv["cpu_cores"]
        rep = sum(cores[f"replica-{i}"] for i in range(lv["replicas"]))
        split = " / ".join(str(v) for _, v in sorted(lv["upstreams"].items()))
        kind = "/v1, 1 step" if lv["transport"] == "v1" else "MCP, 3 steps"
        ngx = cores[f"nginx-{lv['replicas']}"]
        errors = sum(lv["errors"].values())
        lines.append(
            f"| {lv['replicas']} | {kind} | {lv['concurrency']} | {lv['round']} | {lv['throughput_runs_s']:.1f} | "
            f"{_ms(lv['latency_s'])} / {_ms(lv['latency_s'], 'p99')} | {_ms(lv['beyond_workers_s'], 'p99')} | "
            f"{lv['completed']}/{lv['runs_asked']}{f' ({errors} errors)' if errors else ''} | "
            f"{lv['replica_cpu_ms_per_run']:.1f} | {lv['db_cpu_ms_per_run']:.2f} | {lv['nginx_cpu_ms_per_run']:.2f} | "
            f"{rep:.2f} / {cores['postgres']:.2f} / {ngx:.2f} / {cores['workers']:.2f} / "
            f"{cores['client']:.2f} / {lv['others_cores']:.2f} | {split} | "
            f"{lv['loadavg_before'][0]:.1f} → {lv['loadavg_after'][0]:.1f} |")
    return "\n".join(lines)


def per_core_text(result: dict[str, Any]) -> str:
    s = result["summary"]
    if "per_core" not in s:
        return ""
    pc = s["per_core"]
    lines = [f"Per core (the top /v1 level, both layouts pooled): a replica spends {pc['replica_ms_per_run']:.1f} ms "
             f"of CPU a run ({pc['runs_s_per_replica_core']:.0f} runs/s per replica core), PostgreSQL "
             f"{pc['db_ms_per_run']:.2f} ms ({pc['runs_s_per_db_core']:.0f} runs/s per database core), nginx "
             f"{pc['nginx_ms_per_run']:.2f} ms ({pc['runs_s_per_nginx_core']:.0f} runs/s per core). Idle, a replica "
             f"uses {pc['replica_idle_cores']:.3f} cores and costs the database "
             f"{pc['db_idle_ms_per_s_per_replica']:.2f} ms of CPU a second.",
             "", "Database work per run (pg_stat_database, each kind of run alone, c=10 over both replicas): "
             + "; ".join(
                 f"{'/v1 1-step' if t == 'v1' else 'MCP 3-step'}: {w['xact_commit']:.1f} transactions, "
                 f"{w['tup_inserted']:.1f} rows inserted, {w['tup_updated']:.1f} updated, {w['tup_fetched']:.0f} "
                 f"fetched, {w['blks_hit']:.0f} buffer hits" for t, w in result["db_work_per_run"].items()) + ".",
             "", "| replicas (one core each) | predicted runs/s: replica CPU only / loop waits on the database | "
             "database cores | nginx cores | pool connections at most |",
             "| --- | --- | --- | --- | --- |"]
    for p in s["prediction"]:
        lines.append(f"| {p['replicas']} | {p['runs_s']:.0f} / {p['runs_s_serialized']:.0f} | {p['db_cores']:.2f} | "
                     f"{p['nginx_cores']:.2f} | {p['pool_connections']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["bench", "client"], default="bench")
    parser.add_argument("--root", help="client: the balancer's root URL")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=60.0, help="stop starting runs after this many seconds")
    parser.add_argument("--quick", action="store_true", help="fewer runs, one round")
    parser.add_argument("--report", action="store_true",
                        help="measure nothing: print the table again from bench/out/replicas.json")
    args = parser.parse_args()
    if args.mode == "client":
        if not args.root:
            parser.error("client needs --root")
        result = anyio.run(client_load, args.root, args.concurrency, args.runs, args.timeout, backend="asyncio")
        sys.stdout.write(json.dumps(result) + "\n")
        return 0

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if args.report:
        result = json.loads(OUT_JSON.read_text())
        result["summary"] = summary(result["levels"], result["idle_cores"], [1, 10, 50])
    elif args.quick:
        result = measure([1, 10, 50], 40, 2, 1, 10, 40, 40, args.timeout, progress)
    else:
        result = measure([1, 10, 50], 200, 8, 3, 10, 150, 100, args.timeout, progress)
    OUT_JSON.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print()
    print(per_core_text(result))
    print(f"\nwrote {OUT_JSON.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
