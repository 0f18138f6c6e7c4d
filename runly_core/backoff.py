"""Capped exponential backoff with jitter: the one retry delay formula of the agent, the functions and the client."""

from __future__ import annotations

import random


def delay(attempt: int, *, base: float, cap: float, least: float = 0.0) -> float:
    """Seconds to wait before retry ``attempt + 1`` (``attempt`` counts from 0): uniform in
    [``least`` * ceiling, ceiling], where ceiling = min(``cap``, ``base`` * 2**attempt).

    ``least`` = 0 is full jitter: it spreads a crowd of clients that failed together furthest, so their retries do
    not arrive in step and fail together again. A caller whose wait must not collapse to nothing (a run's retry,
    which should give a failing dependency time) keeps a fraction of the ceiling (``least`` = 0.5: equal jitter).
    """
    if not 0.0 <= least <= 1.0:
        raise ValueError(f"least must be a fraction of the ceiling, not {least}")
    ceiling = min(cap, base * 2 ** max(0, attempt))
    return random.uniform(least * ceiling, ceiling)
