"""Summaries of repeated measurements: the median with its spread, never a single sample."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p10: float
    p90: float
    p99: float
    min: float
    max: float
    mean: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def spread(self, scale: float = 1.0, digits: int = 2) -> str:
        """'p10–p90 a–b' (or min–max when there are too few samples for percentiles to mean much)."""
        if self.n < 10:
            return f"min–max {self.min * scale:.{digits}f}–{self.max * scale:.{digits}f}"
        return f"p10–p90 {self.p10 * scale:.{digits}f}–{self.p90 * scale:.{digits}f}"


def summarise(values: Sequence[float]) -> Summary:
    return Summary(n=len(values), median=statistics.median(values), p10=percentile(values, 10),
                   p90=percentile(values, 90), p99=percentile(values, 99), min=min(values), max=max(values),
                   mean=statistics.fmean(values))
