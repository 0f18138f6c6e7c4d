"""The reaper and the dead-letter handler against in-process moto: nothing lost, nothing stuck."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import boto3
import pytest

from functions.dal.maintenance import MaintenanceStore, RunMoved
from functions.logic.maintenance import reap
from functions.maintenance import dlq, reaper
from functions.maintenance.settings import get_maintenance_settings
from node_agent.aws import AgentAws
from runly import resources
from runly.contracts import FailureReason, RunMessage, RunState
from runly.local.aws import schedule_settings
from tests.support.runs import queued_run as _queued_run

LEASE = 10


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def store(aws: dict[str, str], names: resources.ResourceNames) -> MaintenanceStore:
    return MaintenanceStore(names.table, aws)


@pytest.fixture
def agent(aws: dict[str, str], names: resources.ResourceNames) -> AgentAws:
    return AgentAws(queue_url=aws["default"], table_name=names.table, bucket=names.feed_bucket)


def _messages(queue_url: str) -> list[str]:
    response = boto3.client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [RunMessage.model_validate_json(m["Body"]).run_id for m in response.get("Messages", [])]


def test_reaper_requeues_a_run_whose_node_vanished(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames, aws: dict[str, str]
) -> None:
    # Given a run claimed by a node that then vanished, its lease long expired, and no message left
    _queued_run(names, "run_lost")
    agent.claim("run_lost", "node-a", LEASE, now_ms() - 3_600_000)

    # When the reaper runs
    report = reap(store, now_ms=now_ms(), grace_seconds=60)

    # Then the run is Queued again, the lost attempt is closed, and a new message names it
    assert report.requeued == ["run_lost"]
    run = agent.get_run("run_lost")
    assert run is not None and run.state is RunState.QUEUED and run.lease_owner is None
    assert run.attempts[0].reason is FailureReason.NODE_LOST and run.attempts[0].ended_at
    assert _messages(aws["default"]) == ["run_lost"]
    # And it is out of the lease index: a second pass finds nothing
    assert reap(store, now_ms=now_ms(), grace_seconds=60).requeued == []


def test_reaper_fails_a_lost_run_with_no_attempts_left(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames
) -> None:
    _queued_run(names, "run_last")
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key={"pk": "RUN#run_last", "sk": "RUN"},
        UpdateExpression="SET max_attempts = :one",
        ExpressionAttributeValues={":one": 1},
    )
    agent.claim("run_last", "node-a", LEASE, now_ms() - 3_600_000)

    report = reap(store, now_ms=now_ms(), grace_seconds=60)

    assert report.failed == ["run_last"]
    run = agent.get_run("run_last")
    assert run is not None and run.state is RunState.FAILED and run.finished_at
    assert json.loads(run.error_json or "{}")["reason"] == "node_lost"


def test_reaper_leaves_live_and_recent_leases_alone(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames
) -> None:
    _queued_run(names, "run_live")
    agent.claim("run_live", "node-a", LEASE, now_ms())
    _queued_run(names, "run_recent")
    agent.claim("run_recent", "node-b", LEASE, now_ms() - (LEASE + 5) * 1000)  # expired 5 s ago: nodes act first

    report = reap(store, now_ms=now_ms(), grace_seconds=60)

    assert report.requeued == report.failed == report.cancelled == []
    live = agent.get_run("run_live")
    assert live is not None and live.state is RunState.RUNNING


def test_a_node_renewing_between_read_and_write_wins(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames
) -> None:
    _queued_run(names, "run_race")
    claimed = agent.claim("run_race", "node-a", LEASE, now_ms() - 3_600_000)
    (stale,) = list(store.expired_leases(now_ms()))
    # The node was only slow, not dead: it heartbeats after the reaper read the run.
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key={"pk": "RUN#run_race", "sk": "RUN"},
        UpdateExpression="SET lease_until_ms = :l",
        ExpressionAttributeValues={":l": now_ms() + 60_000},
    )
    with pytest.raises(RunMoved):
        store.end_abandoned(stale, RunState.QUEUED, FailureReason.NODE_LOST, "lease expired")
    run = agent.get_run("run_race")
    assert run is not None and run.state is RunState.RUNNING and run.attempt == claimed.attempt


def test_reaper_completes_a_cancel_whose_node_was_lost(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames
) -> None:
    _queued_run(names, "run_cancel")
    agent.claim("run_cancel", "node-a", LEASE, now_ms() - 3_600_000)
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key={"pk": "RUN#run_cancel", "sk": "RUN"},
        UpdateExpression="SET #s = :c",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":c": RunState.CANCELLING.value},
    )
    assert reap(store, now_ms=now_ms(), grace_seconds=60).cancelled == ["run_cancel"]
    run = agent.get_run("run_cancel")
    assert run is not None and run.state is RunState.CANCELLED


@pytest.fixture
def maintenance_env(
    aws: dict[str, str], names: resources.ResourceNames, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("RUNLY_TABLE_NAME", names.table)
    monkeypatch.setenv("RUNLY_FEED_BUCKET", names.feed_bucket)
    monkeypatch.setenv("RUNLY_QUEUE_URLS", json.dumps(aws))
    for name, value in schedule_settings(names).items():  # MaintenanceSettings extends ApiSettings
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RUNLY_REAPER_GRACE_SECONDS", "60")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "runly")
    for cached in (get_maintenance_settings, dlq._store, reaper._store):
        cached.cache_clear()
    yield
    for cached in (get_maintenance_settings, dlq._store, reaper._store):
        cached.cache_clear()


class Context:
    function_name = "runly-maintenance"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:runly-maintenance"
    aws_request_id = "req"


def _sqs_event(*bodies: str) -> dict[str, object]:
    return {
        "Records": [
            {
                "messageId": f"m{i}",
                "receiptHandle": f"r{i}",
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "30",
                    "SentTimestamp": "0",
                    "SenderId": "x",
                    "ApproximateFirstReceiveTimestamp": "0",
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:runly-test-default-dlq",
                "awsRegion": "us-east-1",
            }
            for i, body in enumerate(bodies)
        ]
    }


def test_dead_letters_fail_their_runs_with_the_reason(
    maintenance_env: None, agent: AgentAws, names: resources.ResourceNames
) -> None:
    # Given a queued run whose message was dead-lettered, a leased run, a finished run and a garbage message
    _queued_run(names, "run_poison")
    _queued_run(names, "run_leased")
    agent.claim("run_leased", "node-a", LEASE, now_ms())
    done = _queued_run(names, "run_done")
    agent.end_attempt(agent.claim("run_done", "node-a", LEASE, now_ms()), "node-a", state=RunState.SUCCEEDED, output=1)
    assert done.run_id == "run_done"
    bodies = [
        RunMessage(run_id=r, environment="default").model_dump_json() for r in ("run_poison", "run_leased", "run_done")
    ]

    # When the DLQ handler gets them
    result = dlq.lambda_handler(_sqs_event(*bodies, "not json"), Context())  # type: ignore[arg-type]

    # Then every record is consumed, and only the unowned run is failed, with the reason
    assert result == {"batchItemFailures": []}
    poison = agent.get_run("run_poison")
    assert poison is not None and poison.state is RunState.FAILED
    error = json.loads(poison.error_json or "{}")
    assert error["reason"] == FailureReason.DEAD_LETTER.value and "30 times" in error["message"]
    assert (agent.get_run("run_leased") or poison).state is RunState.RUNNING
    assert (agent.get_run("run_done") or poison).state is RunState.SUCCEEDED


def test_reaper_handler_reports_counts(maintenance_env: None, agent: AgentAws, names: resources.ResourceNames) -> None:
    _queued_run(names, "run_lost")
    agent.claim("run_lost", "node-a", LEASE, now_ms() - 3_600_000)
    assert reaper.lambda_handler({}, Context()) == {"requeued": 1, "failed": 0, "cancelled": 0, "skipped": 0}  # type: ignore[arg-type]
