"""The one definition of a percentile for every figure the benchmarks and tests report."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100) of `values`, interpolated linearly between the two nearest ranks
    (numpy's default); None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def percentiles_ms(values_s: Iterable[float], digits: int = 3) -> dict[str, float]:
    """{"p50_ms", "p99_ms"} of durations in seconds; {} when there are none."""
    values = list(values_s)
    if not values:
        return {}
    return {f"p{q}_ms": round(1000 * percentile(values, q), digits) for q in (50, 99)}  # type: ignore[operator]
