"""What every data-access layer of the one DynamoDB table shares: how a failed condition is recognised, the
batched writes and reads (with their retries), and the domain exception of an item that exists already.

Tables and clients are always passed in (a boto3 ``Table`` resource, its ``meta.client``): nothing here builds a
client, so moto (or a node's own credentials) is in place before any exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from runly_core import backoff

# BatchWriteItem takes 25 requests, BatchGetItem 100 keys, TransactWriteItems 100 actions.
BATCH_WRITE_SIZE = 25
BATCH_GET_SIZE = 100
TRANSACTION_SIZE = 100
# Calls per batch write or read, the first included, before what DynamoDB left unprocessed is given up on.
BATCH_WRITE_ATTEMPTS = 5
BATCH_RETRY_BASE_SECONDS = 0.05
BATCH_RETRY_CAP_SECONDS = 1.0


class AlreadyExists(Exception):
    """A put conditional on its item being new found one under its key."""


class Unwritten(Exception):
    """A batch write left items unprocessed after every retry (throttling): some of it may have been written."""


class Unread(Exception):
    """A batch read left keys unprocessed after every retry (throttling): what was asked for is not all known, so
    nothing read is answered (the API answers 503; a caller retries)."""


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def condition_failed(exc: BaseException, item: int | None = None) -> bool:
    """Whether a DynamoDB call failed because a condition did not hold.

    A single write: its ConditionalCheckFailedException. A transaction (TransactionCanceledException): with ``item``,
    whether the action at that position of the request failed its condition; without, whether any did, or the
    cancellation gave no reasons (a transaction of conditions alone is cancelled only by one of them).
    """
    code = error_code(exc)
    if code == "ConditionalCheckFailedException":
        return item is None
    if code != "TransactionCanceledException":
        return False
    response: dict[str, Any] = getattr(exc, "response", {})
    failed = [reason.get("Code") == "ConditionalCheckFailed" for reason in response.get("CancellationReasons") or []]
    if item is None:
        return any(failed) or not failed
    return item < len(failed) and failed[item]


def batch_write(
    client: Any, table_name: str, requests: Sequence[dict[str, Any]], *, sleep: Callable[[float], None] = time.sleep
) -> None:
    """BatchWriteItem, 25 requests per call, retrying what DynamoDB left unprocessed with backoff; raises
    ``Unwritten`` if some stay unprocessed after every attempt."""
    for start in range(0, len(requests), BATCH_WRITE_SIZE):
        pending = list(requests[start : start + BATCH_WRITE_SIZE])
        for attempt in range(BATCH_WRITE_ATTEMPTS):
            if attempt:
                sleep(backoff.delay(attempt, base=BATCH_RETRY_BASE_SECONDS, cap=BATCH_RETRY_CAP_SECONDS))
            response = client.batch_write_item(RequestItems={table_name: pending})
            pending = response.get("UnprocessedItems", {}).get(table_name, [])
            if not pending:
                break
        if pending:
            raise Unwritten(f"{len(pending)} items left unprocessed after {BATCH_WRITE_ATTEMPTS} attempts")


def batch_get(
    client: Any, table_name: str, keys: Sequence[dict[str, str]], *, sleep: Callable[[float], None] = time.sleep
) -> list[dict[str, Any]]:
    """BatchGetItem, strongly consistent, 100 keys per call, retrying what DynamoDB left unprocessed (it does so
    under throttling, or past 16 MB a call) with backoff; raises ``Unread`` if some keys stay unprocessed after
    BATCH_WRITE_ATTEMPTS calls: a row is never silently missing. Items come back in no particular order."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(keys), BATCH_GET_SIZE):
        pending = list(keys[start : start + BATCH_GET_SIZE])
        for attempt in range(BATCH_WRITE_ATTEMPTS):
            if attempt:
                sleep(backoff.delay(attempt, base=BATCH_RETRY_BASE_SECONDS, cap=BATCH_RETRY_CAP_SECONDS))
            response = client.batch_get_item(RequestItems={table_name: {"Keys": pending, "ConsistentRead": True}})
            found.extend(response.get("Responses", {}).get(table_name, []))
            pending = response.get("UnprocessedKeys", {}).get(table_name, {}).get("Keys", [])
            if not pending:
                break
        if pending:
            raise Unread(f"{len(pending)} keys left unprocessed after {BATCH_WRITE_ATTEMPTS} attempts")
    return found


@contextmanager
def refused_as(refusal: Callable[[], Exception], *, item: int | None = None) -> Iterator[None]:
    """Within: a DynamoDB call whose failed condition (``condition_failed``, of ``item`` in a transaction) means
    ``refusal()``, the store's domain exception, raised ``from`` the ClientError; any other error passes through."""
    try:
        yield
    except Exception as exc:
        if condition_failed(exc, item):
            raise refusal() from exc
        raise
