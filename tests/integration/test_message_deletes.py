"""Deleting the messages of terminal runs in batches (node_agent.aws.DeleteBatcher), against in-process moto."""

from __future__ import annotations

import threading
from typing import Any

import boto3
import pytest

import node_agent.aws as agent_aws_module
from node_agent.aws import AgentAws, Delivery
from runly_core import resources
from runly_core.contracts import RunMessage


@pytest.fixture
def agent_aws(aws: dict[str, str], names: resources.ResourceNames) -> AgentAws:
    return AgentAws(queue_url=aws["default"], table_name=names.table, bucket=names.feed_bucket)


def _received(agent_aws: AgentAws, count: int) -> list[Delivery]:
    sqs = boto3.client("sqs")
    for i in range(count):
        body = RunMessage(run_id=f"run_default_{i}", environment="default").model_dump_json()
        sqs.send_message(QueueUrl=agent_aws.queue_url, MessageBody=body)
    deliveries: list[Delivery] = []
    while len(deliveries) < count:
        deliveries += agent_aws.receive(10, 0, 60)
    return deliveries


def _left_in_queue(agent_aws: AgentAws) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=agent_aws.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _count_calls(agent_aws: AgentAws) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []

    def before(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, len(params.get("Entries", [None]))))

    agent_aws._sqs.meta.events.register("provide-client-params.sqs.*", before)
    return calls


def test_messages_of_runs_ending_together_share_delete_requests(agent_aws: AgentAws) -> None:
    deliveries = _received(agent_aws, 12)
    calls = _count_calls(agent_aws)

    for delivery in deliveries:
        agent_aws.delete_soon(delivery)
    agent_aws.flush_deletes()

    assert calls == [("DeleteMessageBatch", 10), ("DeleteMessageBatch", 2)]
    assert _left_in_queue(agent_aws) == 0


def test_a_lone_message_is_deleted_within_the_batch_delay(agent_aws: AgentAws, monkeypatch: pytest.MonkeyPatch) -> None:
    (delivery,) = _received(agent_aws, 1)
    deleted = threading.Event()
    real = agent_aws._delete_batch

    def observed(batch: list[Delivery]) -> list[Delivery]:
        failed = real(batch)
        deleted.set()
        return failed

    monkeypatch.setattr(agent_aws, "_delete_batch", observed)
    agent_aws.delete_soon(delivery)
    assert deleted.wait(agent_aws_module.DELETE_BATCH_DELAY + 5), "not deleted without a flush"
    assert _left_in_queue(agent_aws) == 0
    agent_aws.flush_deletes()


def test_a_failed_request_is_retried_and_a_stale_receipt_is_given_up(
    agent_aws: AgentAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_aws_module, "DELETE_BATCH_DELAY", 0.05)
    good = _received(agent_aws, 2)
    stale = Delivery("not-a-receipt-handle", good[0].message, 1)
    real = agent_aws._delete_batch
    attempts: list[int] = []

    def flaky(batch: list[Delivery]) -> list[Delivery]:
        attempts.append(len(batch))
        if len(attempts) == 1:
            raise ConnectionError("the network dropped")
        return real(batch)

    monkeypatch.setattr(agent_aws, "_delete_batch", flaky)
    for delivery in [*good, stale]:
        agent_aws.delete_soon(delivery)
    agent_aws.flush_deletes()

    # The failed call was made again with every entry; the stale handle was not retried after SQS refused it.
    assert attempts == [3, 3]
    assert _left_in_queue(agent_aws) == 0
