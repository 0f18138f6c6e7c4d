"""runly_core.table's batch reads: what DynamoDB leaves unprocessed is retried with backoff, then refused loudly."""

from __future__ import annotations

from typing import Any

import pytest

from runly_core.table import BATCH_WRITE_ATTEMPTS, Unread, batch_get


class Throttling:
    """A BatchGetItem that leaves the first ``refusals`` calls' keys unprocessed, then answers them all."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls: list[list[dict[str, str]]] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        ((table, request),) = RequestItems.items()
        keys = request["Keys"]
        assert request["ConsistentRead"] is True
        self.calls.append(keys)
        if len(self.calls) <= self.refusals:
            # Half answered, half left for later: what a throttled or 16 MB-bounded call does.
            return {"Responses": {table: [dict(keys[0])]}, "UnprocessedKeys": {table: {"Keys": keys[1:]}}}
        return {"Responses": {table: [dict(key) for key in keys]}}


KEYS = [{"pk": f"k{n}", "sk": "RUN"} for n in range(4)]


def test_unprocessed_keys_are_retried_with_backoff_until_all_are_read() -> None:
    client, slept = Throttling(refusals=2), list[float]()
    found = batch_get(client, "t", KEYS, sleep=slept.append)
    assert sorted(item["pk"] for item in found) == ["k0", "k1", "k2", "k3"]
    assert [len(keys) for keys in client.calls] == [4, 3, 2]  # only what was left over is asked again
    assert len(slept) == 2 and all(0 < seconds <= 1.0 for seconds in slept)


def test_keys_left_unprocessed_after_every_attempt_raise_unread() -> None:
    client, slept = Throttling(refusals=100), list[float]()
    with pytest.raises(Unread):
        batch_get(client, "t", [*KEYS, *KEYS, *KEYS], sleep=slept.append)
    assert len(client.calls) == BATCH_WRITE_ATTEMPTS and len(slept) == BATCH_WRITE_ATTEMPTS - 1


def test_more_than_100_keys_go_in_calls_of_100() -> None:
    client = Throttling(refusals=0)
    keys = [{"pk": f"k{n}", "sk": "RUN"} for n in range(250)]
    assert len(batch_get(client, "t", keys, sleep=lambda seconds: None)) == 250
    assert [len(call) for call in client.calls] == [100, 100, 50]
