"""The RunManager's one heartbeat loop (runs/heartbeats.py), on a real SQLite file, against the scripted worker
server over HTTP: it keeps a long step's lease fresh as each run's own heartbeat task did, lets go of a run as it
ends, and a renewal that finds the run taken over stops that run at once, mid-call, writing nothing, while the
other runs it keeps go on."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from conductor_mcp.errors import LeaseLost
from conductor_mcp.models import RunStatus, StepStatus
from conductor_mcp.runs.run_manager import RunManager

from ..servers.openai_server import ScriptedServer
from .mcp_helpers import write_manifest

pytestmark = pytest.mark.anyio
SLOW_S = 2.4  # four leases of 0.6 s: only renewals keep the run owned


def one_step(worker: str, instruction: str) -> dict[str, object]:
    return {"steps": [{"worker": worker, "instruction": instruction, "access": "none"}]}


def take_over(db: Path, run_id: str) -> None:
    """What another host's claim writes: a new owner and the next lease (through sqlite3, as that host would)."""
    with sqlite3.connect(db) as con:
        con.execute("UPDATE runs SET owner='host-b:1:1', lease=lease+1, heartbeat_at=? WHERE id=?",
                    (time.time(), run_id))


def stored(db: Path, run_id: str) -> tuple[list[tuple[object, ...]], ...]:
    """The run's rows as stored: runs, steps and attempts, every column."""
    with sqlite3.connect(db) as con:
        return tuple(con.execute(f"SELECT * FROM {table} WHERE {key}=? ORDER BY 1", (run_id,)).fetchall()
                     for table, key in (("runs", "id"), ("steps", "run_id"), ("attempts", "run_id")))


async def test_one_loop_renews_a_long_steps_lease_and_lets_go_when_the_run_ends(
        tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDUCTOR_STALE_AFTER_S", "0.6")  # a heartbeat every 0.1 s
    server.set_latency(model_latency={"scripted-slow": SLOW_S})
    db = tmp_path / "traces.db"
    runs = RunManager(write_manifest(tmp_path, server.base_url), db)
    beats: list[float] = []
    async with runs.running():
        handle = await runs.solve("a long step", workflow=one_step("slow", "think"))
        while not handle.done.is_set():
            await anyio.sleep(0.15)
            if not handle.planning:
                assert handle.run_id not in runs.engine.store.orphaned_runs()
                beats.append(runs.engine.store.get_run(handle.run_id).heartbeat_at or 0.0)
        assert runs._heartbeats is not None and not runs._heartbeats._held  # the ended run is let go
        ended = runs.get(handle.run_id)
        await anyio.sleep(0.4)
        assert runs.get(handle.run_id).heartbeat_at == ended.heartbeat_at  # nothing renews it after its end
    assert ended.status == RunStatus.COMPLETED
    assert len(set(beats)) >= 10, beats  # renewed about every 0.1 s through the 2.4 s step


async def test_a_run_found_taken_over_stops_mid_call_and_writes_nothing_while_the_others_go_on(
        tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDUCTOR_STALE_AFTER_S", "0.6")
    server.set_latency(model_latency={"scripted-slow": SLOW_S, "scripted-fast": 1.0})
    db = tmp_path / "traces.db"
    runs = RunManager(write_manifest(tmp_path, server.base_url), db)
    async with runs.running():
        lost = await runs.solve("taken over", workflow=one_step("slow", "lost step"))
        kept = await runs.solve("kept", workflow=one_step("fast", "kept step"))
        while server.stats(include_calls=False)["in_flight"] < 2:  # noqa: ASYNC110  (the server is another thread)
            await anyio.sleep(0.02)
        take_over(db, lost.run_id)
        before = stored(db, lost.run_id)
        started = time.monotonic()
        await lost.done.wait()
        stopped_s = time.monotonic() - started
        await kept.done.wait()
    assert stopped_s < 0.5, stopped_s  # at the next renewal (0.1 s), not when the 2.4 s call would have ended
    assert stored(db, lost.run_id) == before  # not a column written since the takeover: no renewal, no end
    after = runs.engine.store.get_run(lost.run_id)
    assert after.owner == "host-b:1:1" and after.steps[0].status == StepStatus.RUNNING
    assert [a.status for a in after.steps[0].attempts] == ["running"]  # the new owner's to settle, not ours
    assert runs.get(kept.run_id).status == RunStatus.COMPLETED  # the loop's other run was not touched


async def test_a_lost_lease_is_raised_from_the_runs_scope(tmp_path: Path) -> None:
    """holding() cancels its block at the block's next await and raises what the renewal raised."""
    from conductor_mcp.models import PlanInfo, Workflow
    from conductor_mcp.runs.heartbeats import Heartbeats
    from conductor_mcp.store import Store

    store = Store(tmp_path / "traces.db")
    claimed = store.add_claimed_run("a task", Workflow.model_validate(one_step("w", "x")),
                                    PlanInfo(source="host", planner="host"))
    beats = Heartbeats(store)
    reached = False
    with pytest.raises(LeaseLost, match="taken over by host-b"), beats.holding(claimed.lease):
        beats.beat()  # renewed: still ours
        take_over(tmp_path / "traces.db", claimed.lease.run_id)
        beats.beat()
        await anyio.sleep(1)
        reached = True
    assert not reached and not beats._held
    store.close()
