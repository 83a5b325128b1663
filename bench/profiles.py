"""Turn a pyinstrument profile into a short table: where the time of the project's own code goes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from pyinstrument.frame import Frame

OUT_DIR = Path(__file__).resolve().parent / "out"  # git-ignored
PROJECT_MARK = "conductor_mcp"


def _label(frame: Frame) -> str:
    stem = Path(frame.file_path or "?").stem
    owner = f"{frame.class_name}." if frame.class_name else ""
    return f"{stem}.{owner}{frame.function}"


def charge_to_project(root: Frame) -> dict[str, float]:
    """Seconds charged to each conductor_mcp function: its own time plus the library code it calls
    (sqlite, pydantic, litellm, ...), but not other project functions, which get their own line.
    Time under no project function (the event loop, selectors) is charged to '(outside conductor_mcp)'."""
    totals: dict[str, float] = defaultdict(float)

    def walk(frame: Frame, owner: str) -> None:
        if frame.file_path and PROJECT_MARK in frame.file_path and not frame.is_synthetic:
            owner = _label(frame)
        own = frame.time - sum(c.time for c in frame.children)
        totals[owner] += max(own, 0.0)
        for child in frame.children:
            walk(child, owner)

    walk(root, "(outside conductor_mcp)")
    return dict(totals)


def top(totals: dict[str, float], n: int = 10) -> list[tuple[str, float]]:
    return sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:n]
