"""Which backend a target names, and what only PostgreSQL does, on a real PostgreSQL server: migrations under an
advisory lock when replicas start together, leases that expire in the database's clock, adoption of a run whose
owner's lease expired, fencing of the old owner, and URLs whose passwords never reach a message."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conductor_mcp.errors import LeaseLost, RunStateError, StoreError
from conductor_mcp.models import PlanInfo, RunStatus, StepStatus, Usage, Workflow
from conductor_mcp.store import MIGRATIONS, Store, open_store
from conductor_mcp.store.postgres import CLOCK_RESYNC_S, PostgresStore, redact_url
from conductor_mcp.store.sqlite import SQLiteStore

from ..conftest import execute, store_migrations
from ..servers.postgres_server import PostgresServer

WF = Workflow.model_validate({"steps": [{"worker": "a", "instruction": "x"},
                                        {"worker": "a", "instruction": "y", "access": "all"}]})
PLAN = PlanInfo(source="host", planner="host")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_path_is_sqlite_and_an_unknown_scheme_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(str(tmp_path / "t.db"))
    assert isinstance(store, SQLiteStore)
    store.close()
    for target in ("mysql://user:hunter2@host/db", "sqlite://x.db"):
        with pytest.raises(StoreError, match=r"unknown scheme '(mysql|sqlite)'.*postgresql://") as err:
            open_store(target)
        assert "hunter2" not in str(err.value)
    monkeypatch.setenv("CONDUCTOR_DB", "redis://host/0")
    with pytest.raises(StoreError, match="unknown scheme 'redis'"):
        Store()
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # no folder named after a scheme


def test_a_postgresql_url_creates_no_folder_and_hides_its_password(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`CONDUCTOR_DB=postgresql://user@host/db` once made a folder `postgresql:` with a SQLite file inside."""
    monkeypatch.chdir(tmp_path)
    url = f"postgresql://user:hunter2@127.0.0.1:{closed_port()}/db?connect_timeout=2"
    monkeypatch.setenv("CONDUCTOR_DB", url)
    with pytest.raises(StoreError) as err:
        Store()
    message = str(err.value)
    assert message.startswith("trace store postgresql://user:***@127.0.0.1:") and "hunter2" not in message
    assert list(tmp_path.iterdir()) == []  # no folder `postgresql:`, no SQLite file
    assert redact_url("postgres://u:p@h/db?sslmode=require&password=p2") == \
        "postgres://u:***@h/db?sslmode=require&password=***"


def test_replicas_starting_together_migrate_once(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    stores: list[Store] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(open_store(url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 4
    assert store_migrations(stores[0]) == [name for name, _ in MIGRATIONS]  # each once (name is the key)
    run_id = stores[0].create_run("t", WF, PLAN)
    assert all(s.get_run(run_id).task == "t" for s in stores)
    for s in stores:
        s.close()


def test_an_expired_lease_is_adopted_and_the_old_owner_fenced(postgres: PostgresServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Replica A claims a run and completes its first step, then stops beating; its lease expires in the
    database's clock; replica B finds the run orphaned, adopts it, and goes on from the first unfinished step,
    while every write of A (whose pid lives: only the lease counts across machines) fails."""
    monkeypatch.setenv("CONDUCTOR_STALE_AFTER_S", "1")
    url = postgres.new_database()
    a, b = open_store(url), open_store(url)
    assert isinstance(a, PostgresStore) and isinstance(b, PostgresStore)
    try:
        run_id = a.create_run("t", WF, PLAN)
        lease_a, _ = a.claim(run_id)
        u = Usage(prompt_tokens=3, completion_tokens=2, calls=1)
        a.step_completed(lease_a, 0, "first", u, (a.attempt_started(lease_a, 0, "a"), 0.1, u))
        a.attempt_started(lease_a, 1, "a", step_start=True)
        # another replica's: its owner's name says nothing, only its lease
        execute(a, "UPDATE runs SET owner='replica-a:1:1.00:beef' WHERE id=?", run_id)
        assert b.get_run(run_id).status == RunStatus.RUNNING and b.orphaned_runs() == []
        with pytest.raises(RunStateError, match="another live process"):
            b.claim(run_id)
        time.sleep(1.3)  # the lease (1 s) expires: nobody renewed it
        assert b.get_run(run_id).status == RunStatus.INTERRUPTED and b.orphaned_runs() == [run_id]
        lease_b, run = b.claim(run_id)
        assert lease_b.epoch == lease_a.epoch + 1 and b.orphaned_runs() == []
        assert [s.status for s in run.steps] == [StepStatus.COMPLETED, StepStatus.PENDING]  # step 0 never again
        assert run.steps[0].output == "first" and [x.status for x in run.steps[1].attempts] == ["interrupted"]
        writes: list[Callable[[], None]] = [lambda: a.heartbeat(lease_a),
                                            lambda: a.step_completed(lease_a, 1, "late", u),
                                            lambda: a.finish_run(lease_a, RunStatus.COMPLETED, "late")]
        for write in writes:
            with pytest.raises(LeaseLost, match="taken over"):
                write()
        b.heartbeat(lease_b)  # renewed in the database's clock
        with psycopg.connect(url) as conn:
            left = conn.execute("SELECT lease_expires_at - EXTRACT(EPOCH FROM clock_timestamp())"
                                " FROM runs WHERE id=%s", (run_id,)).fetchone()
        assert left is not None and 0 < left[0] <= 1.0
        b.step_completed(lease_b, 1, "second", u)
        b.finish_run(lease_b, RunStatus.COMPLETED, "second")
        done = a.get_run(run_id)
        assert done.status == RunStatus.COMPLETED and done.answer == "second" and done.steps[0].output == "first"
    finally:
        a.close()
        b.close()


def _waiting_on_locks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND wait_event_type = 'Lock'").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("lapsed", [False, True], ids=["part_held", "part_lease_lapsed"])
@pytest.mark.parametrize("first", ["end", "hand_back"])
def test_a_runs_end_and_its_parts_hand_back_at_once_cancel_the_part(postgres: PostgresServer, first: str,
                                                                      lapsed: bool) -> None:
    """Two replicas, two connections, one moment: the new owner of a run taken over ends it while the old owner
    hands back a part of it. Both transactions lock the run's row before the part's, so they queue on the run's
    row (here behind a third connection's lock, released once both wait) and neither deadlocks; whichever commits
    first, the other sees its write, and the part ends cancelled, not left handed back for a run that has ended.
    With the part's lease lapsed (its owner slow, not dead), the end cancels the part itself, and the hand-back
    that follows finds it lost; were the part's row locked before the run's, those two would deadlock."""
    url = postgres.new_database()
    old, new = open_store(url), open_store(url)
    try:
        root = old.create_run("root", WF, PLAN)
        old_lease, _ = old.claim(root)
        part = old.create_run("part", WF, PLAN, parent=old_lease, parent_step=0)
        part_lease, _ = old.claim(part)
        new_lease, _ = new.claim(root)  # taken over: the old owner's part is its to hand back
        if lapsed:
            execute(old, "UPDATE runs SET lease_expires_at=0 WHERE id=?", part)
        writes: dict[str, Callable[[], None]] = {
            "end": lambda: new.finish_run(new_lease, RunStatus.CANCELLED, error="cancelled by the client"),
            "hand_back": lambda: old.finish_run(part_lease, RunStatus.RUNNING, error=f"handed back: run {root}")}
        errors: dict[str, BaseException] = {}

        def write(name: str) -> None:
            try:
                writes[name]()
            except BaseException as exc:  # checked below
                errors[name] = exc

        threads = []
        with psycopg.connect(url) as holder:
            holder.execute("SELECT 1 FROM runs WHERE id=%s FOR UPDATE", (root,))
            for n, name in enumerate((first, "hand_back" if first == "end" else "end"), 1):
                threads.append(threading.Thread(target=write, args=(name,)))
                threads[-1].start()
                deadline = time.monotonic() + 10
                while _waiting_on_locks(url) < n:  # queued in this order on the run's row
                    assert time.monotonic() < deadline, f"{name} did not wait for the run's row"
                    time.sleep(0.01)
            holder.commit()
        for t in threads:
            t.join(timeout=20)
            assert not t.is_alive()
        if lapsed and first == "end":  # the end cancelled the part first: the old owner no longer holds it
            assert list(errors) == ["hand_back"] and isinstance(errors["hand_back"], LeaseLost), errors
        else:
            assert errors == {}
        ended = new.get_run(part)
        assert ended.status == RunStatus.CANCELLED and ended.owner is None, ended
        assert ended.error == f"cancelled: run {root}, which it is part of, ended cancelled before taking it back"
        assert new.get_run(root).status == RunStatus.CANCELLED
    finally:
        old.close()
        new.close()


class _SlowClock:
    """A connection whose clock reading says `value`, then takes `delay_s` more to come back."""

    def __init__(self, value: float, delay_s: float) -> None:
        self.value, self.delay_s, self.reads = value, delay_s, 0

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> _SlowClock:
        assert "clock_timestamp()" in sql
        self.reads += 1
        time.sleep(self.delay_s)
        return self

    def fetchone(self) -> tuple[float]:
        return (self.value,)

    rowcount = 1  # the rest of a cursor, as the store's connections answer

    def fetchall(self) -> list[Any]:
        return [self.fetchone()]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    def close(self) -> None:
        pass


def test_the_database_clock_is_read_once_a_while_and_never_run_ahead_of(postgres: PostgresServer) -> None:
    """Leases are kept in the database's clock. It is read once every CLOCK_RESYNC_S and carried on by this host's
    monotonic clock in between (a round trip a transaction saved), dated at the end of its round trip, so the
    store's `now` is never ahead of the database's clock; and read again at once where this host's wall and
    monotonic clocks part (a suspended host: its monotonic clock stood still)."""
    store = open_store(postgres.new_database())
    assert isinstance(store, PostgresStore)
    try:
        slow = _SlowClock(1000.0, 0.2)  # the reading was taken as the round trip began: 0.2 s old on arrival
        assert 1000.0 <= store._now(slow) < 1000.1 and slow.reads == 1  # dated at the end, not the start
        assert store._now(slow) < 1000.1 and slow.reads == 1  # carried on, not read again
        read, mono, wall = store._clock or (0.0, 0.0, 0.0)
        store._clock = (read, mono, wall - 5.0)  # the wall clock went on 5 s while the monotonic one stood still
        store._now(slow)
        assert slow.reads == 2
        store._clock = (1000.0, time.monotonic() - CLOCK_RESYNC_S - 0.1, time.time() - CLOCK_RESYNC_S - 0.1)
        store._now(slow)  # too old: read again
        assert slow.reads == 3
        store._clock = None
        with psycopg.connect(store.url, autocommit=True) as conn:
            def db_clock() -> float:
                row = conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8").fetchone()
                assert row is not None
                return float(row[0])

            for _ in range(20):  # against the real clock: between a reading before and one after
                before = db_clock()
                with store._write() as db:
                    now = store._now(db)
                after = db_clock()
                assert before - 0.5 < now <= after, (before, now, after)
    finally:
        store.close()


def test_a_first_executions_end_is_fenced_in_its_one_statement(postgres: PostgresServer) -> None:
    """A run's first execution ends in one statement, with no transaction around it. Queued behind another
    replica's claim of the run (which holds its row and raises its lease), it changes nothing, raises LeaseLost
    naming the new owner, and leaves no connection inside a transaction."""
    url = postgres.new_database()
    store = open_store(url)
    try:
        run_id = store.create_run("t", WF, PLAN)
        lease, _ = store.claim(run_id)
        assert lease.epoch == 1
        errors: list[BaseException] = []

        def end() -> None:
            try:
                store.finish_run(lease, RunStatus.COMPLETED, answer="late")
            except BaseException as exc:  # checked below
                errors.append(exc)

        with psycopg.connect(url) as other:  # another replica claims it: its row locked until the commit
            other.execute("UPDATE runs SET owner='replica-b:1:1.00:beef', lease=lease+1 WHERE id=%s", (run_id,))
            thread = threading.Thread(target=end)
            thread.start()
            deadline = time.monotonic() + 10
            while _waiting_on_locks(url) < 1:
                assert time.monotonic() < deadline, "the end did not wait for the run's row"
                time.sleep(0.01)
            other.commit()
        thread.join(timeout=20)
        assert not thread.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], LeaseLost) and "replica-b" in str(errors[0]), errors
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT status, answer, owner, lease FROM runs WHERE id=%s", (run_id,)).fetchone()
            idle = conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                                " AND state LIKE 'idle in transaction%%'").fetchone()
        assert row == ("running", None, "replica-b:1:1.00:beef", 2)
        assert idle == (0,)
    finally:
        store.close()
