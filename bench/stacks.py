"""Read py-spy's raw (collapsed) stacks and say where a process's CPU time went."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

# one frame of a collapsed stack: "function (path/to/file.py)" or "function (path/to/file.py:123)"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")
_SITE = re.compile(r"(?:site|dist)-packages/(?P<pkg>[A-Za-z0-9_]+)")
_STDLIB = re.compile(r"/lib/python3\.\d+/(?P<mod>[A-Za-z0-9_]+)")
PROJECT = "conductor_mcp"


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """Stacks (outermost frame first) with their sample counts."""
    stacks = []
    for line in path.read_text().splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        frames = []
        for part in body.split(";"):
            m = _FRAME.match(part)
            if m:
                frames.append((m["func"], m["path"]))
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def package(path: str) -> str:
    if f"/{PROJECT}/" in path or f"src/{PROJECT}" in path:
        return PROJECT
    m = _SITE.search(path)
    if m:
        return m["pkg"]
    m = _STDLIB.search(path)
    if m:
        return f"stdlib {m['mod']}"
    return Path(path).stem


def by_leaf_package(stacks: list[tuple[list[tuple[str, str]], int]]) -> Counter[str]:
    """Samples by the package of the innermost frame: where the CPU actually runs."""
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        counts[package(frames[-1][1])] += n
    return counts


def by_entry_package(stacks: list[tuple[list[tuple[str, str]], int]], skip: tuple[str, ...]) -> Counter[str]:
    """Samples by the first package below the event loop and the ASGI plumbing (`skip`): who asked for
    the work. A stack that never leaves `skip` counts as its innermost package."""
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        pkgs = [package(p) for _, p in frames]
        entry = next((p for p in pkgs if p not in skip), pkgs[-1])
        counts[entry] += n
    return counts


def by_project_function(stacks: list[tuple[list[tuple[str, str]], int]]) -> Counter[str]:
    """Samples charged to the innermost conductor_mcp function on the stack (with the library code it
    calls); stacks with no project frame count as '(outside conductor_mcp)'."""
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        owner = "(outside conductor_mcp)"
        for func, path in frames:
            if package(path) == PROJECT:
                owner = f"{Path(path).stem}.{func}"
        counts[owner] += n
    return counts


def by_leaf_function(stacks: list[tuple[list[tuple[str, str]], int]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        func, path = frames[-1]
        counts[f"{package(path)}:{Path(path).stem}.{func}"] += n
    return counts


def shares(counts: Counter[str], n: int = 8) -> list[tuple[str, float]]:
    total = sum(counts.values()) or 1
    return [(k, v / total) for k, v in counts.most_common(n)]
