"""The load benchmarks' client harness (bench.load_client.drive): each session's run before the clock stays out of
the figures, the first timed runs start spread over the ramp, and a failed warm-up run is named as one."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from bench.load_client import START, Tally, drive


class Sessions:
    """Sessions of a stand-in service that answers at once, noting when each run started and on which session."""

    def __init__(self, run_s: float = 0.01, fail_first: bool = False) -> None:
        self.run_s, self.fail_first = run_s, fail_first
        self.opened = 0
        self.starts: list[tuple[int, float]] = []  # (session, perf_counter) of every run, the warm-up runs too

    @asynccontextmanager
    async def open(self) -> AsyncIterator[int]:
        self.opened += 1
        yield self.opened - 1

    async def one_run(self, session: int, tally: Tally, n: int) -> None:
        self.starts.append((session, time.perf_counter()))
        if self.fail_first and len(self.starts) == 1:
            raise ConnectionError("refused")
        await anyio.sleep(self.run_s)
        tally.latency.append(self.run_s)
        tally.last_end = time.perf_counter()


def _drive(sessions: Sessions, concurrency: int, runs: int, ramp_s: float) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        return await drive(sessions.open, sessions.one_run, concurrency, runs, 30.0, ramp_s)

    return anyio.run(go)


def test_warm_up_runs_stay_out_and_the_first_runs_follow_the_ramp(capsys: pytest.CaptureFixture[str]) -> None:
    sessions = Sessions(run_s=0.2)  # as long as a session's wait, so that every session takes a run in turn
    before = time.perf_counter()
    out = _drive(sessions, concurrency=4, runs=8, ramp_s=0.4)
    assert capsys.readouterr().out == START + "\n"
    assert (out["completed"], out["warm_up_runs"], out["sessions"], out["errors"]) == (8, 4, 4, {})
    assert len(sessions.starts) == 12
    # every session's first run came before any timed run: the clock started after all four
    warm, timed = sessions.starts[:4], sessions.starts[4:]
    assert sorted(s for s, _ in warm) == [0, 1, 2, 3]
    assert max(t for _, t in warm) < min(t for _, t in timed)
    clock = before + out["connect_s"]
    first = {s: t - clock for s, t in reversed(timed)}  # each session's first timed run
    # session k waits k × 0.1 s after the clock (`clock` is no later than the clock's start, and a loaded machine
    # only delays a start, so these are bounds that hold there too), and they start in that order
    assert sorted(first, key=first.__getitem__) == [0, 1, 2, 3]
    assert all(first[k] >= k * 0.1 - 0.005 for k in range(4))


def test_without_a_ramp_all_first_runs_start_together() -> None:
    sessions = Sessions()
    out = _drive(sessions, concurrency=3, runs=3, ramp_s=0.0)
    timed = [t for _, t in sessions.starts[3:]]
    assert out["completed"] == 3
    assert max(timed) - min(timed) < 0.2  # no waits between them (0.1 s apart under a ramp of 0.3)


def test_a_failed_warm_up_run_is_named_and_its_session_still_runs() -> None:
    sessions = Sessions(fail_first=True)
    out = _drive(sessions, concurrency=2, runs=4, ramp_s=0.0)
    assert out["errors"] == {"warm-up: ConnectionError": 1}
    assert (out["completed"], out["warm_up_runs"], out["sessions"]) == (4, 1, 2)
    assert {s for s, _ in sessions.starts[2:]} == {0, 1}
