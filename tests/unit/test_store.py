"""The trace store on a real SQLite file and a real PostgreSQL server: migrations, WAL, statuses, ownership,
interrupted runs. Tests taking `any_store` or `backend` run on both backends."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conductor_mcp.errors import LeaseLost, RunNotFound, RunStateError
from conductor_mcp.models import Budget, PlanInfo, RunOptions, RunStatus, StepStatus, Usage, Workflow
from conductor_mcp.store import MIGRATIONS, Lease, Store, open_store, owner_alive, process_owner, stale_after_s

from ..conftest import applied_migrations, execute, store_migrations

WF = Workflow.model_validate({"steps": [{"worker": "a", "instruction": "x"},
                                        {"worker": "a", "instruction": "y", "access": "all"}]})
PLAN = PlanInfo(source="host", planner="host")


def test_migrations_and_reopen(backend: str) -> None:
    s = open_store(backend)
    assert store_migrations(s) == [name for name, _ in MIGRATIONS]
    run_id = s.create_run("task", WF, PLAN)
    s.close()
    s2 = open_store(backend)  # re-applying nothing; data intact
    assert s2.get_run(run_id).task == "task" and store_migrations(s2) == [name for name, _ in MIGRATIONS]
    s2.close()


def test_wal(tmp_path: Path) -> None:
    Store(tmp_path / "t.db").close()
    assert sqlite3.connect(tmp_path / "t.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_run_ids_unguessable(any_store: Store) -> None:
    store = any_store
    ids = {store.create_run("t", WF, PLAN) for _ in range(50)}
    assert len(ids) == 50 and all(len(i) >= 16 for i in ids)


def test_lifecycle_and_usage(any_store: Store) -> None:
    store = any_store
    run_id = store.create_run("t", WF, PLAN, RunOptions(workers=["a"]))
    run = store.get_run(run_id)
    assert run.status == RunStatus.PLANNED and [s.status for s in run.steps] == [StepStatus.PENDING] * 2
    lease, _ = store.claim(run_id)
    n = store.attempt_started(lease, 0, "a", step_start=True)
    store.attempt_ended(lease, 0, n, "error", 0.1, error="boom")
    n2 = store.attempt_started(lease, 0, "a")
    u = Usage(prompt_tokens=10, completion_tokens=5, cost_usd=None, calls=1)
    store.step_completed(lease, 0, "out", u, (n2, 0.2, u))  # the attempt and the output: one commit
    run = store.get_run(run_id)
    assert run.status == RunStatus.RUNNING
    assert [a.status for a in run.steps[0].attempts] == ["error", "ok"] and run.steps[0].attempts[0].error == "boom"
    assert run.usage.total_tokens == 15 and run.usage.cost_usd is None
    store.finish_run(lease, RunStatus.COMPLETED, answer="ans")
    assert store.get_run(run_id).answer == "ans"
    assert store.options(run_id) == RunOptions(workers=["a"]).stored()
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        store.get_run("nope")


def test_dead_owner_is_interrupted_and_claimable(any_store: Store) -> None:
    """A dead pid on this host (SQLite), a lease expired in the database's clock (PostgreSQL)."""
    store = any_store
    run_id = store.create_run("t", WF, PLAN)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    host = process_owner().split(":")[0]
    execute(store, "UPDATE runs SET status='running', owner=?, heartbeat_at=?, lease_expires_at=? WHERE id=?",
            f"{host}:{dead_pid}:abcd", time.time(), time.time() - 1, run_id)
    execute(store, "UPDATE steps SET status='running' WHERE run_id=? AND idx=0", run_id)
    execute(store, "INSERT INTO attempts (run_id, idx, n, worker, status, started_at) VALUES (?,0,1,'a','running',?)",
            run_id, time.time())
    assert store.orphaned_runs() == [run_id]
    assert store.get_run(run_id).status == RunStatus.INTERRUPTED
    _, run = store.claim(run_id)
    assert run.status == RunStatus.RUNNING and run.steps[0].status == StepStatus.PENDING
    assert run.steps[0].attempts[0].status == "interrupted"


def test_live_owner_refused(any_store: Store) -> None:
    store = any_store
    run_id = store.create_run("t", WF, PLAN)
    host = process_owner().split(":")[0]
    # our parent: alive, with a fresh heartbeat (SQLite) and a lease that has not expired (PostgreSQL)
    execute(store, "UPDATE runs SET status='running', owner=?, heartbeat_at=?, lease_expires_at=? WHERE id=?",
            f"{host}:{os.getppid()}:beef", time.time(), time.time() + 3600, run_id)
    assert store.get_run(run_id).status == RunStatus.RUNNING and store.orphaned_runs() == []
    with pytest.raises(RunStateError, match="another live process"):
        store.claim(run_id)
    # a stale heartbeat, an expired lease: the owner is gone
    execute(store, "UPDATE runs SET heartbeat_at=?, lease_expires_at=? WHERE id=?",
            time.time() - 3600, time.time() - 3570, run_id)
    assert store.get_run(run_id).status == RunStatus.INTERRUPTED and store.orphaned_runs() == [run_id]


def test_default_path_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conductor_mcp.store import default_db_path

    monkeypatch.setenv("CONDUCTOR_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"
    monkeypatch.delenv("CONDUCTOR_DB")
    assert default_db_path().name == "traces.db" and "conductor-mcp" in str(default_db_path())


def test_one_renewal_of_many_leases_renews_those_held_and_names_those_taken_over(any_store: Store) -> None:
    """A server's heartbeat loop renews every run it holds in one call: a run taken over meanwhile is named, with
    who holds it now, and neither its row nor the others' renewals are held back by it."""
    store = any_store
    ids = [store.create_run(f"t{i}", WF, PLAN) for i in range(3)]
    leases = [store.claim(run_id)[0] for run_id in ids]
    execute(store, "UPDATE runs SET owner='host-b:1:1', lease=lease+1, heartbeat_at=0 WHERE id=?", ids[1])
    execute(store, "UPDATE runs SET heartbeat_at=0 WHERE id IN (?, ?)", ids[0], ids[2])
    lost = store.renew(leases)
    assert list(lost) == [leases[1]] and lost[leases[1]].run_id == ids[1]
    assert "taken over by host-b:1:1" in str(lost[leases[1]])
    beats = [store.get_run(run_id).heartbeat_at or 0.0 for run_id in ids]
    assert beats[0] > 0 and beats[2] > 0 and beats[1] == 0  # the others renewed, the lost one left as it was
    assert store.renew([leases[0], leases[2]]) == {}
    with pytest.raises(LeaseLost, match="taken over by host-b"):
        store.heartbeat(leases[1])
    # asked without writing (a child run cancelled beside its parent: was the parent taken over?)
    assert store.taken_over(leases[0]) is None
    assert "taken over by host-b:1:1" in str(store.taken_over(leases[1]))


def test_a_run_that_ends_cancels_its_parts_left_handed_back(any_store: Store) -> None:
    """A child run handed back (its parent taken over mid-call: running, owned by no one) waits for the parent's
    owner to take it back at its step. If the parent, claimed again, ends first, the child and its own handed-back
    child are cancelled, keeping their steps; a part still held, and a finished one, are left as they are. A run's
    first execution (lease epoch 1) has no parts handed back, and its end asks for none."""
    store = any_store
    root = store.create_run("root", WF, PLAN)
    lease, _ = store.claim(root)
    handed, held, done = (store.create_run(f"part {i}", WF, PLAN, parent=lease, parent_step=0) for i in range(3))
    handed_lease, _ = store.claim(handed)
    n = store.attempt_started(handed_lease, 0, "a", step_start=True)
    store.step_completed(handed_lease, 0, "kept", Usage(), (n, 0.1, None))
    deeper = store.create_run("deeper part", WF, PLAN, parent=handed_lease, parent_step=1)
    store.finish_run(store.claim(deeper)[0], RunStatus.RUNNING, error="handed back: run taken over")
    store.finish_run(handed_lease, RunStatus.RUNNING, error="handed back: run taken over")
    held_lease, _ = store.claim(held)
    store.finish_run(store.claim(done)[0], RunStatus.COMPLETED, answer="done")
    assert lease.epoch == 1
    store.finish_run(lease, RunStatus.FAILED, error="a first execution")  # no part can be handed back there yet
    assert store.get_run(handed).status == RunStatus.INTERRUPTED  # so its end asked for none
    lease, _ = store.claim(root)  # as the new owner's claim after a takeover: epoch 2
    store.finish_run(lease, RunStatus.FAILED, error="a sibling step failed")
    for part, around, status in ((handed, root, "failed"), (deeper, handed, "cancelled")):
        run = store.get_run(part)
        assert run.status == RunStatus.CANCELLED and run.owner is None, run
        assert run.error == f"cancelled: run {around}, which it is part of, ended {status} before taking it back"
    assert store.get_run(handed).steps[0].output == "kept"
    assert store.get_run(held).status == RunStatus.RUNNING and store.get_run(done).status == RunStatus.COMPLETED
    store.heartbeat(held_lease)  # still its owner's
    relaunched, _ = store.claim(root)  # resumed, the run takes its part back at that step
    handed_lease, run = store.claim(handed)
    assert run.steps[0].output == "kept"
    store.finish_run(handed_lease, RunStatus.RUNNING, error="handed back: run taken over")  # the run goes on
    assert store.get_run(handed).status == RunStatus.INTERRUPTED
    store.finish_run(relaunched, RunStatus.RUNNING, error="handed back")  # the run handed back too: not an end
    assert store.get_run(handed).status == RunStatus.INTERRUPTED


def test_a_part_handed_back_after_its_run_ended_is_cancelled(any_store: Store) -> None:
    """The run's new owner ended it before the old owner's part stopped (at its next renewal): that part, handed
    back now, would wait for no one, so it is cancelled instead, with its own parts handed back before it."""
    store = any_store
    root = store.create_run("root", WF, PLAN)
    old, _ = store.claim(root)
    part = store.create_run("part", WF, PLAN, parent=old, parent_step=0)
    part_lease, _ = store.claim(part)
    deeper = store.create_run("deeper part", WF, PLAN, parent=part_lease, parent_step=0)
    store.finish_run(store.claim(deeper)[0], RunStatus.RUNNING, error="handed back: run taken over")
    new, _ = store.claim(root)  # taken over
    store.finish_run(new, RunStatus.CANCELLED, error="cancelled by the client")  # nothing was handed back yet
    assert store.get_run(part).status == RunStatus.RUNNING  # its owner still holds it
    store.finish_run(part_lease, RunStatus.RUNNING, error=f"handed back: run {root}: taken over")
    for run_id, around, status in ((part, root, "cancelled"), (deeper, part, "cancelled")):
        run = store.get_run(run_id)
        assert run.status == RunStatus.CANCELLED and run.owner is None, run
        assert run.error == f"cancelled: run {around}, which it is part of, ended {status} before taking it back"


def test_a_run_that_ends_cancels_its_parts_whose_owner_died(any_store: Store) -> None:
    """A part whose owner died (its lease lapsed) before it could hand it back is cancelled too, what it had in
    flight settled as a claim would; a part whose owner lives, here or on another host, is left for it (it stops at
    its next renewal), and so are that part's own parts."""
    store = any_store
    root = store.create_run("root", WF, PLAN)
    lease, _ = store.claim(root)
    dead, live, elsewhere = (store.create_run(f"part {i}", WF, PLAN, parent=lease, parent_step=i) for i in range(3))
    dead_lease, _ = store.claim(dead)
    store.attempt_started(dead_lease, 0, "a", step_start=True)
    live_lease, _ = store.claim(live)
    elsewhere_lease, _ = store.claim(elsewhere)
    deeper = store.create_run("deeper part", WF, PLAN, parent=elsewhere_lease, parent_step=0)
    store.finish_run(store.claim(deeper)[0], RunStatus.RUNNING, error="handed back: run taken over")
    execute(store, "UPDATE runs SET owner='host-b:1:1', heartbeat_at=0, lease_expires_at=0 WHERE id=?", dead)
    fresh = time.time()
    execute(store, "UPDATE runs SET owner='host-b:1:1', heartbeat_at=?, lease_expires_at=? WHERE id=?",
            fresh, fresh + stale_after_s(), elsewhere)
    assert store.get_run(dead).status == RunStatus.INTERRUPTED
    assert store.get_run(elsewhere).status == RunStatus.RUNNING
    lease, _ = store.claim(root)
    store.finish_run(lease, RunStatus.COMPLETED, answer="done")
    run = store.get_run(dead)
    assert run.status == RunStatus.CANCELLED and run.owner is None, run
    assert run.steps[0].status == StepStatus.PENDING and [a.status for a in run.steps[0].attempts] == ["interrupted"]
    assert store.get_run(live).status == RunStatus.RUNNING
    store.heartbeat(live_lease)
    assert store.get_run(elsewhere).status == RunStatus.RUNNING and store.get_run(elsewhere).owner == "host-b:1:1"
    assert store.get_run(deeper).status == RunStatus.INTERRUPTED  # its run still held: left for that run's owner


def test_a_later_claim_fences_every_write_of_the_earlier_one(any_store: Store) -> None:
    store = any_store
    run_id = store.create_run("t", WF, PLAN)
    old, _ = store.claim(run_id)
    n = store.attempt_started(old, 0, "a", step_start=True)
    new, run = store.claim(run_id)  # a takeover: the in-flight attempt is interrupted, the step pending
    assert new.epoch == old.epoch + 1 and run.steps[0].status == StepStatus.PENDING
    u = Usage(prompt_tokens=3, completion_tokens=2, calls=1)
    for write in (lambda: store.step_completed(old, 0, "late", u, (n, 0.1, u)),
                  lambda: store.attempt_started(old, 1, "a"),
                  lambda: store.attempt_started(old, 1, "a", step_start=True),
                  lambda: store.heartbeat(old), lambda: store.finish_run(old, RunStatus.COMPLETED, "late"),
                  lambda: store.cancel_in_flight(old), lambda: store.reset_step(old, 0),
                  lambda: store.create_run("child", WF, PLAN, parent=old),
                  lambda: store.set_budget(old, Budget(max_usd=1.0)), lambda: store.set_reviews(old, []),
                  lambda: store.edit_step(old, 0, Workflow.model_validate(
                      {"steps": [{"worker": "a", "instruction": "changed by the fenced owner"}]}))):
        with pytest.raises(LeaseLost, match="taken over"):
            write()
    run = store.get_run(run_id)
    # nothing of the fenced commit landed, not even the attempt that shared its transaction
    assert run.steps[0].output is None and [a.status for a in run.steps[0].attempts] == ["interrupted"]
    assert run.steps[0].instruction != "changed by the fenced owner" and not run.steps[0].edited
    assert run.status == RunStatus.RUNNING and run.answer is None and store.children(run_id) == []
    store.step_completed(new, 0, "out", u, (store.attempt_started(new, 0, "a"), 0.1, u))
    assert [a.status for a in store.get_run(run_id).steps[0].attempts] == ["interrupted", "ok"]


def test_a_paused_owner_on_this_host_stays_alive_whatever_its_heartbeat(store: Store) -> None:
    """Pid and start time decide on this host: a stopped process with an hour-old heartbeat owns its run,
    while the same pid with another start time (a reused pid) does not."""
    run_id = store.create_run("t", WF, PLAN)
    host, parent = process_owner().split(":")[0], os.getppid()
    started = psutil.Process(parent).create_time()
    hour_ago = time.time() - 3600
    execute(store, "UPDATE runs SET status='running', owner=?, heartbeat_at=? WHERE id=?",
            f"{host}:{parent}:{started:.2f}:beef", hour_ago, run_id)
    assert store.get_run(run_id).status == RunStatus.RUNNING
    with pytest.raises(RunStateError, match="another live process"):
        store.claim(run_id)
    # nor are its options changed from outside: a resume's new budget is written by the owner, under its lease
    with pytest.raises(LeaseLost, match="taken over"):
        store.set_budget(Lease(run_id, 0), Budget(max_usd=1.0))
    assert "budget" not in store.options(run_id)
    assert not owner_alive(f"{host}:{parent}:{started - 50:.2f}:beef", time.time())  # pid reused
    assert owner_alive(f"elsewhere:{parent}:{started - 50:.2f}:beef", time.time())  # another host: heartbeat
    assert not owner_alive(f"elsewhere:{parent}:{started:.2f}:beef", hour_ago)


def test_a_database_of_the_first_schema_opens_and_runs(tmp_path: Path) -> None:
    """A user's trace database written before any later migration: opened, migrated, read and resumed."""
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        name, sql = MIGRATIONS[0]
        db.executescript(sql)
        db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
        db.execute("INSERT INTO runs (id, task, status, workflow, plan, options, created_at, updated_at, owner,"
                   " heartbeat_at) VALUES ('r1', 'old task', 'running', ?, ?, '{}', 1.0, 1.0, 'gone:1:ab', 1.0)",
                   (WF.model_dump_json(), PLAN.model_dump_json()))
        for i, step in enumerate(WF.steps):
            db.execute("INSERT INTO steps (run_id, idx, worker, instruction, access, status, output) "
                       "VALUES ('r1', ?, ?, ?, '\"all\"', ?, ?)",
                       (i, step.worker, step.instruction, "completed" if i == 0 else "running",
                        "first" if i == 0 else None))
    store = Store(path)
    assert applied_migrations(path) == [n for n, _ in MIGRATIONS]
    run = store.get_run("r1")
    assert run.task == "old task" and run.status == RunStatus.INTERRUPTED and run.reward is None
    assert run.steps[0].output == "first"
    lease, run = store.claim("r1")
    assert lease.epoch == 1 and [s.status for s in run.steps] == [StepStatus.COMPLETED, StepStatus.PENDING]
    store.finish_run(lease, RunStatus.COMPLETED, answer="done")
    store.rate("r1", 1.0)
    assert store.get_run("r1").reward == 1.0


def test_only_a_finished_run_is_rated(any_store: Store) -> None:
    """A planned, running or interrupted run has no answer to judge: rating it is refused, naming the run and
    its status, and stores nothing; once finished (completed, failed, cancelled, budget_exceeded) it is rated.
    A reward stored on an unfinished run before this rule is not learnt from."""
    store = any_store
    run_id = store.create_run("t", WF, PLAN)
    with pytest.raises(RunStateError, match=rf"run {run_id} is planned, not finished: .* resume it"):
        store.rate(run_id, 1.0)
    lease, _ = store.claim(run_id)
    with pytest.raises(RunStateError, match=rf"run {run_id} is running, not finished: .* when it has finished"):
        store.rate(run_id, 1.0, source="host")
    execute(store, "UPDATE runs SET owner='gone:1:ab', heartbeat_at=1.0, lease_expires_at=31.0 WHERE id=?",
            run_id)  # its owner is gone
    with pytest.raises(RunStateError, match=rf"run {run_id} is interrupted, not finished"):
        store.rate(run_id, 0.0)
    assert store.get_run(run_id).reward is None and store.rated_runs() == []
    lease, _ = store.claim(run_id)
    store.finish_run(lease, RunStatus.FAILED, error="boom")
    store.rate(run_id, 0.0, note="failed")
    assert [r["id"] for r in store.rated_runs()] == [run_id]
    for status in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.BUDGET_EXCEEDED):
        lease, _ = store.claim(store.create_run("t", WF, PLAN))
        store.finish_run(lease, status)
        store.rate(lease.run_id, 1.0)
        assert store.get_run(lease.run_id).reward == 1.0
    legacy = store.create_run("rated while planned, before the rule", WF, PLAN)
    execute(store, "UPDATE runs SET reward=1.0, reward_source='user', rated_at=? WHERE id=?", time.time(), legacy)
    assert legacy not in {r["id"] for r in store.rated_runs()} and len(store.rated_runs()) == 4


def test_add_run_answers_the_run_as_it_reads_back(any_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # the engine takes a planned run from add_run, unread: it must be the run get_run reads, redaction included
    monkeypatch.setenv("SOME_API_KEY", "secret-value-123456")
    plan = PlanInfo(source="conductor", planner="p", attempts=2, notes=["saw secret-value-123456"],
                    usage=Usage(prompt_tokens=5, completion_tokens=7, cost_usd=0.01, calls=1))
    wf = Workflow.model_validate({"steps": [{"worker": "a", "instruction": "x"},
                                            {"worker": "b", "instruction": "y", "access": [0]},
                                            {"worker": "a", "instruction": "z", "access": "all"}]})
    run = any_store.add_run("task", wf, plan, RunOptions(max_steps=3))
    assert run == any_store.get_run(run.id) and "secret-value" not in run.plan.model_dump_json()
    lease, _ = any_store.claim(run.id)
    child = any_store.add_run("sub", WF, PLAN, RunOptions(kind="recursion", depth=1), parent=lease, parent_step=1)
    assert child == any_store.get_run(child.id) and child.parent_run_id == run.id and child.parent_step == 1


def test_claiming_a_run_planned_just_now_answers_it_unread(any_store: Store) -> None:
    """claim_run(known=) answers the run add_run gave, claimed, without reading it back: it must be the run
    get_run reads then. Once the run was ever claimed (a lease taken, steps maybe run), it is read back; and a
    run known with a step not pending (as one stored before leases existed may be) is read back and cleared."""
    store = any_store
    planned = store.add_run("task", WF, PLAN, RunOptions(workers=["a"], max_steps=2))
    lease, run, options = store.claim_run(planned.id, planned)
    assert lease.epoch == 1 and run == store.get_run(planned.id) and run.status == RunStatus.RUNNING
    assert RunOptions.load(options) == RunOptions.load(store.options(planned.id))
    u = Usage(prompt_tokens=3, completion_tokens=4, calls=1)
    n = store.attempt_started(lease, 0, "a", step_start=True)  # the step starts with its first attempt
    assert store.get_run(planned.id).steps[0].status == StepStatus.RUNNING
    store.step_completed(lease, 0, "first", u, (n, 0.1, u))
    store.finish_run(lease, RunStatus.PLANNED)  # as run_step leaves a run after one step by hand
    lease, run, _ = store.claim_run(planned.id, planned)  # the planned run is stale now: read back
    assert lease.epoch == 2 and run == store.get_run(planned.id) and run.steps[0].output == "first"
    assert [a.n for a in run.steps[0].attempts] == [1]
    legacy = store.add_run("task", WF, PLAN)  # a run left running before leases existed: lease 0, a step running
    execute(store, "UPDATE steps SET status='running' WHERE run_id=? AND idx=0", legacy.id)
    lease, run, _ = store.claim_run(legacy.id, store.get_run(legacy.id))
    assert lease.epoch == 1 and run.steps[0].status == StepStatus.PENDING and run == store.get_run(legacy.id)


def test_a_run_stored_claimed_is_the_run_a_claim_answers(any_store: Store) -> None:
    """add_claimed_run (solve's plan and claim in one transaction) answers the run get_run reads, running under
    this process's first lease, with the options stored; its owner's writes pass the fence, attempts are numbered
    in the database, and a later claim fences it as it fences any other."""
    store = any_store
    claimed = store.add_claimed_run("task", WF, PLAN, RunOptions(workers=["a"], max_steps=2))
    run_id = claimed.run.id
    assert claimed.lease == Lease(run_id, 1) and claimed.run == store.get_run(run_id)
    assert claimed.run.status == RunStatus.RUNNING and claimed.run.owner == process_owner()
    assert RunOptions.load(claimed.options) == RunOptions.load(store.options(run_id))
    assert run_id not in store.orphaned_runs()  # its owner lives: no other replica adopts it
    lease = claimed.lease
    assert [store.attempt_started(lease, 0, "a", step_start=True), store.attempt_started(lease, 0, "a"),
            store.attempt_started(lease, 1, "a", step_start=True)] == [1, 2, 1]
    u = Usage(prompt_tokens=3, completion_tokens=4, calls=1)
    store.step_completed(lease, 0, "first", u, (2, 0.1, u))
    store.heartbeat(lease)
    with store._read() as db:  # the lease the insert took: it expires a lease's time after the heartbeat
        expires, beat = db.execute("SELECT lease_expires_at, heartbeat_at FROM runs WHERE id=?", (run_id,)).fetchone()
    assert expires == pytest.approx(beat + stale_after_s())
    time.sleep(0.02)
    assert store.running_seconds(run_id) >= 0.02  # counted from the claim the insert made (its claimed_at)
    later, run = store.claim(run_id)  # a takeover: the fence turns the first lease away, and nothing it sent lands
    assert later.epoch == 2 and [a.status for a in run.steps[0].attempts] == ["interrupted", "ok"]
    with pytest.raises(LeaseLost, match="taken over"):
        store.finish_run(lease, RunStatus.COMPLETED, "late")
    store.finish_run(later, RunStatus.COMPLETED, "done")
    run = store.get_run(run_id)
    assert (run.status, run.answer, run.owner, run.steps[0].output) == (RunStatus.COMPLETED, "done", None, "first")
