"""Capped exponential backoff with full jitter: the one formula the agent and the API clients retry with."""

from __future__ import annotations

import random


def full_jitter(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before retry ``attempt + 1``: uniform in [0, min(cap, base * 2**attempt)].

    Full jitter (rather than a fixed exponential) spreads a crowd of clients that failed together, so their
    retries do not arrive in step and fail together again.
    """
    return random.uniform(0, min(cap, base * 2**attempt))
