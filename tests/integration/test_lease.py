"""The run lease protocol (claim, heartbeat, fenced completion) against in-process moto."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import boto3
import pytest

from node_agent.aws import AgentAws, ClaimRefused, Delivery, LeaseLost
from runly.wire import Checkpoint
from runly_core import resources
from runly_core.contracts import FailureReason, RunMessage, RunState
from runly_core.records import utcnow
from runly_core.run_store import MESSAGE_HANDOFF, RunChanged, checkpoint_key, index_shard, run_key
from tests.support.runs import put_run
from tests.support.runs import queued_run as _queued_run

LEASE = 30


@pytest.fixture
def agent_aws(aws: dict[str, str], names: resources.ResourceNames) -> AgentAws:
    return AgentAws(queue_url=aws["default"], table_name=names.table, bucket=names.feed_bucket)


def now_ms() -> int:
    return int(time.time() * 1000)


def test_claim_takes_the_lease_as_attempt_one(agent_aws: AgentAws, names: resources.ResourceNames) -> None:
    _queued_run(names)
    record = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    assert record.state is RunState.RUNNING
    assert record.attempt == 1 and record.lease_owner == "node-a"
    assert [(a.number, a.node_id) for a in record.attempts] == [(1, "node-a")]
    # The leased run is visible to the reaper's index.
    item = boto3.resource("dynamodb").Table(names.table).get_item(Key=run_key("run_default_1"))["Item"]
    assert item[resources.RUNS_BY_LEASE.partition_key] == f"ENV#default#LEASED#{index_shard('run_default_1'):02d}"


def test_a_live_lease_is_not_taken_twice(agent_aws: AgentAws, names: resources.ResourceNames) -> None:
    _queued_run(names)
    agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    with pytest.raises(ClaimRefused) as refused:
        agent_aws.claim("run_default_1", "node-b", LEASE, now_ms())
    assert not refused.value.terminal
    assert 0 < refused.value.retry_in <= LEASE + 1


def test_an_expired_lease_is_taken_over_and_the_lost_attempt_is_closed(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    # Given node A claimed the run and then went silent past its lease
    _queued_run(names)
    first = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    later = now_ms() + (LEASE + 1) * 1000

    # When node B receives the message again
    second = agent_aws.claim("run_default_1", "node-b", LEASE, later)

    # Then B holds attempt 2, and attempt 1 is recorded as lost with its node
    assert second.attempt == 2 and second.lease_owner == "node-b"
    assert second.attempts[0].reason is FailureReason.NODE_LOST and second.attempts[0].ended_at is not None
    # And A, waking up, can neither heartbeat nor complete: it is fenced off
    with pytest.raises(LeaseLost):
        agent_aws.extend_lease(first, "node-a", later + 1000)
    with pytest.raises(LeaseLost):
        agent_aws.end_attempt(first, "node-a", state=RunState.SUCCEEDED, output={"late": True})
    # While B completes exactly once
    agent_aws.end_attempt(second, "node-b", state=RunState.SUCCEEDED, output={"by": "b"})
    final = agent_aws.get_run("run_default_1")
    assert final is not None and final.state is RunState.SUCCEEDED
    assert json.loads(final.output_json or "null") == {"by": "b"}
    with pytest.raises(LeaseLost):
        agent_aws.end_attempt(second, "node-b", state=RunState.FAILED, error={"message": "twice"})


def test_an_expired_lease_is_taken_over_only_once_it_ended_a_fence_margin_ago(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    # Given node A's lease, which its job stops before, by FENCE_MARGIN_MS (runly.fencing)
    _queued_run(names)
    first = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    assert first.lease_until_ms is not None

    # When node B receives the message just after the lease ended, it does not take it (its clock may be ahead)
    with pytest.raises(ClaimRefused) as refused:
        agent_aws.claim("run_default_1", "node-b", LEASE, first.lease_until_ms + resources.FENCE_MARGIN_MS // 2)
    assert refused.value.retry_in == 1 and not refused.value.terminal

    # Then it does once the lease ended the margin ago
    second = agent_aws.claim("run_default_1", "node-b", LEASE, first.lease_until_ms + resources.FENCE_MARGIN_MS + 1)
    assert second.attempt == 2 and second.lease_owner == "node-b"


def test_a_takeover_fails_when_the_holder_renewed_after_it_was_judged_expired(
    agent_aws: AgentAws, names: resources.ResourceNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given node A's lease, judged expired by node B, and A renewing it (and telling its job) just before B's write
    _queued_run(names)
    first = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    later = now_ms() + (LEASE + 2) * 1000
    take_lease = agent_aws.runs.claim

    def renewed_meanwhile(previous: Any, node_id: str, until: int) -> Any:
        agent_aws.extend_lease(first, "node-a", later + LEASE * 1000)
        return take_lease(previous, node_id, until)

    monkeypatch.setattr(agent_aws.runs, "claim", renewed_meanwhile)

    # When B's takeover write lands, it fails: two jobs would run at once otherwise
    with pytest.raises(ClaimRefused):
        agent_aws.claim("run_default_1", "node-b", LEASE, later)

    # Then A still holds the run, with the lease it renewed
    run = agent_aws.get_run("run_default_1")
    assert run is not None and (run.attempt, run.lease_owner, run.lease_until_ms) == (1, "node-a", later + LEASE * 1000)


def test_a_terminal_run_is_refused_for_good(agent_aws: AgentAws, names: resources.ResourceNames) -> None:
    _queued_run(names)
    record = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    agent_aws.end_attempt(record, "node-a", state=RunState.SUCCEEDED, output=1)
    with pytest.raises(ClaimRefused) as refused:
        agent_aws.claim("run_default_1", "node-b", LEASE, now_ms())
    assert refused.value.terminal
    with pytest.raises(ClaimRefused) as missing:
        agent_aws.claim("no_such_run", "node-b", LEASE, now_ms())
    assert missing.value.terminal


def test_retry_returns_the_run_to_queued_and_the_next_claim_is_attempt_two(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    _queued_run(names)
    first = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    agent_aws.end_attempt(
        first, "node-a", state=RunState.QUEUED, reason=FailureReason.USER_ERROR, error={"message": "boom"}
    )
    queued = agent_aws.get_run("run_default_1")
    assert queued is not None and queued.state is RunState.QUEUED and queued.lease_owner is None
    assert queued.attempts[0].reason is FailureReason.USER_ERROR and queued.attempts[0].error == "boom"

    second = agent_aws.claim("run_default_1", "node-b", LEASE, now_ms())
    assert second.attempt == 2 and len(second.attempts) == 2


def test_heartbeat_extends_the_lease_and_reports_a_cancel(agent_aws: AgentAws, names: resources.ResourceNames) -> None:
    _queued_run(names)
    record = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    until = now_ms() + 120_000
    assert agent_aws.extend_lease(record, "node-a", until) is RunState.RUNNING
    stored = agent_aws.get_run("run_default_1")
    assert stored is not None and stored.lease_until_ms == until

    boto3.resource("dynamodb").Table(names.table).update_item(
        Key=run_key("run_default_1"),
        UpdateExpression="SET #s = :c",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":c": RunState.CANCELLING.value},
    )
    assert agent_aws.extend_lease(record, "node-a", until) is RunState.CANCELLING


def test_checkpoints_are_written_only_by_the_lease_holder(agent_aws: AgentAws, names: resources.ResourceNames) -> None:
    _queued_run(names)
    first = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    agent_aws.write_checkpoint(
        first, "node-a", Checkpoint(watermark=10, last_item_id="9", attempt=1, written_at=utcnow())
    )
    stored = agent_aws.get_checkpoint("run_default_1")
    assert stored is not None and stored.watermark == 10 and stored.last_item_id == "9"

    # Once another node took the run over, the old attempt's checkpoint is refused and the stored one stays
    second = agent_aws.claim("run_default_1", "node-b", LEASE, now_ms() + (LEASE + 1) * 1000)
    with pytest.raises(LeaseLost):
        agent_aws.write_checkpoint(first, "node-a", Checkpoint(watermark=99, attempt=1, written_at=utcnow()))
    resumed = agent_aws.get_checkpoint("run_default_1")
    assert resumed is not None and resumed.watermark == 10
    agent_aws.write_checkpoint(second, "node-b", Checkpoint(watermark=15, attempt=2, written_at=utcnow()))
    assert (agent_aws.get_checkpoint("run_default_1") or resumed).watermark == 15


@contextmanager
def dynamodb_calls(agent_aws: AgentAws) -> Iterator[list[str]]:
    """The DynamoDB operations the adapter sends while the block runs, in order."""
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    events = agent_aws._dynamodb.meta.events
    events.register("before-call.dynamodb", record)
    try:
        yield calls
    finally:
        events.unregister("before-call.dynamodb", record)


def test_a_first_claim_is_one_read_one_conditional_write_and_its_config_and_reads_no_checkpoint(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    _queued_run(names)
    with dynamodb_calls(agent_aws) as calls:
        record = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
        checkpoint = agent_aws.checkpoint_for(record)
    # The read: the node's policy lets its writes return no attributes (functions.nodes.policy), so the run comes
    # from a read, and the write is conditional on the run being as read; the config (its own item) is read once
    # the lease is ours.
    assert calls == ["GetItem", "UpdateItem", "GetItem"]
    assert record.attempt == 1 and record.lease_owner == "node-a" and checkpoint is None
    assert record.config_json == '{"name": "Ada"}'


def test_a_lost_claim_reads_no_config(agent_aws: AgentAws, names: resources.ResourceNames) -> None:
    _queued_run(names)
    read = agent_aws.get_run("run_default_1")
    assert read is not None and read.config_json is None  # the run item alone holds only its size
    agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    with dynamodb_calls(agent_aws) as calls, pytest.raises(RunChanged):
        agent_aws.runs.claim(read, "node-b", now_ms() + LEASE * 1000)
    assert calls == ["UpdateItem"]


def test_a_retry_is_claimed_as_attempt_two_and_resumes_from_its_checkpoint(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    # Given attempt 1 checkpointed, failed and went back to the queue
    _queued_run(names)
    first = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    agent_aws.write_checkpoint(first, "node-a", Checkpoint(watermark=7, attempt=1, written_at=utcnow()))
    agent_aws.end_attempt(
        first, "node-a", state=RunState.QUEUED, reason=FailureReason.USER_ERROR, error={"message": "x"}
    )

    # When another node claims it
    with dynamodb_calls(agent_aws) as calls:
        second = agent_aws.claim("run_default_1", "node-b", LEASE, now_ms())
        checkpoint = agent_aws.checkpoint_for(second)

    # Then it is attempt 2, and it gets its config and attempt 1's checkpoint (two GetItems: no batch call is a
    # node's, functions.nodes.policy)
    assert calls == ["GetItem", "UpdateItem", "GetItem", "GetItem"]
    assert second.attempt == 2 and [a.number for a in second.attempts] == [1, 2]
    assert checkpoint is not None and checkpoint.watermark == 7


def test_a_resumed_requeue_gets_the_copied_checkpoint_on_its_first_attempt(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    # Given a run requeued with --resume: the API put the original's checkpoint on it before dispatching it
    table = boto3.resource("dynamodb").Table(names.table)
    requeued = _queued_run(names, "run_default_2").model_copy(update={"requeued_from": "run_default_1"})
    put_run(table, requeued)
    copied = Checkpoint(watermark=40, last_item_id="39", attempt=2, written_at=utcnow())
    table.put_item(
        Item={
            **checkpoint_key("run_default_2"),
            "checkpoint_json": copied.model_dump_json(),
            "copied_from": "run_default_1",
        }
    )

    record = agent_aws.claim("run_default_2", "node-a", LEASE, now_ms())

    assert record.attempt == 1
    assert agent_aws.checkpoint_for(record) == copied


def test_a_cancel_whose_node_was_lost_ends_cancelled_when_its_message_comes_back(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    # Given a run asked to cancel while its node was already gone
    _queued_run(names)
    agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key=run_key("run_default_1"),
        UpdateExpression="SET #s = :c",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":c": RunState.CANCELLING.value},
    )

    # When another node receives its message after the lease ran out, it runs nothing and closes the run
    with pytest.raises(ClaimRefused) as refused:
        agent_aws.claim("run_default_1", "node-b", LEASE, now_ms() + (LEASE + 1) * 1000)
    assert refused.value.terminal
    final = agent_aws.get_run("run_default_1")
    assert final is not None and final.state is RunState.CANCELLED and final.lease_owner is None
    assert [(a.number, a.reason) for a in final.attempts] == [(1, FailureReason.NODE_LOST)]


def test_the_feed_client_is_built_only_when_first_used(aws: dict[str, str], names: resources.ResourceNames) -> None:
    built: list[str] = []

    class CountingSession(boto3.session.Session):
        def client(self, service_name: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            built.append(service_name)
            return super().client(service_name, *args, **kwargs)

    # An idle node downloads nothing and ships no log: it holds no S3 client (the largest one)
    agent_aws = AgentAws(
        queue_url=aws["default"], table_name=names.table, bucket=names.feed_bucket, session=CountingSession()
    )
    assert "s3" not in built
    agent_aws.put_log_chunk("logs/run_default_1/0001/00000000.log", b"hello\n")
    agent_aws.put_log_chunk("logs/run_default_1/0001/00000001.log", b"again\n")
    assert built.count("s3") == 1
    body = boto3.client("s3").get_object(Bucket=names.feed_bucket, Key="logs/run_default_1/0001/00000001.log")["Body"]
    assert body.read() == b"again\n"


def _delivery(receipt: str, message_id: str) -> Delivery:
    return Delivery(receipt, RunMessage(run_id="run_default_1", environment="default"), 1, message_id, time.time())


def test_a_message_handed_over_reaches_the_attempt_holding_the_lease_and_only_it(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    # Given node A holding the run, and node B, which received another message of the run, refused its claim
    _queued_run(names)
    held = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    with pytest.raises(ClaimRefused) as refused:
        agent_aws.claim("run_default_1", "node-b", LEASE, now_ms())
    assert refused.value.leased is not None and refused.value.leased.lease_owner == "node-a"

    # When B hands that message over, A's next renewal answers with it; an offer while one waits is refused
    assert agent_aws.hand_over(refused.value.leased, _delivery("rh-new", "m-new"))
    assert not agent_aws.hand_over(refused.value.leased, _delivery("rh-other", "m-other"))
    renewal = agent_aws.renew_lease(held, "node-a", now_ms() + LEASE * 1000)
    assert renewal.state is RunState.RUNNING
    assert renewal.handoff is not None and (renewal.handoff.receipt_handle, renewal.handoff.message_id) == (
        "rh-new",
        "m-new",
    )
    # And once A dropped it, it is gone
    assert agent_aws.renew_lease(held, "node-a", now_ms() + LEASE * 1000, drop_handoff=True).handoff is None

    # When the lease passes to attempt 2 while an offer for attempt 1 waits, attempt 2 is not answered with it,
    # and an offer made to the lost attempt is refused
    assert agent_aws.hand_over(held, _delivery("rh-late", "m-late"))
    second = agent_aws.claim("run_default_1", "node-b", LEASE, now_ms() + (LEASE + 1) * 1000)
    assert agent_aws.renew_lease(second, "node-b", now_ms() + 2 * LEASE * 1000).handoff is None
    assert not agent_aws.hand_over(held, _delivery("rh-stale", "m-stale"))

    # And the run's end removes any offer from its item
    assert agent_aws.hand_over(second, _delivery("rh-end", "m-end"))
    agent_aws.end_attempt(second, "node-b", state=RunState.SUCCEEDED, output=1)
    item = boto3.resource("dynamodb").Table(names.table).get_item(Key=run_key("run_default_1"))["Item"]
    assert MESSAGE_HANDOFF not in item


def test_a_retry_is_not_claimed_before_its_time_whichever_message_brings_it(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    # Given attempt 1 failed and is to be retried in 40 minutes (longer than a message can be delayed)
    _queued_run(names)
    first = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    retry_at = utcnow() + timedelta(minutes=40)
    agent_aws.end_attempt(
        first, "node-a", state=RunState.QUEUED, reason=FailureReason.USER_ERROR, error={"message": "x"},
        retry_at=retry_at,
    )  # fmt: skip

    # When a message of the run comes back after 15 minutes, the claim is refused until the retry's time
    with pytest.raises(ClaimRefused) as refused:
        agent_aws.claim("run_default_1", "node-b", LEASE, now_ms() + 15 * 60 * 1000)
    assert not refused.value.terminal
    assert 25 * 60 <= refused.value.retry_in <= 25 * 60 + 2

    # And at that time, it is taken as attempt 2
    at_retry = int(retry_at.timestamp() * 1000) + 1
    assert agent_aws.claim("run_default_1", "node-b", LEASE, at_retry).attempt == 2


def test_a_claim_does_not_close_a_cancelled_run_whose_holder_renewed_after_it_was_judged_lost(
    agent_aws: AgentAws, names: resources.ResourceNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given node A's lease of a run being cancelled, judged expired by node B, and A renewing it just before B's write
    _queued_run(names)
    first = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key=run_key("run_default_1"),
        UpdateExpression="SET #s = :c",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":c": RunState.CANCELLING.value},
    )
    later = now_ms() + (LEASE + 2) * 1000
    end_abandoned = agent_aws.runs.end_abandoned

    def renewed_meanwhile(record: Any, state: RunState, reason: FailureReason, message: str) -> None:
        agent_aws.extend_lease(first, "node-a", later + LEASE * 1000)
        end_abandoned(record, state, reason, message)

    monkeypatch.setattr(agent_aws.runs, "end_abandoned", renewed_meanwhile)

    # When B's claim closes it as cancelled (its node lost), the close's condition fails: the claim is refused
    with pytest.raises(ClaimRefused) as refused:
        agent_aws.claim("run_default_1", "node-b", LEASE, later)
    assert refused.value.terminal

    # Then A, still alive, holds the run, still Cancelling: it ends it itself, with its job's own outcome
    run = agent_aws.get_run("run_default_1")
    assert run is not None and run.state is RunState.CANCELLING
    assert (run.attempt, run.lease_owner, run.lease_until_ms) == (1, "node-a", later + LEASE * 1000)
