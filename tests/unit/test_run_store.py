"""The run store's named conditions and layout (runly_core.run_store), the one conditional-failure helper
(runly_core.table) and the one backoff (runly_core.backoff), without AWS: a table that records what it is asked.
The same transitions run against moto in tests/integration/test_lease.py, test_maintenance.py and test_runs_api.py."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from runly_core import backoff, resources
from runly_core.contracts import AttemptView, FailureReason, RunState
from runly_core.records import RunRecord, utcnow
from runly_core.run_store import (
    API_CREATED,
    LEASE_ATTRIBUTES,
    RUN_INDEX_SHARDS,
    LeaseLost,
    RunChanged,
    RunStore,
    StateChanged,
    api_run,
    index_shard,
    run_item,
    run_key,
)
from runly_core.table import AlreadyExists, condition_failed, refused_as


def _error(code: str, reasons: list[str] | None = None) -> ClientError:
    response: dict[str, Any] = {"Error": {"Code": code, "Message": code}}
    if reasons is not None:
        response["CancellationReasons"] = [{"Code": reason} for reason in reasons]
    return ClientError(response, "UpdateItem")  # type: ignore[arg-type]


class _Table:
    """Records each call; fails the next ones with ``fail`` (a ClientError) while it is set."""

    name = "runly-test"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: ClientError | None = None
        self.fail_next: list[ClientError] = []  # raised once each, before ``fail``
        self.item: dict[str, Any] | None = None
        self.meta = type("Meta", (), {"client": self})()

    def _call(self, operation: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((operation, kwargs))
        if operation != "get_item" and self.fail_next:
            raise self.fail_next.pop(0)
        if self.fail is not None and operation != "get_item":
            raise self.fail
        return {}

    def update_item(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("update_item", kwargs)

    def put_item(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("put_item", kwargs)

    def transact_write_items(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("transact_write_items", kwargs)

    def get_item(self, **kwargs: Any) -> dict[str, Any]:
        self._call("get_item", kwargs)
        return {"Item": self.item} if self.item is not None else {}


def _run(state: RunState = RunState.QUEUED, **changes: Any) -> RunRecord:
    return RunRecord(
        run_id="run_prod_20250101000000_0123456789ab",
        state=state,
        package="p",
        version="1",
        job="j",
        entry_point="p:J",
        environment="prod",
        config_json="{}",
        timeout_seconds=60,
        max_attempts=3,
        bundle_key="k",
        bundle_sha256="0" * 64,
        created_at="2025-01-01T00:00:00.000Z",
        **changes,
    )


def _leased(until: int = 1_000) -> RunRecord:
    attempt = AttemptView(number=1, node_id="node-a", started_at=utcnow())
    return _run(RunState.RUNNING, attempt=1, lease_owner="node-a", lease_until_ms=until, attempts=[attempt])


# ---------------------------------------------------------------- the one conditional-failure helper
def test_a_failed_condition_is_recognised_in_a_write_and_in_a_transaction_by_position() -> None:
    assert condition_failed(_error("ConditionalCheckFailedException"))
    assert not condition_failed(_error("ProvisionedThroughputExceededException"))
    assert not condition_failed(ValueError("not an AWS error"))
    cancelled = _error("TransactionCanceledException", ["None", "ConditionalCheckFailed"])
    assert condition_failed(cancelled) and condition_failed(cancelled, 1)
    assert not condition_failed(cancelled, 0) and not condition_failed(cancelled, 5)
    # A transaction cancelled for another reason (a conflict) is no failed condition
    assert not condition_failed(_error("TransactionCanceledException", ["TransactionConflict"]))
    # Without reasons: a transaction of conditions was cancelled by one of them
    assert condition_failed(_error("TransactionCanceledException", []))
    assert not condition_failed(_error("ConditionalCheckFailedException"), 0)


def test_a_refused_condition_becomes_the_stores_domain_exception_and_other_errors_pass_through() -> None:
    class Missing(Exception):
        pass

    with pytest.raises(Missing) as raised, refused_as(Missing):
        raise _error("ConditionalCheckFailedException")
    assert isinstance(raised.value.__cause__, ClientError)
    with pytest.raises(Missing), refused_as(Missing, item=1):
        raise _error("TransactionCanceledException", ["None", "ConditionalCheckFailed"])
    with pytest.raises(ClientError), refused_as(Missing, item=0):
        raise _error("TransactionCanceledException", ["None", "ConditionalCheckFailed"])
    with pytest.raises(ClientError), refused_as(Missing):
        raise _error("ThrottlingException")


# ---------------------------------------------------------------- the layout
def test_a_run_item_carries_its_keys_its_index_attributes_and_the_api_mark() -> None:
    item = run_item(_leased(until=42))
    assert (item[resources.PARTITION_KEY], item[resources.SORT_KEY]) == (
        "ENV#prod#RUN#run_prod_20250101000000_0123456789ab",
        "RUN",
    )
    shard = index_shard("run_prod_20250101000000_0123456789ab")
    assert item[resources.RUNS_BY_ENVIRONMENT.partition_key] == f"ENV#prod#RUNS#{shard:02d}"
    assert (
        item[resources.RUNS_BY_ENVIRONMENT.sort_key] == "2025-01-01T00:00:00.000Z#run_prod_20250101000000_0123456789ab"
    )
    assert item[resources.RUNS_BY_LEASE.partition_key] == f"ENV#prod#LEASED#{shard:02d}"
    assert item[resources.RUNS_BY_LEASE.sort_key] == "000000000000042"
    assert item[API_CREATED] is True and api_run(item) is not None
    forged = run_item(_leased(), api_created=False)
    assert API_CREATED not in forged and api_run(forged) is None
    # A terminal run is in no lease partition
    assert resources.RUNS_BY_LEASE.partition_key not in run_item(_run(RunState.SUCCEEDED, lease_until_ms=5))


def test_an_api_created_item_a_node_made_invalid_is_no_run() -> None:
    item = {**run_item(_run()), "state": "Exploded"}
    assert api_run(item) is None


# ---------------------------------------------------------------- the named conditions of each transition
def test_create_is_conditional_on_a_new_item_and_a_taken_id_is_already_exists() -> None:
    table = _Table()
    store = RunStore(table)
    store.create(_run())
    # Its CONFIG item first, then the run item, each only if new: no run exists without its config
    (config_op, config_call), (run_op, run_call) = table.calls
    assert (config_op, config_call["Item"]["sk"], run_op, run_call["Item"]["sk"]) == (
        "put_item",
        "CONFIG",
        "put_item",
        "RUN",
    )
    assert config_call["ConditionExpression"] == run_call["ConditionExpression"] == RunStore.IS_NEW
    assert "config_json" not in run_call["Item"] and run_call["Item"]["config_bytes"] == 2
    table.fail = _error("ConditionalCheckFailedException")
    with pytest.raises(AlreadyExists):
        store.create(_run())


def test_a_first_claim_is_conditional_on_the_run_as_read_and_a_takeover_on_its_lease_too() -> None:
    table = _Table()
    store = RunStore(table)
    claimed = store.claim(_run(), "node-b", 5_000)
    assert table.calls[-1][1]["ConditionExpression"] == RunStore.AS_READ
    assert (claimed.attempt, claimed.lease_owner, claimed.lease_until_ms) == (1, "node-b", 5_000)

    store.claim(_leased(until=1_000), "node-b", 5_000)
    call = table.calls[-1][1]
    assert call["ConditionExpression"] == f"{RunStore.AS_READ} AND {RunStore.LEASE_AS_READ}"
    assert call["ExpressionAttributeValues"][":prev_until"] == 1_000
    # The claim's write names only attributes a node may write (functions.nodes.policy) and asks nothing back
    assert "ReturnValues" not in call
    written = call["ExpressionAttributeValues"]
    assert written[f":{resources.RUNS_BY_LEASE.sort_key}"] == "000000000005000"

    table.fail = _error("ConditionalCheckFailedException")
    with pytest.raises(RunChanged):
        store.claim(_leased(), "node-b", 5_000)


def test_closing_an_abandoned_run_is_conditional_on_its_lease_as_read() -> None:
    table = _Table()
    store = RunStore(table)
    store.end_abandoned(_leased(until=7), RunState.QUEUED, FailureReason.NODE_LOST, "lease expired")
    call = table.calls[-1][1]
    assert call["ConditionExpression"] == f"{RunStore.AS_READ} AND {RunStore.LEASE_AS_READ}"
    assert call["ExpressionAttributeValues"][":prev_until"] == 7
    assert call["UpdateExpression"].endswith("REMOVE " + ", ".join(LEASE_ATTRIBUTES))
    # A dead letter's run was never leased (or its lease ended): that, as read, is the condition
    store.end_abandoned(_run(), RunState.FAILED, FailureReason.DEAD_LETTER, "dead letter")
    assert table.calls[-1][1]["ConditionExpression"] == f"{RunStore.AS_READ} AND {RunStore.NEVER_LEASED}"
    table.fail = _error("ConditionalCheckFailedException")
    with pytest.raises(RunChanged):
        store.end_abandoned(_leased(), RunState.QUEUED, FailureReason.NODE_LOST, "lease expired")


def test_the_lease_holders_writes_are_fenced_and_a_lost_lease_is_lease_lost() -> None:
    table = _Table()
    store = RunStore(table)
    record = _leased()
    store.end_attempt(record, "node-a", state=RunState.SUCCEEDED, output_json="1")
    assert table.calls[-1][1]["ConditionExpression"] == RunStore.HOLDS_LEASE
    store.write_checkpoint(record, "node-a", "{}")
    check = table.calls[-1][1]["TransactItems"][0]["ConditionCheck"]
    assert check["ConditionExpression"] == RunStore.HOLDS_LEASE
    assert (
        check["ExpressionAttributeValues"][":attempt"] == 1 and check["ExpressionAttributeValues"][":node"] == "node-a"
    )

    table.fail = _error("ConditionalCheckFailedException")
    with pytest.raises(LeaseLost):
        store.end_attempt(record, "node-a", state=RunState.FAILED)
    table.fail = _error("TransactionCanceledException", ["ConditionalCheckFailed", "None"])
    with pytest.raises(LeaseLost):
        store.write_checkpoint(record, "node-a", "{}")
    # Any other error is the caller's to handle (the agent retries transient ones)
    table.fail = _error("ProvisionedThroughputExceededException")
    with pytest.raises(ClientError):
        store.end_attempt(record, "node-a", state=RunState.FAILED)


def test_a_heartbeat_is_one_write_unless_its_condition_shows_a_cancel_a_handoff_or_a_lost_lease() -> None:
    table = _Table()
    store = RunStore(table)
    record = _leased()
    assert store.renew(record, "node-a", 9_000).item is None
    (only,) = table.calls
    expected = f"{RunStore.HOLDS_LEASE} AND {RunStore.STILL_RUNNING} AND {RunStore.NO_HANDOFF}"
    assert only[1]["ConditionExpression"] == expected

    # When the beat's condition fails but the plain fence holds (a cancel asked): read, renew, answer the item
    table.calls.clear()
    table.item = {"state": RunState.CANCELLING.value}
    table.fail_next = [_error("ConditionalCheckFailedException")]
    assert store.renew(record, "node-a", 9_000).item == {"state": RunState.CANCELLING.value}
    assert [operation for operation, _ in table.calls] == ["update_item", "get_item", "update_item"]
    assert table.calls[-1][1]["ConditionExpression"] == RunStore.HOLDS_LEASE

    # When the plain fence fails too, the lease is lost
    table.fail = _error("ConditionalCheckFailedException")
    with pytest.raises(LeaseLost):
        store.renew(record, "node-a", 9_000)


def test_a_handoff_is_offered_only_to_the_live_holder_and_only_once() -> None:
    table = _Table()
    store = RunStore(table)
    assert store.hand_over(_leased(), {"receipt_handle": "r"})
    assert table.calls[-1][1]["ConditionExpression"] == f"{RunStore.HOLDS_LEASE} AND {RunStore.NO_HANDOFF}"
    assert table.calls[-1][1]["ExpressionAttributeValues"][":handoff"]["attempt"] == 1
    table.fail = _error("ConditionalCheckFailedException")
    assert not store.hand_over(_leased(), {"receipt_handle": "r"})
    assert not store.hand_over(_run(), {"receipt_handle": "r"})  # no holder


def test_the_apis_cancels_are_conditional_on_the_state_it_read() -> None:
    table = _Table()
    store = RunStore(table)
    table.fail = _error("ConditionalCheckFailedException")
    with pytest.raises(StateChanged):
        store.request_cancel("run_prod_20250101000000_0123456789ab", now="t", requested_by="k")
    call = table.calls[-1][1]
    assert call["ConditionExpression"] == RunStore.IN_STATE
    assert call["ExpressionAttributeValues"][":expected"] == RunState.RUNNING.value
    assert call["Key"] == run_key("run_prod_20250101000000_0123456789ab")
    with pytest.raises(StateChanged):
        store.cancel_queued("run_prod_20250101000000_0123456789ab", now="t", error={})
    assert table.calls[-1][1]["ExpressionAttributeValues"][":expected"] == RunState.QUEUED.value


# ---------------------------------------------------------------- the one backoff
def test_backoff_is_capped_exponential_with_the_callers_jitter() -> None:
    full = [backoff.delay(3, base=0.5, cap=30.0) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in full) and min(full) < 1.0  # full jitter reaches down near 0
    equal = [backoff.delay(3, base=0.5, cap=30.0, least=0.5) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in equal)
    assert all(d <= 30.0 for d in (backoff.delay(20, base=0.5, cap=30.0) for _ in range(50)))
    with pytest.raises(ValueError, match="least"):
        backoff.delay(1, base=1, cap=1, least=2)


def test_index_shard_is_stable_and_spreads_runs_evenly() -> None:
    # Every writer computes a run's shard from its id alone, so the value must not depend on the process (Python's
    # str hash is salted per process): a fixed id maps to a fixed shard, and ids spread over all shards.
    # A changed function would re-key every index entry of an existing table: this value is part of the key design.
    assert index_shard("run_prod_20261202120000_0123456789ab") == 3
    counts = [0] * RUN_INDEX_SHARDS
    for n in range(16_000):
        counts[index_shard(f"run_prod_20261202120000_{n:012x}")] += 1
    assert min(counts) > 800 and max(counts) < 1200, counts
