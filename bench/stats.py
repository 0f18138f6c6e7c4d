"""Summary statistics of benchmark samples (pure; shared by the runly and the Celery side)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """n, median, p95, mean, min and max of ``values`` (all None when there are none)."""
    if not values:
        return {"n": 0, "median": None, "p95": None, "mean": None, "min": None, "max": None}
    return {
        "n": len(values),
        "median": median(values),
        "p95": percentile(values, 95),
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def rate(count: int, seconds: float | None) -> float | None:
    """Events per second, or None for an empty or unknown interval."""
    if seconds is None or seconds <= 0:
        return None
    return count / seconds


def ratio_of_medians(
    numerators: Sequence[float], denominators: Sequence[float], *, confidence: float = 0.9, resamples: int = 2000
) -> dict[str, Any]:
    """median(numerators) / median(denominators), with a bootstrap interval: both samples are resampled with
    replacement ``resamples`` times (a fixed seed: the same samples give the same interval) and the central
    ``confidence`` share of the resampled ratios is kept. Ratio and interval are None without samples."""
    if not numerators or not denominators or median(denominators) == 0:
        return {"ratio": None, "interval": [None, None]}
    generator = random.Random(1)
    ratios = []
    for _ in range(resamples):
        top = median(generator.choices(numerators, k=len(numerators)))
        bottom = median(generator.choices(denominators, k=len(denominators)))
        if bottom:
            ratios.append(top / bottom)
    tail = (1 - confidence) / 2 * 100
    return {
        "ratio": median(numerators) / median(denominators),
        "interval": [percentile(ratios, tail), percentile(ratios, 100 - tail)],
    }
