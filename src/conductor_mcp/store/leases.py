"""Ownership: which process runs a run, and the lease that fences every write it makes.

A claim makes this process the run's owner under a new lease epoch (the fencing token): every write an owner
makes names the epoch it holds, so a process that lost the run (paused, then taken over) can write nothing.
Whether an owner lives: on SQLite (one machine) its pid and start time decide, or, across hosts sharing a
file, a fresh heartbeat; on PostgreSQL its lease, which expires in the database's own clock unless heartbeats
renew it. A run whose owner is gone is `interrupted`, and another process may claim (adopt) it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import psutil

from ..errors import LeaseLost, RunNotFound, RunStateError
from ..models import Run, RunStatus, StepStatus
from .base import Conn, Row, StoreBase

# Across hosts only a heartbeat tells whether the owner lives: older than this, it is taken for gone.
STALE_AFTER_S = 30.0


def _host_id() -> str:
    # containers sharing one database volume have distinct hostnames but may share pids
    return os.environ.get("CONDUCTOR_HOST_ID") or socket.gethostname()


def _start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def _make_owner() -> str:
    """Host, pid, the process's start time (so a reused pid is not mistaken for us) and a token."""
    return f"{_host_id()}:{os.getpid()}:{_start_time(os.getpid()) or 0:.2f}:{secrets.token_hex(4)}"


_OWNER = _make_owner()


def process_owner() -> str:
    """Who owns a run this process executes."""
    return _OWNER


def stale_after_s() -> float:
    """The lease time: CONDUCTOR_STALE_AFTER_S shortens it (tests); owners beat six times within it."""
    return float(os.environ.get("CONDUCTOR_STALE_AFTER_S") or STALE_AFTER_S)


def heartbeat_s() -> float:
    return stale_after_s() / 6


def owner_alive(owner: str | None, heartbeat_at: float | None, now: float | None = None) -> bool:
    """Whether the process named by `owner` still runs. On this host the pid and its start time decide
    (a paused process is alive whatever its heartbeat says); elsewhere only a fresh heartbeat can."""
    if not owner:
        return False
    if owner == _OWNER:
        return True
    now = time.time() if now is None else now
    fresh = heartbeat_at is not None and now - heartbeat_at <= stale_after_s()
    parts = owner.rsplit(":", 3)
    if len(parts) == 4 and parts[0] == _host_id() and parts[1].isdigit():
        try:
            started = _start_time(int(parts[1]))
        except psutil.AccessDenied:  # another user's process (macOS hides their start times): the heartbeat decides
            return fresh
        try:
            return started is not None and abs(started - float(parts[2])) < 1.0
        except ValueError:
            return False
    if not fresh:
        return False
    host, _, rest = owner.partition(":")  # an owner written before start times were recorded
    pid_text = rest.partition(":")[0]
    if host == _host_id() and pid_text.isdigit():
        return bool(psutil.pid_exists(int(pid_text)))
    return True


@dataclass(frozen=True)
class Lease:
    """This process's hold on a run, from one claim: the run's writes name it (the epoch is the fencing token)."""

    run_id: str
    epoch: int


class Claimed(NamedTuple):
    """What a claim answers: the lease, the run as claimed, and its stored options (RunOptions.load reads them)."""

    lease: Lease
    run: Run
    options: dict[str, Any]


class Ownership(StoreBase):
    """Claims, heartbeats and the fence every owner's write passes."""

    def _status(self, row: Row, now: float) -> RunStatus:
        """A stored status as readers see it: a running run whose owner is gone is interrupted."""
        status = RunStatus(row["status"])
        if status == RunStatus.RUNNING and not self._alive(row, now):
            return RunStatus.INTERRUPTED
        return status

    def _refuse_if_owned(self, row: Row, run_id: str, now: float) -> None:
        """Inside a write transaction on a runs row: refuse when another live process runs it."""
        if row["status"] == RunStatus.RUNNING and row["owner"] != _OWNER and self._alive(row, now):
            raise RunStateError(f"run {run_id} is running in another live process ({row['owner']}); "
                                "wait for it, or stop that process first")

    def _hold(self, db: Conn, lease: Lease) -> None:
        """Inside a write transaction: raise LeaseLost unless this process still holds the run (the fence)."""
        lost = self._lost(lease, self._lock_run(db, lease.run_id, "owner, lease"))
        if lost is not None:
            raise lost

    def taken_over(self, lease: Lease) -> LeaseLost | None:
        """Whether the run was taken over since `lease` was claimed: its LeaseLost, or None while the lease holds."""
        with self._read() as db:
            return self._lost(lease, db.execute("SELECT owner, lease FROM runs WHERE id=?", (lease.run_id,)).fetchone())

    @classmethod
    def _lost(cls, lease: Lease, row: Row | None) -> LeaseLost | None:
        """The run's row (owner, lease) against the lease: its LeaseLost once taken over, None while it holds."""
        if row is None or row["owner"] != _OWNER or row["lease"] != lease.epoch:
            return cls._taken_over(lease.run_id, row)
        return None

    @staticmethod
    def _taken_over(run_id: str, row: Row | None) -> LeaseLost:
        return LeaseLost(f"run {run_id}: taken over by {row['owner'] if row else 'nobody'}; this process stops"
                         " working on it", run_id)

    def _update_held(self, db: Conn, lease: Lease, assignments: str, params: Sequence[Any]) -> None:
        """Inside a write transaction: `UPDATE runs SET <assignments>` on the run only while this process holds
        it; the fence and the write in one statement (its row lock conflicts with a claim's, as _hold's does).
        LeaseLost otherwise, which rolls the transaction back: what it wrote before this is undone too."""
        cursor = db.execute(f"UPDATE runs SET {assignments} WHERE id=? AND owner=? AND lease=?",
                            (*params, lease.run_id, _OWNER, lease.epoch))
        if cursor.rowcount != 1:
            self._hold(db, lease)  # names who holds it now
            raise LeaseLost(f"run {lease.run_id}: not updated under lease {lease.epoch}", lease.run_id)

    def claim(self, run_id: str) -> tuple[Lease, Run]:
        """Make this process the run's owner under a new lease epoch; refuse if another live process owns
        it. Claiming again in this process fences off the earlier claim too."""
        lease, run, _ = self.claim_run(run_id)
        return lease, run

    def claim_run(self, run_id: str, known: Run | None = None) -> Claimed:
        """claim, with the run's options. `known`: the run as this process wrote (add_run) or read it just before,
        planned and untouched (its steps pending, no attempt). While the store shows it planned and never claimed
        since (lease 0: every write to a run's steps needs a lease), it is still the stored run, so it is answered
        from that instead of read back, and there is nothing left running to clear."""
        with self._tx() as db:
            now = self._now(db)
            row = self._lock_run(db, run_id, "*")
            if row is None:
                raise RunNotFound(f"run_id: no run {run_id!r}")
            self._refuse_if_owned(row, run_id, now)
            lease = Lease(run_id, int(row["lease"]) + 1)
            # an execution that never finished (its process died) counts until its last heartbeat
            db.execute("UPDATE runs SET status=?, owner=?, lease=?, heartbeat_at=?, lease_expires_at=?, updated_at=?,"
                       f" error=NULL, run_s = run_s + COALESCE({self.MAX2}(COALESCE(heartbeat_at, claimed_at)"
                       " - claimed_at, 0), 0), claimed_at=? WHERE id=?",
                       (RunStatus.RUNNING.value, _OWNER, lease.epoch, now, now + stale_after_s(), now, now, run_id))
            fresh = (known is not None and known.id == run_id and lease.epoch == 1
                     and row["status"] == RunStatus.PLANNED.value and known.status == RunStatus.PLANNED
                     and all(s.status == StepStatus.PENDING and not s.attempts for s in known.steps))
            if not fresh:  # a step or attempt left running belonged to a process that is gone
                self._settle_left_running(db, run_id, StepStatus.RUNNING, StepStatus.FAILED, StepStatus.SKIPPED)
        options: dict[str, Any] = json.loads(row["options"])
        if fresh and known is not None:
            return Claimed(lease, known.model_copy(update={
                "status": RunStatus.RUNNING, "owner": _OWNER, "heartbeat_at": now, "updated_at": now,
                "error": None}), options)
        return Claimed(lease, self.get_run(run_id), options)

    @staticmethod
    def _settle_left_running(db: Conn, run_id: str, *steps: StepStatus) -> None:
        """What a run's gone owner left in flight: its attempts running are interrupted, and its steps in `steps`
        go back to pending, to be run again."""
        db.execute("UPDATE attempts SET status='interrupted' WHERE run_id=? AND status='running'", (run_id,))
        db.execute(f"UPDATE steps SET status=? WHERE run_id=? AND status IN ({','.join('?' * len(steps))})",
                   (StepStatus.PENDING.value, run_id, *(s.value for s in steps)))

    def heartbeat(self, lease: Lease) -> None:
        """Renew the lease (tell other hosts the owner lives); raise LeaseLost if the run was taken over."""
        for lost in self.renew([lease]).values():
            raise lost

    def renew(self, leases: Sequence[Lease]) -> dict[Lease, LeaseLost]:
        """Renew many leases in one transaction (a server's heartbeat loop: one commit a tick, not one a run);
        answer those whose runs were taken over, each with its LeaseLost, the others renewed all the same. In the
        order given, which puts a run before its parts (Heartbeats holds runs in the order they were taken): the
        lock order of every transaction that writes both (a part's insert, a run's end, a part handed back)."""
        lost: dict[Lease, LeaseLost] = {}
        with self._tx() as db:
            now = self._now(db)
            for lease in leases:
                cursor = db.execute("UPDATE runs SET heartbeat_at=?, lease_expires_at=? WHERE id=? AND owner=?"
                                    " AND lease=?", (now, now + stale_after_s(), lease.run_id, _OWNER, lease.epoch))
                if cursor.rowcount != 1:
                    lost[lease] = self._taken_over(lease.run_id, self._lock_run(db, lease.run_id, "owner"))
        return lost

    def orphaned_runs(self, limit: int = 20) -> list[str]:
        """Root runs stored as running whose owner is gone (its lease expired), oldest first: a live replica
        adopts them (claim, then carry on from the first unfinished step)."""
        with self._read() as db:
            now = self._now(db)
            # the partial index runs_running serves this: the status a literal (a parameter would not prove the
            # index's condition), and the parent test one no other index can take (SQLite would pick runs_parent)
            rows = db.execute("SELECT id, status, owner, heartbeat_at, lease_expires_at FROM runs"
                              f" WHERE status='{RunStatus.RUNNING.value}' AND COALESCE(parent_run_id, '') = ''"
                              " ORDER BY updated_at, id").fetchall()
        return [str(r["id"]) for r in rows if not self._alive(r, now)][:limit]

    def get_run(self, run_id: str) -> Run:
        raise NotImplementedError
