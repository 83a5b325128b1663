"""/readyz's store half on both backends: ready with every migration, not ready without one, through the store."""

from __future__ import annotations

from conductor_mcp.store import MIGRATIONS, Store
from conductor_mcp.surfaces.probes import shared_readiness

from ..conftest import execute


def test_a_store_is_ready_only_with_every_migration(any_store: Store) -> None:
    assert any_store.applied_migrations() == {name for name, _ in MIGRATIONS}
    assert shared_readiness(any_store) is None
    execute(any_store, "DELETE FROM _migrations WHERE name = ?", MIGRATIONS[-1][0])
    assert shared_readiness(any_store) == (f"the trace store lacks 1 of this version's {len(MIGRATIONS)} "
                                           "migrations")


def test_a_store_that_does_not_answer_is_not_ready(any_store: Store) -> None:
    any_store.close()
    assert shared_readiness(any_store) == "the trace store does not answer"
