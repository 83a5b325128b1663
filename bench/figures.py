"""What one benchmark hands to the report: a row of the table, its raw data, and its notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figure:
    key: int
    name: str
    value: str  # as shown in the table: median and spread, with units
    target: str
    met: bool | None  # None: no target, or not measured here
    how: str
    data: dict[str, Any] = field(default_factory=dict)  # machine-readable, for results.json
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "value": self.value, "target": self.target, "met": self.met,
                "how": self.how, "data": self.data, "notes": self.notes}


def failed(key: int, name: str, target: str, how: str, error: BaseException) -> Figure:
    """A benchmark that raised: the table says so instead of the whole suite stopping."""
    return Figure(key, name, f"error: {type(error).__name__}: {error}"[:300], target, None, how,
                  {"error": repr(error)})
