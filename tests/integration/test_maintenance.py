"""The reaper and the dead-letter handler against in-process moto: nothing lost, nothing stuck."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import boto3
import pytest

from functions.dal.maintenance import MaintenanceStore
from functions.logic.maintenance import reap
from functions.maintenance import dlq, reaper
from functions.maintenance.settings import get_dead_letter_settings, get_reaper_settings
from node_agent.aws import AgentAws
from runly_core import resources
from runly_core.contracts import FailureReason, RunMessage, RunState
from runly_core.run_store import (
    LEASE_INDEX_REFRESH_MS,
    RUN_INDEX_SHARDS,
    RunChanged,
    lease_index_partition,
    lease_sort_key,
    run_key,
)
from tests.support.runs import put_run
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
    _queued_run(names, "run_default_lost")
    agent.claim("run_default_lost", "node-a", LEASE, now_ms() - 3_600_000)

    # When the reaper runs
    report = reap(store, now_ms=now_ms(), grace_seconds=60)

    # Then the run is Queued again, the lost attempt is closed, and a new message names it
    assert report.requeued == ["run_default_lost"]
    run = agent.get_run("run_default_lost")
    assert run is not None and run.state is RunState.QUEUED and run.lease_owner is None
    assert run.attempts[0].reason is FailureReason.NODE_LOST and run.attempts[0].ended_at
    assert _messages(aws["default"]) == ["run_default_lost"]
    # And it is out of the lease index: a second pass finds nothing
    assert reap(store, now_ms=now_ms(), grace_seconds=60).requeued == []


def test_reaper_fails_a_lost_run_with_no_attempts_left(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames
) -> None:
    _queued_run(names, "run_default_last")
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key=run_key("run_default_last"),
        UpdateExpression="SET max_attempts = :one",
        ExpressionAttributeValues={":one": 1},
    )
    agent.claim("run_default_last", "node-a", LEASE, now_ms() - 3_600_000)

    report = reap(store, now_ms=now_ms(), grace_seconds=60)

    assert report.failed == ["run_default_last"]
    run = agent.get_run("run_default_last")
    assert run is not None and run.state is RunState.FAILED and run.finished_at
    assert json.loads(run.error_json or "{}")["reason"] == "node_lost"


def test_reaper_leaves_live_and_recent_leases_alone(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames
) -> None:
    _queued_run(names, "run_default_live")
    agent.claim("run_default_live", "node-a", LEASE, now_ms())
    _queued_run(names, "run_default_recent")
    agent.claim(
        "run_default_recent", "node-b", LEASE, now_ms() - (LEASE + 5) * 1000
    )  # expired 5 s ago: nodes act first

    report = reap(store, now_ms=now_ms(), grace_seconds=60)

    assert report.requeued == report.failed == report.cancelled == []
    live = agent.get_run("run_default_live")
    assert live is not None and live.state is RunState.RUNNING


def test_a_node_renewing_between_read_and_write_wins(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames
) -> None:
    _queued_run(names, "run_default_race")
    claimed = agent.claim("run_default_race", "node-a", LEASE, now_ms() - 3_600_000)
    stale = store.runs.get("run_default_race")  # as the reaper reads a candidate: from the table
    assert stale is not None
    # The node was only slow, not dead: it heartbeats after the reaper read the run.
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key=run_key("run_default_race"),
        UpdateExpression="SET lease_until_ms = :l",
        ExpressionAttributeValues={":l": now_ms() + 60_000},
    )
    with pytest.raises(RunChanged):
        store.runs.end_abandoned(stale, RunState.QUEUED, FailureReason.NODE_LOST, "lease expired")
    run = agent.get_run("run_default_race")
    assert run is not None and run.state is RunState.RUNNING and run.attempt == claimed.attempt


def test_reaper_completes_a_cancel_whose_node_was_lost(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames
) -> None:
    _queued_run(names, "run_default_cancel")
    agent.claim("run_default_cancel", "node-a", LEASE, now_ms() - 3_600_000)
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key=run_key("run_default_cancel"),
        UpdateExpression="SET #s = :c",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":c": RunState.CANCELLING.value},
    )
    assert reap(store, now_ms=now_ms(), grace_seconds=60).cancelled == ["run_default_cancel"]
    run = agent.get_run("run_default_cancel")
    assert run is not None and run.state is RunState.CANCELLED


@pytest.fixture
def maintenance_env(
    aws: dict[str, str], names: resources.ResourceNames, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("RUNLY_TABLE_NAME", names.table)
    monkeypatch.setenv("RUNLY_QUEUE_URLS", json.dumps(aws))
    monkeypatch.setenv("RUNLY_REAPER_GRACE_SECONDS", "60")
    monkeypatch.setenv("RUNLY_DEAD_LETTER_ENVIRONMENT", "default")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "runly")
    for cached in (get_reaper_settings, get_dead_letter_settings, dlq._store, reaper._store):
        cached.cache_clear()
    yield
    for cached in (get_reaper_settings, get_dead_letter_settings, dlq._store, reaper._store):
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
    _queued_run(names, "run_default_poison")
    _queued_run(names, "run_default_leased")
    agent.claim("run_default_leased", "node-a", LEASE, now_ms())
    done = _queued_run(names, "run_default_done")
    agent.end_attempt(
        agent.claim("run_default_done", "node-a", LEASE, now_ms()), "node-a", state=RunState.SUCCEEDED, output=1
    )
    assert done.run_id == "run_default_done"
    bodies = [
        RunMessage(run_id=r, environment="default").model_dump_json()
        for r in ("run_default_poison", "run_default_leased", "run_default_done")
    ]

    # When the DLQ handler gets them
    result = dlq.lambda_handler(_sqs_event(*bodies, "not json"), Context())  # type: ignore[arg-type]

    # Then every record is consumed, and only the unowned run is failed, with the reason
    assert result == {"batchItemFailures": []}
    poison = agent.get_run("run_default_poison")
    assert poison is not None and poison.state is RunState.FAILED
    error = json.loads(poison.error_json or "{}")
    assert error["reason"] == FailureReason.DEAD_LETTER.value and "30 times" in error["message"]
    assert (agent.get_run("run_default_leased") or poison).state is RunState.RUNNING
    assert (agent.get_run("run_default_done") or poison).state is RunState.SUCCEEDED


def test_reaper_handler_reports_counts(maintenance_env: None, agent: AgentAws, names: resources.ResourceNames) -> None:
    _queued_run(names, "run_default_lost")
    agent.claim("run_default_lost", "node-a", LEASE, now_ms() - 3_600_000)
    assert reaper.lambda_handler({}, Context()) == {
        "requeued": 1,
        "failed": 0,
        "cancelled": 0,
        "skipped": 0,
        "refused": 0,
        "renewed": 0,
        "bounded": 0,
    }  # type: ignore[arg-type]


# ---------------------------------------------------------------- only runs the API created, only to their queue


def _expired_lease_values() -> dict[str, object]:
    return {
        ":running": RunState.RUNNING.value,
        ":one": 1,
        ":node": "node-evil",
        ":until": now_ms() - 3_600_000,
        ":leased": lease_index_partition("default", 0),
        ":until_key": lease_sort_key(now_ms() - 3_600_000),
        ":attempts": [],
    }


def test_a_run_item_forged_with_node_credentials_is_never_requeued(
    store: MaintenanceStore, names: resources.ResourceNames, aws: dict[str, str]
) -> None:
    # Given an item under a run's key written as a node's credentials allow (an update naming only the attributes
    # functions.nodes.policy lets a node write): Running, with a long-expired lease, in the lease index
    table = boto3.resource("dynamodb").Table(names.table)
    forged = run_key("run_default_forged")
    table.update_item(
        Key=forged,
        UpdateExpression="SET #state = :running, attempt = :one, lease_owner = :node, lease_until_ms = :until, "
        "gsi2pk = :leased, gsi2sk = :until_key, attempts = :attempts",
        ExpressionAttributeNames={"#state": "state"},
        ExpressionAttributeValues=_expired_lease_values(),
    )
    # And one with a whole run's attributes, as only a put could write (which the node's policy does not allow),
    # but without the API's mark
    whole = _queued_run(names, "run_default_whole").model_copy(
        update={
            "state": RunState.RUNNING,
            "attempt": 1,
            "lease_owner": "node-evil",
            "lease_until_ms": now_ms() - 3_600_000,
        }
    )
    put_run(table, whole, api_created=False)

    # When the reaper runs
    report = reap(store, now_ms=now_ms(), grace_seconds=60)

    # Then neither is re-queued nor changed, and no message names them in any environment
    assert report.requeued == [] and report.failed == []
    assert sorted(report.refused) == sorted([forged["pk"], run_key("run_default_whole")["pk"]])
    assert all(_messages(url) == [] for url in aws.values())
    assert table.get_item(Key=forged)["Item"]["state"] == RunState.RUNNING.value


def test_the_reaper_requeues_a_run_to_the_queue_its_key_names_whatever_lease_partition_holds_it(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames, aws: dict[str, str]
) -> None:
    # Given a default run whose node moved it into staging's lease partition (a node writes the lease index keys)
    _queued_run(names, "run_default_moved")
    agent.claim("run_default_moved", "node-a", LEASE, now_ms() - 3_600_000)
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key=run_key("run_default_moved"),
        UpdateExpression="SET gsi2pk = :staging",
        ExpressionAttributeValues={":staging": lease_index_partition("staging", 3)},
    )

    # When the reaper runs
    report = reap(store, now_ms=now_ms(), grace_seconds=60)

    # Then it goes back to default's queue, never to staging's
    assert report.requeued == ["run_default_moved"]
    assert _messages(aws["staging"]) == []
    assert _messages(aws["default"]) == ["run_default_moved"]


def test_a_dead_letter_fails_only_an_api_created_run_of_its_own_environment(
    maintenance_env: None, agent: AgentAws, names: resources.ResourceNames
) -> None:
    # Given a queued staging run, and a default DLQ holding messages that name it, a forged run and a bad id
    staging = _queued_run(names, "run_staging_victim").model_copy(update={"environment": "staging"})
    table = boto3.resource("dynamodb").Table(names.table)
    put_run(table, staging)
    table.update_item(
        Key=run_key("run_default_forged"),
        UpdateExpression="SET #state = :queued",
        ExpressionAttributeNames={"#state": "state"},
        ExpressionAttributeValues={":queued": RunState.QUEUED.value},
    )
    bodies = [
        RunMessage(run_id=run_id, environment=environment).model_dump_json()
        for run_id, environment in (
            ("run_staging_victim", "default"),
            ("run_staging_victim", "staging"),
            ("run_default_forged", "default"),
            ("not-a-run", "default"),
        )
    ]

    # When the default environment's DLQ handler gets them
    result = dlq.lambda_handler(_sqs_event(*bodies), Context())  # type: ignore[arg-type]

    # Then every record is consumed and nothing is failed
    assert result == {"batchItemFailures": []}
    victim = table.get_item(Key=run_key("run_staging_victim"))["Item"]
    assert victim["state"] == RunState.QUEUED.value and "error_json" not in victim
    assert table.get_item(Key=run_key("run_default_forged"))["Item"]["state"] == RunState.QUEUED.value


# ---------------------------------------------------------------- the lease index: lean, moved every few minutes


def _index_sort_key(names: resources.ResourceNames, run_id: str) -> str:
    item = boto3.resource("dynamodb").Table(names.table).get_item(Key=run_key(run_id))["Item"]
    return str(item[resources.RUNS_BY_LEASE.sort_key])


def test_a_heartbeat_writes_no_lease_index_change_until_the_lease_is_minutes_past_the_indexed_one(
    agent: AgentAws, names: resources.ResourceNames
) -> None:
    # Given a claimed run: its lease index entry holds the claim's lease expiry
    _queued_run(names, "run_default_beat")
    claimed = agent.claim("run_default_beat", "node-a", LEASE, now_ms())
    assert claimed.lease_until_ms is not None
    indexed = claimed.lease_until_ms
    assert _index_sort_key(names, "run_default_beat") == lease_sort_key(indexed)

    # When heartbeats extend the lease by less than the refresh step past the indexed expiry
    for beat in range(1, 4):
        renewal = agent.renew_lease(claimed, "node-a", indexed + beat * 15_000, indexed_until_ms=indexed)
        # Then the run item holds the new lease, and the index entry (its keys) is untouched
        assert renewal.indexed_until_ms == indexed
        assert _index_sort_key(names, "run_default_beat") == lease_sort_key(indexed)
    run = agent.get_run("run_default_beat")
    assert run is not None and run.lease_until_ms == indexed + 45_000

    # And the beat whose lease is the refresh step past the indexed one moves the entry to it
    later = indexed + LEASE_INDEX_REFRESH_MS
    renewal = agent.renew_lease(claimed, "node-a", later, indexed_until_ms=indexed)
    assert renewal.indexed_until_ms == later
    assert _index_sort_key(names, "run_default_beat") == lease_sort_key(later)


def test_the_reaper_reclaims_an_expired_lease_whose_index_entry_is_stale(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames, aws: dict[str, str]
) -> None:
    # Given a run claimed 3 h ago whose node renewed without moving the index entry, then died 2 h ago
    _queued_run(names, "run_default_stale")
    claimed = agent.claim("run_default_stale", "node-a", LEASE, now_ms() - 3 * 3_600_000)
    assert claimed.lease_until_ms is not None
    agent.renew_lease(claimed, "node-a", now_ms() - 2 * 3_600_000, indexed_until_ms=now_ms() - 2 * 3_600_000 - 60_000)
    assert _index_sort_key(names, "run_default_stale") == lease_sort_key(claimed.lease_until_ms)

    # When the reaper runs
    report = reap(store, now_ms=now_ms(), grace_seconds=60)

    # Then it judged the real lease (expired), not the entry, and re-queued the run
    assert report.requeued == ["run_default_stale"] and report.renewed == []
    run = agent.get_run("run_default_stale")
    assert run is not None and run.state is RunState.QUEUED
    assert _messages(aws["default"]) == ["run_default_stale"]


def test_the_reaper_leaves_a_live_lease_whose_index_entry_looks_expired(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames, aws: dict[str, str]
) -> None:
    # Given a run claimed an hour ago (its index entry: the claim's lease, long past) whose node heartbeats to
    # a live lease without moving the entry
    _queued_run(names, "run_default_alive")
    claimed = agent.claim("run_default_alive", "node-a", LEASE, now_ms() - 3_600_000)
    agent.renew_lease(claimed, "node-a", now_ms() + 60_000, indexed_until_ms=now_ms())
    assert claimed.lease_until_ms is not None
    assert _index_sort_key(names, "run_default_alive") == lease_sort_key(claimed.lease_until_ms)

    # When the reaper runs
    report = reap(store, now_ms=now_ms(), grace_seconds=60)

    # Then it read the row, found the lease live, and left the run alone
    assert report.renewed == ["run_default_alive"]
    assert report.requeued == report.failed == report.cancelled == []
    run = agent.get_run("run_default_alive")
    assert run is not None and run.state is RunState.RUNNING and run.attempt == 1
    assert _messages(aws["default"]) == []


def test_a_bounded_reaper_continues_where_it_stopped(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames
) -> None:
    # Given three runs whose nodes vanished, in (at least two) lease partitions
    lost = ["run_default_lost-a", "run_default_lost-b", "run_default_lost-c"]
    for run_id in lost:
        _queued_run(names, run_id)
        agent.claim(run_id, "node-a", LEASE, now_ms() - 3_600_000)

    # When the reaper may read one candidate per invocation
    first = reap(store, now_ms=now_ms(), grace_seconds=60, max_candidates=1)

    # Then it re-queues one, says it stopped at its bound, and keeps where to continue
    assert len(first.requeued) == 1 and len(first.bounded) == 1
    assert store.reaper_position() is not None
    # And the next invocations take the others, each once, until a sweep ends and the position is cleared
    requeued = list(first.requeued)
    for _ in range(2 * RUN_INDEX_SHARDS):
        report = reap(store, now_ms=now_ms(), grace_seconds=60, max_candidates=1)
        requeued += report.requeued
        if not report.bounded:
            break
    assert sorted(requeued) == lost
    assert store.reaper_position() is None


def test_a_reaper_out_of_time_saves_its_position_before_reading(
    store: MaintenanceStore, agent: AgentAws, names: resources.ResourceNames
) -> None:
    _queued_run(names, "run_default_late")
    agent.claim("run_default_late", "node-a", LEASE, now_ms() - 3_600_000)
    ticks = iter([0.0, 30.0])
    report = reap(store, now_ms=now_ms(), grace_seconds=60, max_seconds=20, clock=lambda: next(ticks))
    assert report.requeued == [] and report.bounded == [lease_index_partition("default", 0)]
    assert reap(store, now_ms=now_ms(), grace_seconds=60).requeued == ["run_default_late"]
