"""Latency summaries: nearest-rank percentiles over samples in seconds, shown in milliseconds."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def percentile(ordered: list[float], p: float) -> float:
    """Nearest rank: the smallest sample with at least p % of the samples at or below it."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples_s: list[float]) -> Summary:
    if not samples_s:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan)
    ordered = sorted(samples_s)
    return Summary(
        n=len(ordered),
        p50_ms=percentile(ordered, 50) * 1000,
        p90_ms=percentile(ordered, 90) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        max_ms=ordered[-1] * 1000,
        mean_ms=sum(ordered) / len(ordered) * 1000,
    )
