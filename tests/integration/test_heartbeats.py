"""The RunManager's one heartbeat loop (runs/heartbeats.py), on a real SQLite file, against the scripted worker
server over HTTP: it keeps a long step's lease fresh as each run's own heartbeat task did, lets go of a run as it
ends, and a renewal that finds the run taken over stops that run at once, mid-call, writing nothing, while the
other runs it keeps go on."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from conductor_mcp.errors import LeaseLost
from conductor_mcp.models import Manifest, RunStatus, StepStatus, WorkerSpec
from conductor_mcp.planners.remote import RemotePlanner
from conductor_mcp.runs.engine import Engine
from conductor_mcp.runs.run_manager import RunManager
from conductor_mcp.store import Lease, Store
from conductor_mcp.workers.registry import build_registry

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


def recursive_engine(db: Path, server: ScriptedServer, workers: Sequence[str]) -> Engine:
    """An Engine on `db` whose conductor plans through the scripted server (`conductor-model`), with `workers`
    (`slow`, `fast`) served by it as `scripted-<id>`."""
    specs = [WorkerSpec.model_validate({"id": w, "model": f"openai/scripted-{w}", "api_base": server.base_url,
                                        "timeout_s": 10}) for w in workers]
    return Engine(build_registry(Manifest(workers=specs), "test"), Store(db),
                  planner=RemotePlanner("openai/conductor-model", api_base=server.base_url))


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
        held: list[int] = []
        while not handle.done.is_set():
            await anyio.sleep(0.15)
            if not handle.planning and not handle.done.is_set():
                assert runs._heartbeats is not None
                held.append(len(runs._heartbeats._held))  # the loop holds it: no task of its own
                beats.append(runs.engine.store.get_run(handle.run_id).heartbeat_at or 0.0)
        assert runs._heartbeats is not None and not runs._heartbeats._held  # let go as it ended
    assert runs.get(handle.run_id).status == RunStatus.COMPLETED
    assert held and set(held) == {1}, held
    assert len(set(beats)) >= 10, beats  # renewed about every 0.1 s through the 2.4 s step


async def test_a_run_found_taken_over_stops_mid_call_and_writes_nothing_while_the_others_go_on(
        tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDUCTOR_STALE_AFTER_S", "0.6")
    server.set_latency(model_latency={"scripted-slow": SLOW_S, "scripted-fast": 1.2})
    db = tmp_path / "traces.db"
    runs = RunManager(write_manifest(tmp_path, server.base_url), db)
    async with runs.running():
        lost = await runs.solve("taken over", workflow=one_step("slow", "lost step"))
        kept = await runs.solve("kept", workflow=one_step("fast", "kept step"))
        while server.stats(include_calls=False)["in_flight"] < 2:  # noqa: ASYNC110  (the server is another thread)
            await anyio.sleep(0.02)
        take_over(db, lost.run_id)
        before = stored(db, lost.run_id)
        kept_beat = runs.engine.store.get_run(kept.run_id).heartbeat_at or 0.0
        started = time.monotonic()
        await lost.done.wait()
        stopped_s = time.monotonic() - started
        await anyio.sleep(0.25)  # past the next tick: the loop goes on for the run it keeps
        assert not kept.done.is_set()
        assert (runs.engine.store.get_run(kept.run_id).heartbeat_at or 0.0) > kept_beat
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


async def test_a_lost_lease_wins_over_what_the_run_raised_at_the_same_moment(tmp_path: Path) -> None:
    """Found taken over while the run was failing (or being cancelled): LeaseLost, so that the engine writes nothing."""
    from conductor_mcp.models import PlanInfo, Workflow
    from conductor_mcp.runs.heartbeats import Heartbeats
    from conductor_mcp.store import Store

    store = Store(tmp_path / "traces.db")
    claimed = store.add_claimed_run("a task", Workflow.model_validate(one_step("w", "x")),
                                    PlanInfo(source="host", planner="host"))
    beats = Heartbeats(store)
    take_over(tmp_path / "traces.db", claimed.lease.run_id)
    with pytest.raises(LeaseLost, match="taken over by host-b"), beats.holding(claimed.lease):
        beats.beat()
        raise RuntimeError("a worker's answer could not be parsed")
    # the client's cancellation at the same moment
    with anyio.CancelScope() as outer, pytest.raises(LeaseLost), beats.holding(claimed.lease):
        beats.beat()
        outer.cancel()
        await anyio.sleep(1)
    store.close()


async def test_the_stores_failures_are_tried_again_while_the_lease_holds(
        tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal the store fails does not stop the run while its lease still holds; one that keeps failing until the
    lease would lapse stops it with the store's error, as a failed write would."""
    from conductor_mcp.errors import StoreError

    monkeypatch.setenv("CONDUCTOR_STALE_AFTER_S", "0.6")
    server.set_latency(model_latency={"scripted-slow": 1.5})
    runs = RunManager(write_manifest(tmp_path, server.base_url), tmp_path / "traces.db")
    store = runs.engine.store
    real_renew = store.renew
    failing = {"until": 0.0}

    def renew(leases: Sequence[Lease]) -> dict[Lease, LeaseLost]:  # the real one, refused while `until` lasts
        if time.monotonic() < failing["until"]:
            raise StoreError("trace store: database is locked")
        return real_renew(leases)

    monkeypatch.setattr(store, "renew", renew)
    async with runs.running():
        failing["until"] = time.monotonic() + 0.3  # three ticks refused, within the 0.6 s lease
        survived = await runs.solve("a blip", workflow=one_step("slow", "blip"))
        await survived.done.wait()
        failing["until"] = time.monotonic() + 60  # refused for good
        stopped = await runs.solve("a store gone", workflow=one_step("slow", "gone"))
        await stopped.done.wait()
    assert runs.get(survived.run_id).status == RunStatus.COMPLETED
    failed = runs.get(stopped.run_id)
    assert failed.status == RunStatus.FAILED and "database is locked" in (failed.error or ""), failed.error
    assert failed.steps[0].status != StepStatus.COMPLETED  # stopped mid-call, before the 1.5 s step ended


@pytest.mark.parametrize("where", ["through the RunManager", "alone"])
async def test_a_step_run_by_hand_keeps_its_lease_through_a_long_call(
        tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """run_step holds the run's lease for the step: without renewals another replica would take a step longer than
    the lease for orphaned, and buy it a second time."""
    monkeypatch.setenv("CONDUCTOR_STALE_AFTER_S", "0.6")
    server.set_latency(model_latency={"scripted-slow": SLOW_S})
    db = tmp_path / "traces.db"
    runs = RunManager(write_manifest(tmp_path, server.base_url), db)
    other = Store(db)  # another replica's view
    planned = await runs.engine.plan("by hand", workflow=one_step("slow", "think"))
    beats: list[float] = []
    done = anyio.Event()

    async def step() -> None:
        if where == "alone":
            await runs.engine.run_step(planned.id, 0)
        else:
            await runs.run_step(planned.id, 0)
        done.set()

    async with runs.running(), anyio.create_task_group() as tg:
        tg.start_soon(step)
        while not done.is_set():
            await anyio.sleep(0.15)
            if not done.is_set():
                assert other.orphaned_runs() == []
                beats.append(other.get_run(planned.id).heartbeat_at or 0.0)
    assert other.get_run(planned.id).status == RunStatus.COMPLETED
    assert len(set(beats)) >= 10, beats  # renewed about every 0.1 s through the 2.4 s step
    other.close()


async def test_a_step_run_by_hand_that_fails_leaves_its_run_failed_and_unowned(
        tmp_path: Path, server: ScriptedServer) -> None:
    """Its heartbeat loop's task group does not hide the step's error from run_step, which settles it by its type:
    a run left owned would be adopted once its lease lapsed, and run to its end."""
    server.set_faults(fail_models={"scripted-slow": "401"})
    runs = RunManager(write_manifest(tmp_path, server.base_url), tmp_path / "traces.db")
    planned = await runs.engine.plan("by hand", workflow=one_step("slow", "think"))
    record, run = await runs.engine.run_step(planned.id, 0)  # a worker's failure is an answer, not an error
    assert record.status == StepStatus.FAILED
    assert run.status == RunStatus.FAILED and run.owner is None, run
    assert (run.error or "").startswith("step 0 failed:"), run.error
    assert runs.engine.store.get_run(planned.id) == run


@pytest.mark.parametrize("how", ["served", "driven"])
async def test_a_child_run_is_held_in_its_parents_loop_and_handed_back_when_the_parent_is_taken_over(
        tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A conductor step's child run renews in the loop that holds its parent: the server's (`served`), or the loop of
    the parent's own where an Engine runs alone, as the CLI's `drive` does. When the parent is taken over, the child
    stops at once too, and is left for the parent's new owner: running, owned by no one, claimable at once (not
    `cancelled by the client`, as a child with a loop of its own would be), its parent's rows untouched."""
    monkeypatch.setenv("CONDUCTOR_STALE_AFTER_S", "0.6")
    server.set_latency(model_latency={"scripted-slow": SLOW_S})
    server.script(model="conductor-model", contains="Your subtask:\nHard part",
                  reply='{"steps": [{"worker": "slow", "instruction": "Child step", "access": "none"}]}')
    db = tmp_path / "traces.db"
    engine = recursive_engine(db, server, ("slow",))
    runs = RunManager(engine=engine)
    workflow = {"steps": [{"worker": "conductor", "instruction": "Hard part"}]}
    raised: list[BaseException] = []
    async with runs.running(), anyio.create_task_group() as tg:
        if how == "served":
            handle = await runs.solve("recursive", workflow=workflow)
            parent_id, ended = handle.run_id, handle.done
        else:
            parent_id, ended = (await engine.plan("recursive", workflow=workflow)).id, anyio.Event()

            async def drive() -> None:
                try:
                    await runs.drive(parent_id)
                except LeaseLost as exc:
                    raised.append(exc)
                ended.set()

            tg.start_soon(drive)
        while not engine.store.children(parent_id):  # noqa: ASYNC110  (planned: its planning call is over)
            await anyio.sleep(0.02)
        (child_id,) = engine.store.children(parent_id)
        while server.stats(include_calls=False)["in_flight"] < 1:  # noqa: ASYNC110  (the child's call)
            await anyio.sleep(0.02)
        if how == "served":
            assert runs._heartbeats is not None and len(runs._heartbeats._held) == 2  # parent and child, one loop
        take_over(db, parent_id)
        before = stored(db, parent_id)
        started = time.monotonic()
        await ended.wait()
        stopped_s = time.monotonic() - started
    assert stopped_s < 0.5, stopped_s  # at the next renewal, not when the child's 2.4 s call would have ended
    assert how == "served" or "taken over by host-b" in str(raised[0])  # drive says the parent's own loss
    assert stored(db, parent_id) == before  # the parent is the new owner's: nothing written to it
    child = engine.store.get_run(child_id)
    assert child.status == RunStatus.INTERRUPTED and child.owner is None, child  # running, owned by no one
    assert (child.error or "").startswith(f"handed back: run {parent_id}: taken over by host-b"), child.error
    assert [a.status for a in child.steps[0].attempts] == ["cancelled"]  # its call in flight, settled
    _, claimed = Store(db).claim(child_id)  # the new owner claims it at once
    assert claimed.steps[0].status == StepStatus.PENDING


@pytest.mark.parametrize("depth", [1, 2])
async def test_a_child_run_is_handed_back_when_a_write_of_its_parent_finds_the_parent_taken_over(
        tmp_path: Path, server: ScriptedServer, depth: int) -> None:
    """No renewal comes in time here (a lease of 30 s): the parent's own write, a sibling step's end, finds it taken
    over, and the parent's task group cancels the child run beside it (and, at depth 2, the child's own child). Each
    is handed back all the same, not settled as `cancelled by the client`, and nothing of the parent is written."""
    server.set_latency(model_latency={"scripted-slow": SLOW_S, "scripted-fast": 0.6})
    child_step = ('{"worker": "slow", "instruction": "Child step", "access": "none"}' if depth == 1 else
                  '{"worker": "conductor", "instruction": "Deeper part", "access": "none"}')
    server.script(model="conductor-model", contains="Your subtask:\nHard part", reply=f'{{"steps": [{child_step}]}}')
    server.script(model="conductor-model", contains="Your subtask:\nDeeper part",
                  reply='{"steps": [{"worker": "slow", "instruction": "Grandchild step", "access": "none"}]}')
    db = tmp_path / "traces.db"
    engine = recursive_engine(db, server, ("slow", "fast"))
    runs = RunManager(engine=engine)
    workflow = {"steps": [{"worker": "conductor", "instruction": "Hard part", "access": "none"},
                          {"worker": "fast", "instruction": "Easy part", "access": "none"},
                          {"worker": "fast", "instruction": "Both", "access": "all"}]}
    async with runs.running():
        handle = await runs.solve("recursive", workflow=workflow)
        chain = [handle.run_id]  # the root, its child, the child's child
        while len(chain) <= depth:
            children = engine.store.children(chain[-1])
            if children:  # planned: its planning call is over
                chain.append(children[0])
            await anyio.sleep(0.02)
        while server.stats(include_calls=False)["in_flight"] < 2:  # noqa: ASYNC110  (the deepest call and the sibling's)
            await anyio.sleep(0.02)
        take_over(db, handle.run_id)
        before = stored(db, handle.run_id)
        await handle.done.wait()
    assert stored(db, handle.run_id) == before  # the sibling's end, refused by the fence, and nothing after it
    for run_id in chain[1:]:
        run = engine.store.get_run(run_id)
        assert run.status == RunStatus.INTERRUPTED and run.owner is None, run
        assert (run.error or "").startswith(f"handed back: run {handle.run_id}: taken over by host-b"), run.error
        assert [a.status for a in run.steps[0].attempts] == ["cancelled"]


async def test_a_run_that_ends_cancels_its_child_run_left_handed_back(
        tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child run handed back waits for its parent's owner to take it back at its step. Here the parent, driven by
    hand, ends (failed, at another step) without taking it back: the child is cancelled with it, its attempt kept,
    not left `interrupted` for good; and the step run again takes the same child back."""
    monkeypatch.setenv("CONDUCTOR_STALE_AFTER_S", "0.6")
    server.set_latency(model_latency={"scripted-slow": SLOW_S})
    server.set_faults(fail_models={"scripted-fast": "401"})
    server.script(model="conductor-model", contains="Your subtask:\nHard part",
                  reply='{"steps": [{"worker": "slow", "instruction": "Child step", "access": "none"}]}')
    db = tmp_path / "traces.db"
    engine = recursive_engine(db, server, ("slow", "fast"))
    parent = await engine.plan("recursive", workflow={"steps": [
        {"worker": "conductor", "instruction": "Hard part", "access": "none"},
        {"worker": "fast", "instruction": "Other part", "access": "none"}]})
    raised: list[BaseException] = []

    async def by_hand() -> None:
        try:
            await engine.run_step(parent.id, 0)
        except LeaseLost as exc:
            raised.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(by_hand)
        while server.stats(include_calls=False)["in_flight"] < 1:  # noqa: ASYNC110  (the child's call)
            await anyio.sleep(0.02)
        take_over(db, parent.id)
    assert raised and "taken over by host-b" in str(raised[0])
    (child_id,) = engine.store.children(parent.id)
    assert engine.store.get_run(child_id).status == RunStatus.INTERRUPTED  # handed back
    with sqlite3.connect(db) as con:  # host-b hands the parent back in turn (stopped, SIGTERM)
        con.execute("UPDATE runs SET owner=NULL WHERE id=?", (parent.id,))
    record, run = await engine.run_step(parent.id, 1)  # the other step fails: the run ends failed
    assert record.status == StepStatus.FAILED and run.status == RunStatus.FAILED, run
    child = engine.store.get_run(child_id)
    assert child.status == RunStatus.CANCELLED and child.owner is None, child
    assert child.error == f"cancelled: run {parent.id}, which it is part of, ended failed before taking it back"
    assert [a.status for a in child.steps[0].attempts] == ["cancelled"]
    server.set_latency(model_latency={})  # the step again, by hand: it takes the same child back, and ends it
    record, run = await engine.run_step(parent.id, 0)
    assert record.status == StepStatus.COMPLETED and engine.store.children(parent.id) == [child_id], record
    child = engine.store.get_run(child_id)
    assert child.status == RunStatus.COMPLETED and record.output == child.answer, child
    assert [a.status for a in child.steps[0].attempts] == ["cancelled", "ok"]
