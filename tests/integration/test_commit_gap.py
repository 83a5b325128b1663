"""A paid call and its output are one commit. Read off the real SQLite connection's statement log while a run
with retries completes: every transaction that marks an attempt `ok` also marks its step completed with the
output, so no kill between two commits can leave a paid call whose output is lost (and re-bought on resume)."""

from __future__ import annotations

import pytest

from conductor_mcp.runs.engine import Engine
from conductor_mcp.store import Store
from conductor_mcp.store.sqlite import SQLiteStore

from ..conftest import http_registry, solve
from ..servers.openai_server import ScriptedServer

pytestmark = pytest.mark.anyio


def transactions(statements: list[str]) -> list[list[str]]:
    out: list[list[str]] = []
    current: list[str] | None = None
    for sql in statements:
        if sql.startswith("BEGIN"):
            current = []
        elif sql in ("COMMIT", "ROLLBACK"):
            if current is not None and sql == "COMMIT":
                out.append(current)
            current = None
        elif current is not None:
            current.append(sql)
    return out


async def test_an_ok_attempt_is_committed_with_its_steps_output(server: ScriptedServer, store: Store) -> None:
    server.set_faults(rate=0.4, kinds=["500"], seed=3)  # some attempts fail first: several per step
    engine = Engine(http_registry(server.base_url), store)
    statements: list[str] = []
    assert isinstance(store, SQLiteStore)  # its statements are traced by sqlite3 itself
    store._db.set_trace_callback(statements.append)
    workflow = {"steps": [{"worker": w, "instruction": f"Part {i} of the task", "access": "all"}
                          for i, w in enumerate(["alpha", "beta", "gamma"])]}
    run = await solve(engine, "Explain tides.", workflow=workflow)
    store._db.set_trace_callback(None)
    assert run.status == "completed"
    txs = transactions(statements)
    oks = [tx for tx in txs if any(s.startswith("UPDATE attempts SET status='ok'") for s in tx)]
    assert len(oks) == 3, [tx for tx in txs if any("attempts" in s for s in tx)]
    for tx in oks:
        assert any(s.startswith("UPDATE steps SET status='completed', output=") for s in tx), tx
    # and no completed step without its ok attempt in the same commit
    completing = [tx for tx in txs if any(s.startswith("UPDATE steps SET status='completed'") for s in tx)]
    assert completing == oks
    attempts = [a for step in run.steps for a in step.attempts]
    assert sum(a.status == "ok" for a in attempts) == 3 and len(attempts) > 3  # the retries happened
