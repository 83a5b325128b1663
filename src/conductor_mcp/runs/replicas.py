"""Servers sharing one store: adopting the runs of a server that died, and following runs another server executes.

Adoption: a server that serves HTTP looks for orphaned runs (stored `running`, owner gone: its lease expired on
PostgreSQL, its process gone or its heartbeat stale on SQLite, or handed back by a server told to stop) every
`adopt_s` seconds and resumes each from its first unfinished step. Servers racing for the same run all try; the
store's claim lets one win (the others' claims are refused and they write nothing).

Following: a wait on a run that another server executes (behind a round-robin balancer, `get_run(wait_s)` reaches
any replica) reads the run from the store every POLL_S seconds and turns what changed into the same step events a
local run sends. Polling, not LISTEN/NOTIFY: it works on both backends, costs one indexed read per waiting call
per POLL_S (a few hundred a second at a hundred waiting calls, which neither backend notices), and needs no
connection held per replica for notifications.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio

from ..errors import ConfigError, internal_message
from ..models import RunStatus, StepStatus
from .run_manager import RunManager

if TYPE_CHECKING:
    from .engine import StepEvent

log = logging.getLogger(__name__)
POLL_S = 0.25  # a remote run's progress reaches a waiting call within this (plus one read)
_ENDED = {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED}


def adopt_every(value: str | float | None, default_on: bool) -> float:
    """Seconds between looks for orphaned runs (--adopt-s, else CONDUCTOR_ADOPT_S); 0: never adopt. By default a
    server that serves HTTP looks every heartbeat interval (so a dead replica's run moves within the lease time
    plus one heartbeat), and a stdio server, one host's own, never does."""
    from ..store import heartbeat_s

    if value is None or value == "":
        value = os.environ.get("CONDUCTOR_ADOPT_S") or (heartbeat_s() if default_on else 0.0)
    try:
        every = float(value)
    except ValueError:
        every = -1.0
    if not (every == 0.0 or 0.05 <= every <= 3600.0):
        raise ConfigError(f"adoption interval {value!r} (--adopt-s or CONDUCTOR_ADOPT_S): give seconds, "
                          "0.05 to 3600, or 0 to never adopt")
    return every


async def adopt_orphans(runs: RunManager, every_s: float) -> None:
    """Resume orphaned root runs on this server, now and every `every_s` seconds, until it drains."""
    refused: set[str] = set()  # runs this server cannot resume (a worker it lacks): said once, not every look
    while not runs.draining:
        try:
            orphans = runs.orphaned_runs()
        except Exception as exc:  # the store unreachable or not migrated yet (readyz says so): the next look tries
            log.warning("looking for orphaned runs failed: %s", internal_message(exc))
            orphans = []
        for run_id in orphans:
            if runs.draining or runs.active(run_id) is not None:
                continue
            try:
                runs.resume(run_id)
            except Exception as exc:  # never the server's end: a run it cannot take is left for another
                if run_id not in refused:
                    refused.add(run_id)
                    log.warning("not adopting run %s: %s", run_id, internal_message(exc))
            else:
                log.info("adopting run %s: its owner is gone", run_id)
        await anyio.sleep(every_s)


async def follow_stored(runs: RunManager, run_id: str, *, through_handover: bool) -> AsyncIterator[StepEvent]:
    """Step events of a run another server executes, read from the store, until it ends. `through_handover`: keep
    following a run whose owner is gone (an adopting server takes it on within the lease time)."""
    from .engine import StepEvent  # loaded with the first wait: the engine is heavy to import

    seen: dict[int, StepStatus] = {}
    while True:
        run = runs.get(run_id)
        total = len(run.steps)
        for step in run.steps:
            before = seen.get(step.index, StepStatus.PENDING)
            if step.status == before:
                continue
            seen[step.index] = step.status
            if step.status == StepStatus.RUNNING:
                phase = "start"
            elif step.status in _ENDED and before != step.status:
                phase = "end"
            else:
                continue
            yield StepEvent(run.id, step.index, total, step.worker, phase, step.status, step.instruction)
        if run.status not in (RunStatus.RUNNING, RunStatus.INTERRUPTED) or (
                run.status == RunStatus.INTERRUPTED and not through_handover) or runs.active(run_id) is not None:
            return  # ended; or this server runs it now, and the caller follows it here
        if runs.draining:
            return  # this server is stopping: the caller answers with the run as it stands
        await anyio.sleep(POLL_S)
