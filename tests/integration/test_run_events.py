"""The run event publisher in-process: table stream records (tests/events/*.json) in, EventBridge events out,
read back through a rule that targets an SQS queue, on in-process moto."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord, DynamoDBStreamEvent
from moto.events.models import EventPattern

from functions.events import publisher
from functions.events.bus import BusEntry, BusUnavailable, EventBus
from functions.events.changes import (
    RETRY_BASE_SECONDS,
    RETRY_CAP_SECONDS,
    publish_changes,
    state_change,
    stream_filter,
)
from runly_core import resources
from runly_core.contracts import RUN_EVENT_SOURCE, RUN_STATE_CHANGED, TERMINAL_STATES, RunState, RunStateChanged

EVENTS = Path(__file__).resolve().parent.parent / "events"


def _fixture(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


class FakeContext:
    function_name = "runly-run-events"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:runly-run-events"
    memory_limit_in_mb = 512
    aws_request_id = "req-1"
    log_group_name = "/aws/lambda/runly-run-events"
    log_stream_name = "stream"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


@pytest.fixture
def subscriber(aws: dict[str, str], names: resources.ResourceNames) -> str:
    """The runly bus, and a rule for run events that delivers them to a queue; returns the queue's URL."""
    events = boto3.client("events")
    sqs = boto3.client("sqs")
    events.create_event_bus(Name=names.event_bus)
    url = sqs.create_queue(QueueName="run-events-subscriber")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name="run-state-changes",
        EventBusName=names.event_bus,
        EventPattern=json.dumps({"source": [RUN_EVENT_SOURCE], "detail-type": [RUN_STATE_CHANGED]}),
    )
    events.put_targets(Rule="run-state-changes", EventBusName=names.event_bus, Targets=[{"Id": "queue", "Arn": arn}])
    return url


@pytest.fixture
def handler(
    subscriber: str, names: resources.ResourceNames, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[dict[str, Any]], dict[str, Any]]]:
    monkeypatch.setenv("RUNLY_EVENT_BUS_NAME", names.event_bus)
    publisher.get_settings.cache_clear()
    publisher.event_bus.cache_clear()
    yield lambda event: publisher.lambda_handler(event, FakeContext())  # type: ignore[arg-type]
    publisher.get_settings.cache_clear()
    publisher.event_bus.cache_clear()


def _published(queue_url: str) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    received: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages")
        if not messages:
            return received
        received += [json.loads(message["Body"]) for message in messages]
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )


def test_a_run_lifecycle_publishes_one_event_per_state_it_enters(
    handler: Callable[[dict[str, Any]], dict[str, Any]], subscriber: str
) -> None:
    # Given the stream records of a run created, started, heartbeating, checkpointed and succeeded (with a node's
    # heartbeat and the run item's eventual removal in between)
    event = _fixture("run_lifecycle.json")

    # When the publisher handles the batch
    response = handler(event)

    # Then nothing is reported failed, and exactly the three state changes reach the subscriber
    assert response == {"batchItemFailures": []}
    published = sorted(_published(subscriber), key=lambda e: e["detail"]["occurred_at"])
    assert [(e["source"], e["detail-type"]) for e in published] == [(RUN_EVENT_SOURCE, RUN_STATE_CHANGED)] * 3
    details = [RunStateChanged.model_validate(e["detail"]) for e in published]
    assert [(d.previous_state, d.state, d.attempt) for d in details] == [
        (None, RunState.QUEUED, 0),
        (RunState.QUEUED, RunState.RUNNING, 1),
        (RunState.RUNNING, RunState.SUCCEEDED, 1),
    ]
    assert {(d.run_id, d.environment, d.package, d.version, d.job) for d in details} == {
        ("run_production_01JRUNAAAA", "production", "greeter", "1.0.0", "greet")
    }
    # The detail carries exactly the documented fields (docs/events.md).
    assert set(published[0]["detail"]) == set(RunStateChanged.model_fields)
    assert details[1].occurred_at.isoformat() == "2026-01-01T12:00:05+00:00"


def test_a_run_item_that_cannot_make_an_event_is_reported_failed_not_skipped(
    handler: Callable[[dict[str, Any]], dict[str, Any]], subscriber: str
) -> None:
    # Given a batch with a good state change and a run item missing its package (a writer's defect)
    good = _fixture("run_lifecycle.json")["Records"][1]
    [bad] = _fixture("run_item_without_package.json")["Records"]

    # When the publisher handles it
    response = handler({"Records": [good, bad]})

    # Then the good one is published and the bad one reported, so Lambda retries it and finally parks it
    assert response == {"batchItemFailures": [{"itemIdentifier": bad["dynamodb"]["SequenceNumber"]}]}
    assert [e["detail"]["state"] for e in _published(subscriber)] == ["Running"]


def test_an_item_under_a_run_key_the_api_did_not_create_publishes_nothing_and_fails_nothing(
    handler: Callable[[dict[str, Any]], dict[str, Any]], subscriber: str
) -> None:
    # Given a good state change and the same item without the API's mark (as a node's credentials could write it,
    # under its own environment's run key) and without what an event needs
    good = _fixture("run_lifecycle.json")["Records"][1]
    [forged] = _fixture("run_item_without_package.json")["Records"]
    del forged["dynamodb"]["NewImage"]["api_created"]

    # When the publisher handles them
    response = handler({"Records": [good, forged]})

    # Then only the good one is published, and the forged one is not reported (it would hold the stream back)
    assert response == {"batchItemFailures": []}
    assert [e["detail"]["state"] for e in _published(subscriber)] == ["Running"]


def test_a_batch_nothing_of_which_could_be_published_fails_the_invocation(
    handler: Callable[[dict[str, Any]], dict[str, Any]], names: resources.ResourceNames
) -> None:
    # Given the bus is gone
    boto3.client("events").delete_event_bus(Name=names.event_bus)

    # When a batch whose only record is a state change comes, then the whole invocation fails (Lambda retries it)
    started = _fixture("run_lifecycle.json")["Records"][1]
    with pytest.raises(BatchProcessingError):
        handler({"Records": [started]})


# --- chunks and retries, against a bus that refuses on demand ---------------------------------------------------


class ScriptedBus(EventBus):
    """Answers each put with the next scripted outcome: positions to refuse, or BusUnavailable."""

    def __init__(self, outcomes: list[list[int] | Exception]) -> None:
        super().__init__("runly-test", client=object())
        self.outcomes = outcomes
        self.calls: list[list[BusEntry]] = []

    def put(self, entries: Sequence[BusEntry]) -> list[int]:
        self.calls.append(list(entries))
        outcome = self.outcomes.pop(0) if self.outcomes else []
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _state_changes(count: int) -> DynamoDBStreamEvent:
    """`count` runs created (INSERT of a Queued run each), with distinct ids and sequence numbers."""
    [template] = [r for r in _fixture("run_lifecycle.json")["Records"] if r["eventName"] == "INSERT"][:1]
    records = []
    for number in range(count):
        record = copy.deepcopy(template)
        record["dynamodb"]["SequenceNumber"] = f"{number:021d}"
        record["dynamodb"]["NewImage"]["run_id"] = {"S": f"run-{number}"}
        records.append(record)
    return DynamoDBStreamEvent({"Records": records})


def test_changes_are_put_ten_per_call_in_stream_order() -> None:
    bus = ScriptedBus([])
    report = publish_changes(_state_changes(23).records, bus, sleep=lambda _: None)
    assert [len(call) for call in bus.calls] == [10, 10, 3]
    assert [json.loads(e.detail_json)["run_id"] for call in bus.calls for e in call] == [f"run-{n}" for n in range(23)]
    assert len(report.published) == 23 and report.unpublished == set()


def test_refused_entries_are_retried_alone_and_reported_only_if_still_refused() -> None:
    # Given EventBridge refuses entries 1 and 2 of the first call, then entry 1 (the old 2) again, then always
    bus = ScriptedBus([[1, 2], [1], [0]])
    waits: list[float] = []

    report = publish_changes(_state_changes(3).records, bus, sleep=waits.append)

    # Then each retry carries only what was refused, after a backoff under its growing ceiling (full jitter: uniform
    # in [0, min(cap, base * 2**attempt)]), and what is left is reported
    assert [[json.loads(e.detail_json)["run_id"] for e in call] for call in bus.calls] == [
        ["run-0", "run-1", "run-2"],
        ["run-1", "run-2"],
        ["run-2"],
    ]
    assert len(waits) == 2
    for attempt, wait in enumerate(waits, start=1):
        assert 0 <= wait <= min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2**attempt)
    assert report.unpublished == {f"{2:021d}"}
    assert [change.run_id for change in report.published] == ["run-0", "run-1"]


def test_a_failed_call_is_retried_and_counts_for_every_entry_in_it() -> None:
    bus = ScriptedBus([BusUnavailable("throttled"), []])
    assert publish_changes(_state_changes(2).records, bus, sleep=lambda _: None).unpublished == set()

    bus = ScriptedBus([BusUnavailable("down")] * 3)
    report = publish_changes(_state_changes(2).records, bus, sleep=lambda _: None)
    assert report.unpublished == {f"{0:021d}", f"{1:021d}"} and report.published == []


@pytest.mark.parametrize(
    "states",
    [TERMINAL_STATES, frozenset(RunState)],
    ids=["terminal", "every state"],
)
def test_the_stream_filter_lets_through_exactly_the_changes_the_publisher_publishes_in_those_states(
    states: frozenset[RunState],
) -> None:
    # Given the lifecycle's records (run writes that change state or not, a node, a checkpoint, a removal) and
    # each with its run's state rewritten to every state, as Lambda's event filtering sees them
    records = []
    for record in _fixture("run_lifecycle.json")["Records"]:
        for state in RunState:
            rewritten = copy.deepcopy(record)
            if "state" in rewritten["dynamodb"].get("NewImage", {}):
                rewritten["dynamodb"]["NewImage"]["state"] = {"S": state.value}
            records.append(rewritten)
    pattern = EventPattern.load(json.dumps(stream_filter(states)))

    for record in records:
        change = state_change(DynamoDBRecord(record))
        published = change is not None and change.state in states
        # Then a record that would be published passes the filter; one that passes but is not a change (its state
        # unchanged) is the publisher's to drop, as without the filter
        if published:
            assert pattern.matches_event(record), record
        if pattern.matches_event(record):
            new_state = record["dynamodb"]["NewImage"]["state"]["S"]
            assert RunState(new_state) in states and record["dynamodb"]["Keys"]["sk"] == {"S": "RUN"}
    assert any(pattern.matches_event(record) for record in records)
