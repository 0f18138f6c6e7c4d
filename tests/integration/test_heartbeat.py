"""The heartbeat against in-process moto: requests per beat, failures of one run's entry, and a run's message
replaced before SQS's in-flight cap and handed to the node that holds the run."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from node_agent.agent import Agent, Clock
from node_agent.aws import AgentAws, Delivery
from node_agent.run_messages import hold_message
from node_agent.settings import AgentSettings
from runly_core import resources
from runly_core.contracts import RunMessage, RunState
from runly_core.records import RunRecord
from runly_core.run_store import MESSAGE_HANDOFF, run_key
from tests.support.runs import queued_run


class HeldRun:
    """A supervisor whose job runs until released: the heartbeat's view of a run (no process, no package)."""

    def __init__(self, **kwargs: Any) -> None:
        self.record: RunRecord = kwargs["record"]
        self.delivery: Delivery = kwargs["delivery"]
        self.aws: AgentAws = kwargs["aws"]
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self.finished = threading.Event()
        self.release = threading.Event()
        self.indexed_lease_until_ms: int | None = None

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def progress_to_send(self) -> None:
        return None

    def lease_renewed(self, lease: Any) -> None:
        pass

    def run(self) -> None:
        self.release.wait(60)
        # Ends as a real supervisor does: the outcome, then the message it holds now.
        self.aws.end_attempt(self.record, self.record.lease_owner or "", state=RunState.SUCCEEDED, output=1)
        self.aws.delete_soon(self.delivery)
        self.finished.set()


class FakeClock(Clock):
    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


class Node:
    def __init__(self, agent: Agent, aws: AgentAws, started: list[HeldRun]) -> None:
        self.agent, self.aws, self.started = agent, aws, started
        self.thread = threading.Thread(target=agent.run, daemon=True)

    def stop(self) -> None:
        self.agent.request_stop()
        for run in self.started:
            run.release.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def node(aws: dict[str, str], names: resources.ResourceNames, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(node_id: str, capacity: int, clock: Clock | None = None, **settings: Any) -> Node:
        # Beats only when the test calls heartbeat(): the heartbeat thread's first beat is 1000 s away.
        agent_settings = AgentSettings(
            queue_url=aws["default"], table_name=names.table, feed_bucket=names.feed_bucket, node_id=node_id,
            capacity=capacity, poll_wait_seconds=0, work_dir=tmp_path / node_id,
            **{"lease_seconds": 2000, "heartbeat_seconds": 1000, **settings},
        )  # fmt: skip
        agent_aws = AgentAws(queue_url=aws["default"], table_name=names.table, bucket=names.feed_bucket)
        started: list[HeldRun] = []

        def factory(**kwargs: Any) -> HeldRun:
            run = HeldRun(**kwargs)
            started.append(run)
            return run

        agent = Agent(agent_settings, agent_aws, cache=None, supervisor_factory=factory, clock=clock)  # type: ignore[arg-type]
        started_node = Node(agent, agent_aws, started)
        started_node.thread.start()
        nodes.append(started_node)
        return started_node

    yield start
    for started_node in nodes:
        if started_node.thread.is_alive():
            started_node.stop()


def _enqueue(names: resources.ResourceNames, queue_url: str, count: int) -> list[str]:
    sqs = boto3.client("sqs")
    run_ids = [f"run_default_{i:02d}" for i in range(count)]
    for run_id in run_ids:
        queued_run(names, run_id)
        sqs.send_message(
            QueueUrl=queue_url, MessageBody=RunMessage(run_id=run_id, environment="default").model_dump_json()
        )
    return run_ids


def _wait(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _calls(client: Any, service: str) -> list[tuple[str, int]]:
    """The operations a client sends from now on, with their number of entries (1 for a single call)."""
    calls: list[tuple[str, int]] = []

    def before(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, len(params.get("Entries", [None]))))

    client.meta.events.register(f"provide-client-params.{service}.*", before)
    return calls


def _leases(names: resources.ResourceNames, run_ids: list[str]) -> dict[str, int]:
    table = boto3.resource("dynamodb").Table(names.table)
    return {run_id: int(table.get_item(Key=run_key(run_id))["Item"]["lease_until_ms"]) for run_id in run_ids}


def _messages_in_queue(queue_url: str) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]  # fmt: skip
    return sum(int(count) for count in attributes.values())


def test_a_beat_of_25_runs_makes_3_visibility_requests(
    node: Callable[..., Node], names: resources.ResourceNames, aws: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a node running 25 runs
    run_ids = _enqueue(names, aws["default"], 25)
    busy = node("node-a", capacity=25)
    _wait(lambda: len(busy.started) == 25, "25 runs to start")
    before = _leases(names, run_ids)
    sqs_calls, dynamodb_calls = _calls(busy.aws._sqs, "sqs"), _calls(busy.aws._dynamodb, "dynamodb")

    # When it beats
    time.sleep(0.01)
    with caplog.at_level(logging.WARNING):
        busy.agent.heartbeat()

    # Then the visibilities went in one request per 10 runs (it was one ChangeMessageVisibility per run), and
    # every lease was renewed (one write per run, and the node's record)
    assert sqs_calls == [("ChangeMessageVisibilityBatch", 10)] * 2 + [("ChangeMessageVisibilityBatch", 5)]
    assert dynamodb_calls == [("UpdateItem", 1)] * 26
    after = _leases(names, run_ids)
    assert all(after[run_id] > before[run_id] for run_id in run_ids)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    busy.stop()


def test_a_stale_receipt_fails_the_beat_of_its_own_run_only(
    node: Callable[..., Node], names: resources.ResourceNames, aws: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a node running 12 runs (two batches), and one of their messages gone from under it
    run_ids = _enqueue(names, aws["default"], 12)
    busy = node("node-a", capacity=12)
    _wait(lambda: len(busy.started) == 12, "12 runs to start")
    victim = next(run for run in busy.started if run.run_id == "run_default_03")
    boto3.client("sqs").delete_message(QueueUrl=aws["default"], ReceiptHandle=victim.delivery.receipt_handle)
    before = _leases(names, run_ids)

    # When it beats
    time.sleep(0.01)
    with caplog.at_level(logging.WARNING):
        busy.agent.heartbeat()

    # Then every other lease was renewed; the victim's was not, as a failed beat of that run (logged, its job
    # untouched), in the same batch request as nine others
    after = _leases(names, run_ids)
    assert [run_id for run_id in run_ids if after[run_id] == before[run_id]] == ["run_default_03"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "run_default_03" in warnings[0] and "ReceiptHandleIsInvalid" in warnings[0]
    assert not victim.lease_lost.is_set() and not victim.cancel_requested.is_set()
    busy.stop()


def test_a_message_replaced_before_its_limit_reaches_the_holder_through_another_node(
    node: Callable[..., Node], names: resources.ResourceNames, aws: dict[str, str]
) -> None:
    # Given node A holding a run, whose messages it keeps at most 40 s in flight (SQS: 12 h), with a 10 s lease
    queue = aws["default"]
    (run_id,) = _enqueue(names, queue, 1)
    clock = FakeClock()
    holder = node("node-a", capacity=1, clock=clock, lease_seconds=10, heartbeat_seconds=5,
                  max_in_flight_seconds=40)  # fmt: skip
    _wait(lambda: len(holder.started) == 1, "the claim")
    (run,) = holder.started
    first = run.delivery

    # When a full lease no longer fits before the message's limit, A sends a replacement (and keeps the old one)
    clock.offset = 31
    holder.agent.heartbeat()
    assert _messages_in_queue(queue) == 2
    # (A's clock jumped for that beat only: the receipts below are stamped with the time moto and B share.)
    clock.offset = 0

    # And node B receives it: the run is leased by A, so B starts nothing, hides it for the rest of A's lease and
    # hands it over in the run item
    other = node("node-b", capacity=1)
    table = boto3.resource("dynamodb").Table(names.table)
    _wait(lambda: MESSAGE_HANDOFF in table.get_item(Key=run_key(run_id))["Item"], "the handoff")
    other.stop()
    assert other.started == []

    # Then A's next beat keeps the new message and deletes the old one: one message for the run again, in flight
    holder.agent.heartbeat()
    assert run.delivery.message_id not in ("", first.message_id)
    holder.aws.flush_deletes()
    assert _messages_in_queue(queue) == 1
    # And the beat after that clears the handoff from the item and beats the new receipt; the lease never moved
    holder.agent.heartbeat()
    item = table.get_item(Key=run_key(run_id))["Item"]
    assert MESSAGE_HANDOFF not in item
    assert (item["state"], item["attempt"], item["lease_owner"]) == ("Running", 1, "node-a")

    # And when the run ends, its message is deleted: nothing is left in the queue
    holder.stop()
    assert _messages_in_queue(queue) == 0
    final = table.get_item(Key=run_key(run_id))["Item"]
    assert final["state"] == "Succeeded" and len(final["attempts"]) == 1


def test_a_retry_delay_past_the_limit_moves_the_run_to_a_fresh_delayed_message(
    names: resources.ResourceNames, aws: dict[str, str]
) -> None:
    # Given a run's message received 10 s ago, kept at most 11 s in flight
    queue = aws["default"]
    _enqueue(names, queue, 1)
    agent_aws = AgentAws(queue_url=queue, table_name=names.table, bucket=names.feed_bucket)
    (received,) = agent_aws.receive(1, 0, 30)

    # When its attempt fails and is to be retried in 2 s, which would keep it past that
    hold_message(agent_aws, received, 2, limit_seconds=11, now=received.received_at + 10)

    # Then the old message is gone and a fresh one for the run arrives after the delay, not before
    assert _messages_in_queue(queue) == 1
    assert agent_aws.receive(10, 0, 30) == []
    time.sleep(2.2)
    (fresh,) = agent_aws.receive(10, 1, 30)
    assert fresh.message == received.message and fresh.message_id != received.message_id
