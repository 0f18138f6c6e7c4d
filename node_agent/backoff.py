"""Capped exponential backoff with full jitter, for AWS calls the agent must not give up on lightly."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from runly_core.backoff import delay

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors worth retrying: the network, throttling, the service's own faults. Anything else is a bug or a
# refusal (a failed condition) that the caller handles.
_RETRYABLE_CODES = {
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "TransactionConflictException",
}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, BotoCoreError):
        return True  # connection errors, timeouts, credential refresh hiccups
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in _RETRYABLE_CODES or status >= 500
    return False


def retry(
    call: Callable[[], T],
    *,
    tries: int = 6,
    base: float = 0.2,
    cap: float = 10.0,
    stop: threading.Event | None = None,
    what: str = "AWS call",
) -> T:
    """Call until it succeeds or fails with a non-transient error; the last transient error is raised."""
    for attempt in range(tries):
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or attempt == tries - 1:
                raise
            pause = delay(attempt, base=base, cap=cap)
            log.warning("%s failed (%s); retrying in %.2f s", what, exc, pause)
            if stop is not None:
                stop.wait(pause)
            else:
                threading.Event().wait(pause)
    raise AssertionError("unreachable")
