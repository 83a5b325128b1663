"""The one interface of the trace store: ownership (leases.py), writes (writes.py) and reads (queries.py), over
the hooks of base.py that each backend implements (sqlite.py, postgres.py)."""

from __future__ import annotations

from pathlib import Path

from .queries import Queries
from .writes import Writes


class Store(Writes, Queries):
    """A trace store. `Store(target)` opens the backend `target` names, as open_store does: a path (SQLite), a
    `postgresql://` URL, or None (CONDUCTOR_DB, else the per-user default file)."""

    def __new__(cls, target: str | Path | None = None) -> Store:
        if cls is Store:  # the backend's __init__ follows, with the same target
            from . import backend_for

            return super().__new__(backend_for(target))
        return super().__new__(cls)
