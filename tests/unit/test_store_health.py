"""A trace store that cannot be used as it is: damaged, truncated, unopenable or read-only, on real files."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor_mcp.errors import StoreError
from conductor_mcp.models import PlanInfo, RunStatus, Workflow
from conductor_mcp.store import Store

WF = Workflow.model_validate({"steps": [{"worker": "a", "instruction": "x"}]})
PLAN = PlanInfo(source="host", planner="host")


def filled(path: Path, runs: int = 300) -> list[str]:
    store = Store(path)
    ids = [store.create_run(f"task {i} " + "x" * 1000, WF, PLAN) for i in range(runs)]
    store.close()  # the last connection checkpoints the WAL into the file
    return ids


def truncated(path: Path) -> None:
    filled(path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size * 6 // 10)


def opened_and_checked(path: Path) -> None:
    store = Store(path)
    try:
        store.check()
    finally:
        store.close()


@pytest.mark.parametrize(("make", "problem"), [
    (lambda p: p.write_bytes(os.urandom(8192)), "file is not a database"),
    (truncated, "malformed"),
    (lambda p: p.mkdir(), "a folder, not a file"),
])
def test_a_damaged_or_unusable_file_is_one_clear_store_error(tmp_path: Path, make: object, problem: str) -> None:
    path = tmp_path / "t.db"
    make(path)  # type: ignore[operator]
    with pytest.raises(StoreError) as err:
        opened_and_checked(path)
    message = str(err.value)
    assert message.startswith(f"trace store {path}") and problem in message and "\n" not in message
    assert "CONDUCTOR_DB" in message


def test_a_store_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    with pytest.raises(StoreError, match=f"trace store {tmp_path / 'plain' / 't.db'}: .*plain"):
        Store(tmp_path / "plain" / "t.db")


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    folder = tmp_path / "ro"
    folder.mkdir()
    ids = filled(folder / "t.db", runs=3)
    folder.chmod(0o555)
    yield folder / "t.db", ids
    folder.chmod(0o755)


def test_a_store_in_a_read_only_folder_reads_and_refuses_writes(read_only_folder: tuple[Path, list[str]]) -> None:
    path, ids = read_only_folder
    store = Store(path)
    store.check()
    assert store.read_only is not None and "not writable" in store.read_only
    assert store.get_run(ids[0]).status == RunStatus.PLANNED
    assert [r["run_id"] for r in store.run_page(10)[0]] == ids[::-1]
    with pytest.raises(StoreError, match=r"is read-only .*runs can be read, not planned, run or rated"):
        store.create_run("new", WF, PLAN)
    with pytest.raises(StoreError, match="is read-only"):
        store.rate(ids[0], 1.0)
    store.close()


def test_a_read_only_file_of_an_old_schema_says_it_needs_upgrading(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        db.execute("INSERT INTO _migrations VALUES ('001_initial', 1.0)")
    path.chmod(0o444)
    with pytest.raises(StoreError, match=r"is read-only .* needs upgrading \(002_rewards, 003_lease"):
        Store(path)
