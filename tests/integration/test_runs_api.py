"""Runs over the real API handler on in-process moto: idempotent enqueue, get (checkpoint, queued_reason),
search, cancel, requeue and logs. The agent's side is played by node_agent.aws.AgentAws, as a node does it."""

from __future__ import annotations

import base64
import json
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from functions.api.app import lambda_handler
from functions.api.dependencies import services
from functions.dal.queue import RunQueue
from functions.dal.store import Store
from functions.logic import run_logs, run_search, runs
from node_agent.aws import AgentAws, ClaimRefused
from runly.tracing import TraceParent
from runly.wire import Checkpoint
from runly_cli.embedded.gateway import Gateway
from runly_client.client import ApiError, RunlyClient
from runly_core import resources, table
from runly_core.contracts import EnqueueRunRequest, FailureReason, RunMessage, RunState, Scope
from runly_core.records import IdempotencyRecord, NodeRecord, RunRecord, iso, run_log_prefix, utcnow
from runly_core.run_store import RUN_INDEX_SHARDS, index_shard, run_key
from tests.support.run_api import GREET, NAMES, Api, api_fixtures, error_field, registered_greeter, serialized_dynamodb
from tests.support.runs import put_run as put_run_items

LEASE = 30


@pytest.fixture
def names() -> resources.ResourceNames:
    return NAMES


stack, aws, api = api_fixtures()


@pytest.fixture
def greeter(api: Api, tmp_path: Path) -> dict[str, Any]:
    return registered_greeter(api, tmp_path)


@pytest.fixture
def agent(aws: dict[str, str], names: resources.ResourceNames) -> AgentAws:
    return AgentAws(queue_url=aws["default"], table_name=names.table, bucket=names.feed_bucket)


def now_ms() -> int:
    return int(time.time() * 1000)


def messages(queue_url: str) -> list[str]:
    """Run ids of the messages waiting in a queue (received and left invisible: read once per test)."""
    sqs = boto3.client("sqs")
    found: list[str] = []
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
        "Messages", []
    ):
        found += [RunMessage.model_validate_json(m["Body"]).run_id for m in batch]
    return found


def put_run(
    names: resources.ResourceNames,
    run_id: str,
    *,
    environment: str = "default",
    created_at: datetime | None = None,
    state: RunState = RunState.QUEUED,
    package: str = "greeter",
    job: str = "greet",
) -> RunRecord:
    """A run item as the API would have recorded it, with a chosen creation time (search tests)."""
    record = RunRecord(
        run_id=run_id,
        state=state,
        package=package,
        version="1.0.0",
        job=job,
        entry_point=f"{package}.jobs:Greet",
        environment=environment,
        config_json=json.dumps({"name": run_id}),
        timeout_seconds=60,
        max_attempts=3,
        bundle_key=f"packages/{package}/1.0.0/{package}-1.0.0.runly",
        bundle_sha256="0" * 64,
        created_at=iso(created_at or utcnow()),
        finished_at=iso(utcnow()) if state.terminal else None,
    )
    put_run_items(boto3.resource("dynamodb").Table(names.table), record)
    return record


def put_node(agent: AgentAws, node_id: str, *, environment: str = "default", fresh: bool = True, **extra: Any) -> None:
    now = utcnow()
    expires = now + timedelta(seconds=90 if fresh else -10)
    fields: dict[str, Any] = {
        "node_id": node_id,
        "host": "host-1",
        "environment": environment,
        "capacity": 2,
        "agent_version": "0.1.0",
        "state": "idle",
        "started_at": iso(now),
        "last_seen": iso(now),
        "expires_at": int(expires.timestamp()),
        **extra,
    }
    agent.put_node(NodeRecord(**fields))


# ---------------------------------------------------------------- enqueue: the run's trace (runly.tracing)

CALLER_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def stored_trace(names: resources.ResourceNames, run_id: str) -> TraceParent:
    item = boto3.resource("dynamodb").Table(names.table).get_item(Key=run_key(run_id))["Item"]
    return TraceParent.parse(item["traceparent"])


def test_a_run_continues_the_callers_trace(api: Api, greeter: dict[str, Any], names: resources.ResourceNames) -> None:
    # Given an application request in trace 4bf9...4736
    # When it enqueues a run with its traceparent
    created = api("POST", "/runs", GREET, headers={"traceparent": CALLER_TRACE}, scope=Scope.WRITE)

    # Then the run is in that trace: its view says so, and the run item carries a context of that trace to continue
    assert created.status == 201, created.body
    assert created.body["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert api("GET", f"/runs/{created.body['id']}").body["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    stored = stored_trace(names, created.body["id"])
    assert stored.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and stored.sampled


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": CALLER_TRACE.upper()},
        {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
        {"traceparent": "garbage"},
    ],
)
def test_a_run_without_a_valid_traceparent_starts_a_trace_of_its_own(
    api: Api, greeter: dict[str, Any], names: resources.ResourceNames, headers: dict[str, str]
) -> None:
    # A malformed one is ignored, as W3C trace context says: the enqueue does not fail over its tracing.
    first = api("POST", "/runs", GREET, headers=headers, scope=Scope.WRITE)
    second = api("POST", "/runs", GREET, headers=headers, scope=Scope.WRITE)
    assert first.status == second.status == 201, first.body
    trace_ids = {first.body["trace_id"], second.body["trace_id"]}
    assert len(trace_ids) == 2 and "4bf92f3577b34da6a3ce929d0e0e4736" not in trace_ids
    assert stored_trace(names, first.body["id"]).trace_id == first.body["trace_id"]


def test_a_batch_is_one_trace_and_a_replayed_key_keeps_its_runs_trace(api: Api, greeter: dict[str, Any]) -> None:
    batch = api(
        "POST", "/runs/batch", {"runs": [GREET, {**GREET, "idempotency_key": "k-1"}]},
        headers={"traceparent": CALLER_TRACE}, scope=Scope.WRITE,
    )  # fmt: skip
    assert batch.status == 201, batch.body
    assert [run["trace_id"] for run in batch.body["runs"]] == ["4bf92f3577b34da6a3ce929d0e0e4736"] * 2

    # The same key in another trace gets the run back as it was: in the trace it was created in.
    other_trace = "00-11111111111111111111111111111111-2222222222222222-01"
    again = api("POST", "/runs", GREET, headers={"Idempotency-Key": "k-1", "traceparent": other_trace})
    assert again.status == 200 and again.body["id"] == batch.body["runs"][1]["id"]
    assert again.body["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_requeued_run_is_in_the_requeue_requests_trace(api: Api, names: resources.ResourceNames) -> None:
    original = put_run(names, "run_default_traced", state=RunState.FAILED)
    requeued = api("POST", f"/runs/{original.run_id}/requeue", {}, headers={"traceparent": CALLER_TRACE})
    assert requeued.status == 201, requeued.body
    assert requeued.body["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


# ---------------------------------------------------------------- enqueue: idempotency, limits


def test_a_repeated_idempotency_key_returns_the_same_run(
    api: Api, greeter: dict[str, Any], aws: dict[str, str]
) -> None:
    # Given a run enqueued with an Idempotency-Key
    first = api("POST", "/runs", GREET, headers={"Idempotency-Key": "order-42:v1"}, scope=Scope.WRITE)
    assert first.status == 201, first.body

    # When the client retries the same request with the same key (its response was lost)
    again = api("POST", "/runs", GREET, headers={"Idempotency-Key": "order-42:v1"}, scope=Scope.WRITE)

    # Then it gets the same run back with 200, and only one run was dispatched
    assert again.status == 200 and again.body["id"] == first.body["id"]
    assert messages(aws["default"]) == [first.body["id"]]

    # And the same key with another body is a conflict naming the key
    other = api("POST", "/runs", {**GREET, "config": {"name": "Bob"}}, headers={"Idempotency-Key": "order-42:v1"})
    assert other.status == 409 and error_field(other) == "Idempotency-Key"
    assert first.body["id"] in other.body["message"]

    # And keys are per API key: another caller's key of the same name is its own
    mine = api("POST", "/runs", GREET, headers={"Idempotency-Key": "order-42:v1"}, key_id="other-key")
    assert mine.status == 201 and mine.body["id"] != first.body["id"]


@pytest.mark.parametrize("key", ["", "has space", "x" * 129, "naïve", "a/b"])
def test_a_malformed_idempotency_key_is_refused(api: Api, greeter: dict[str, Any], key: str) -> None:
    reply = api("POST", "/runs", GREET, headers={"Idempotency-Key": key})
    assert reply.status == 422 and error_field(reply) == "Idempotency-Key", reply.body


def test_concurrent_requests_with_one_key_make_one_run(api: Api, greeter: dict[str, Any], aws: dict[str, str]) -> None:
    # Given eight clients that send the same request with the same key at the same moment
    deps = services()
    request = EnqueueRunRequest.model_validate(GREET)
    start = threading.Barrier(8)
    results: list[tuple[str, bool]] = []
    failures: list[BaseException] = []

    def send() -> None:
        start.wait()
        try:
            run, created = runs.enqueue(request, store=deps.store, queue=deps.queue, owner="k", idempotency_key="same")
            results.append((run.id, created))
        except Exception as exc:  # noqa: BLE001  # the assertion below reports it
            failures.append(exc)

    with serialized_dynamodb():
        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # Then exactly one created a run, every one got that run, and one message was sent
    assert not failures, failures
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert messages(aws["default"]) == [results[0][0]]


def test_a_request_that_loses_the_race_for_its_key_answers_with_the_winners_run(
    api: Api, greeter: dict[str, Any], aws: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a first request that recorded its run under key "k"
    deps = services()
    request = EnqueueRunRequest.model_validate(GREET)
    winner, _ = runs.enqueue(request, store=deps.store, queue=deps.queue, owner="o", idempotency_key="k")
    # And a second one that looked the key up just before the first stored it (it saw nothing)
    real_lookup = Store.get_idempotency
    lookups = iter([None])
    monkeypatch.setattr(
        Store, "get_idempotency", lambda self, owner, key: next(lookups, None) or real_lookup(self, owner, key)
    )

    # When the second one tries to record its own run
    run, created = runs.enqueue(request, store=deps.store, queue=deps.queue, owner="o", idempotency_key="k")

    # Then its conditional write fails, nothing of its own is kept, and it answers with the winner's run
    assert (run.id, created) == (winner.id, False)
    assert messages(aws["default"]) == [winner.id]
    status = api("GET", "/runs", query={"environment": "default"}).body
    assert [item["id"] for item in status["items"]] == [winner.id]


def test_an_expired_idempotency_key_is_free_again(
    api: Api, greeter: dict[str, Any], names: resources.ResourceNames
) -> None:
    first = api("POST", "/runs", GREET, headers={"Idempotency-Key": "daily"})
    # DynamoDB's TTL deletes late: the item is still there, past its expires_at
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key={"pk": "IDEM#test-key#daily", "sk": "IDEM"},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": int(time.time()) - 1},
    )
    second = api("POST", "/runs", {**GREET, "config": {"name": "Bob"}}, headers={"Idempotency-Key": "daily"})
    assert second.status == 201 and second.body["id"] != first.body["id"]


def test_a_run_whose_message_was_never_sent_is_dispatched_on_replay(
    api: Api, greeter: dict[str, Any], aws: dict[str, str], names: resources.ResourceNames
) -> None:
    # Given a request that recorded its run and key, then died before sending the message (over a minute ago)
    deps = services()
    request = EnqueueRunRequest.model_validate(GREET)
    long_ago = utcnow() - timedelta(minutes=5)
    record = put_run(names, "run_default_orphan")
    key = IdempotencyRecord(
        owner="test-key",
        key="k1",
        fingerprint=runs.request_fingerprint(request),
        run_id=record.run_id,
        created_at=iso(long_ago),
        expires_at=int(time.time()) + 3600,
    )
    boto3.resource("dynamodb").Table(names.table).put_item(Item=key.to_item())
    assert messages(aws["default"]) == []

    # When the client retries with its key
    reply = api("POST", "/runs", GREET, headers={"Idempotency-Key": "k1"})

    # Then it gets the run, and now its message is on the queue (once: the key remembers it was sent)
    assert reply.status == 200 and reply.body["id"] == "run_default_orphan"
    assert api("POST", "/runs", GREET, headers={"Idempotency-Key": "k1"}).status == 200
    assert messages(aws["default"]) == ["run_default_orphan"]
    assert deps.store.get_idempotency("test-key", "k1").dispatched  # type: ignore[union-attr]


def test_a_run_the_queue_refused_is_taken_back_with_its_key(
    api: Api, greeter: dict[str, Any], monkeypatch: pytest.MonkeyPatch, names: resources.ResourceNames
) -> None:
    # Given a queue that refuses the message
    queue_down = threading.Event()
    queue_down.set()
    send = RunQueue.dispatch

    def dispatch(self: RunQueue, message: RunMessage, *, delay_seconds: int = 0) -> str:
        if queue_down.is_set():
            raise RuntimeError("SQS is down")
        return send(self, message, delay_seconds=delay_seconds)

    monkeypatch.setattr(RunQueue, "dispatch", dispatch)
    reply = api("POST", "/runs", GREET, headers={"Idempotency-Key": "retry-me"})

    # Then the caller is told to retry, and neither the run nor the key is left behind
    assert reply.status == 503
    table = boto3.resource("dynamodb").Table(names.table)
    assert "Item" not in table.get_item(Key={"pk": "IDEM#test-key#retry-me", "sk": "IDEM"})
    assert api("GET", "/runs").body["items"] == []

    # And the retry with the same key succeeds once the queue is back
    queue_down.clear()
    assert api("POST", "/runs", GREET, headers={"Idempotency-Key": "retry-me"}).status == 201


def test_an_oversized_config_is_refused(api: Api, greeter: dict[str, Any], aws: dict[str, str]) -> None:
    reply = api("POST", "/runs", {**GREET, "config": {"name": "x" * (64 * 1024)}})
    assert reply.status == 413 and error_field(reply) == "config"
    assert messages(aws["default"]) == []


# ---------------------------------------------------------------- get: checkpoint, queued_reason


def test_queued_reason_says_why_a_run_waits(api: Api, names: resources.ResourceNames, agent: AgentAws) -> None:
    put_run(names, "run_default_q")

    def reason() -> str | None:
        reply = api("GET", "/runs/run_default_q")
        assert reply.status == 200, reply.body
        return reply.body["queued_reason"]  # type: ignore[no-any-return]

    # No node has joined the environment (one in another environment does not count; nor does a dead one)
    put_node(agent, "node-staging", environment="staging")
    put_node(agent, "node-dead", fresh=False)
    assert reason() == "no node online in environment default"

    # Every node online is draining
    put_node(agent, "node-draining", state="draining")
    assert reason() == "every node online in environment default is draining"

    # A node is online and takes work
    put_node(agent, "node-a")
    assert reason() == "waiting for a free node"

    # An attempt failed and the retry is not due yet
    agent.claim("run_default_q", "node-a", LEASE, now_ms())
    record = agent.get_run("run_default_q")
    assert record is not None
    agent.end_attempt(record, "node-a", state=RunState.QUEUED, reason=FailureReason.USER_ERROR, error={"message": "x"})
    retry_at = utcnow() + timedelta(minutes=2)
    table = boto3.resource("dynamodb").Table(names.table)
    table.update_item(
        Key=run_key("run_default_q"),
        UpdateExpression="SET retry_at = :at",
        ExpressionAttributeValues={":at": iso(retry_at)},
    )
    assert reason() == f"waiting for retry after attempt 1 (user_error) until {iso(retry_at)}"

    # Once the retry is due, the run waits for a node like any other
    table.update_item(
        Key=run_key("run_default_q"),
        UpdateExpression="SET retry_at = :at",
        ExpressionAttributeValues={":at": iso(utcnow() - timedelta(seconds=1))},
    )
    assert reason() == "waiting for a free node"

    # A run that is not Queued has no queued_reason
    agent.claim("run_default_q", "node-a", LEASE, now_ms())
    assert reason() is None


def test_get_shows_the_runs_last_checkpoint(api: Api, names: resources.ResourceNames, agent: AgentAws) -> None:
    put_run(names, "run_default_c")
    record = agent.claim("run_default_c", "node-a", LEASE, now_ms())
    assert api("GET", "/runs/run_default_c").body["checkpoint"] is None

    agent.write_checkpoint(
        record, "node-a", Checkpoint(watermark=40, state={"page": 3}, attempt=1, written_at=utcnow())
    )

    checkpoint = api("GET", "/runs/run_default_c").body["checkpoint"]
    assert checkpoint["watermark"] == 40 and checkpoint["state"] == {"page": 3} and checkpoint["attempt"] == 1


def test_runs_are_confined_to_a_node_keys_environment(api: Api, names: resources.ResourceNames) -> None:
    put_run(names, "run_default_0")
    put_run(names, "run_staging_1", environment="staging")
    assert api("GET", "/runs/run_staging_1", scope=Scope.NODE, environment="staging").status == 200
    assert api("GET", "/runs/run_default_0", scope=Scope.NODE, environment="staging").status == 403
    assert api("POST", "/runs/run_default_0/cancel", scope=Scope.WRITE, environment="staging").status == 403
    # Nothing changed for a caller who may not change it
    assert api("GET", "/runs/run_default_0").body["state"] == "Queued"
    # A search by a node key sees its own environment only, and asking for another is refused
    page = api("GET", "/runs", scope=Scope.NODE, environment="staging")
    assert [item["id"] for item in page.body["items"]] == ["run_staging_1"]
    assert api("GET", "/runs", query={"environment": "default"}, scope=Scope.NODE, environment="staging").status == 403


@pytest.mark.parametrize("path", ["/runs/" + "x" * 200, "/runs/bad%20id", "/runs/" + "x" * 200 + "/logs"])
def test_a_malformed_run_id_is_a_client_error(api: Api, path: str) -> None:
    reply = api("GET", path)
    assert reply.status == 422 and error_field(reply) == "run_id", reply.body


# ---------------------------------------------------------------- cancel


def test_a_cancelled_queued_run_never_starts(api: Api, greeter: dict[str, Any], agent: AgentAws) -> None:
    # Given a queued run
    run = api("POST", "/runs", GREET).body

    # When it is cancelled
    reply = api("POST", f"/runs/{run['id']}/cancel", scope=Scope.WRITE)

    # Then it is Cancelled at once, with a reason and a finish time
    assert reply.status == 200 and reply.body["state"] == "Cancelled"
    assert reply.body["error"]["reason"] == "cancelled" and reply.body["finished_at"]
    # And a node that receives its message refuses it as terminal (and deletes the message)
    with pytest.raises(ClaimRefused) as refused:
        agent.claim(run["id"], "node-a", LEASE, now_ms())
    assert refused.value.terminal
    # And cancelling again is a conflict that says where it stands
    again = api("POST", f"/runs/{run['id']}/cancel")
    assert again.status == 409 and "Cancelled" in again.body["message"]


def test_a_running_run_is_asked_to_stop_through_its_heartbeat(
    api: Api, names: resources.ResourceNames, agent: AgentAws
) -> None:
    # Given a run a node is running
    put_run(names, "run_default_r")
    record = agent.claim("run_default_r", "node-a", LEASE, now_ms())

    # When it is cancelled
    reply = api("POST", "/runs/run_default_r/cancel")

    # Then it is Cancelling, and the node learns it on its next heartbeat (which still holds the lease)
    assert reply.status == 200 and reply.body["state"] == "Cancelling"
    assert agent.extend_lease(record, "node-a", now_ms() + LEASE * 1000) is RunState.CANCELLING
    assert api("POST", "/runs/run_default_r/cancel").status == 409

    # And the node ends it Cancelled; a finished run cannot be cancelled
    agent.end_attempt(record, "node-a", state=RunState.CANCELLED, reason=FailureReason.CANCELLED)
    finished = api("POST", "/runs/run_default_r/cancel")
    assert finished.status == 409 and "Cancelled" in finished.body["message"]


def test_cancel_that_races_a_claim_cancels_the_running_run(
    api: Api, names: resources.ResourceNames, agent: AgentAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queued run that a node claims between the API reading it and writing Cancelled
    put_run(names, "run_default_race")
    real = Store.cancel_queued

    def claimed_first(self: Store, run_id: str, **kwargs: Any) -> RunRecord:
        agent.claim(run_id, "node-a", LEASE, now_ms())
        return real(self, run_id, **kwargs)

    monkeypatch.setattr(Store, "cancel_queued", claimed_first)

    # When the cancel goes on
    reply = api("POST", "/runs/run_default_race/cancel")

    # Then the API's conditional write lost, it read again, and asked the running job to stop instead
    assert reply.status == 200 and reply.body["state"] == "Cancelling"
    assert reply.body["attempts"][0]["node_id"] == "node-a"


# ---------------------------------------------------------------- requeue


def test_requeue_needs_a_finished_run(api: Api, names: resources.ResourceNames) -> None:
    put_run(names, "run_default_live")
    reply = api("POST", "/runs/run_default_live/requeue", {"resume": False})
    assert reply.status == 409 and "Queued" in reply.body["message"]
    assert api("POST", "/runs/nope/requeue").status == 404
    assert error_field(api("POST", "/runs/run_default_live/requeue", {"resume": "maybe"})) == "resume"
    assert error_field(api("POST", "/runs/run_default_live/requeue", {"resum": True})) == "resum"


def test_requeue_with_resume_starts_from_the_last_checkpoint(
    api: Api, greeter: dict[str, Any], agent: AgentAws, aws: dict[str, str]
) -> None:
    # Given a run that checkpointed at item 120 and then failed
    original = api("POST", "/runs", {**GREET, "timeout_seconds": 90, "max_attempts": 1}).body
    record = agent.claim(original["id"], "node-a", LEASE, now_ms())
    checkpoint = Checkpoint(watermark=120, last_item_id="item-119", attempt=1, written_at=utcnow())
    agent.write_checkpoint(record, "node-a", checkpoint)
    agent.end_attempt(
        record, "node-a", state=RunState.FAILED, reason=FailureReason.USER_ERROR, error={"message": "boom"}
    )
    messages(aws["default"])  # the original's message

    # When it is requeued with resume
    reply = api("POST", f"/runs/{original['id']}/requeue", {"resume": True}, scope=Scope.WRITE)

    # Then a new run with the same inputs is queued, linked to the original, starting from its checkpoint
    assert reply.status == 201, reply.body
    new = reply.body
    assert new["id"] != original["id"] and new["requeued_from"] == original["id"]
    assert new["state"] == "Queued" and new["attempts"] == [] and new["error"] is None
    for name in ("package", "version", "job", "environment", "config", "timeout_seconds", "max_attempts"):
        assert new[name] == original[name], name
    assert new["checkpoint"]["watermark"] == 120
    # And what the agent reads when it starts it is that checkpoint; its message is on the queue
    assert agent.get_checkpoint(new["id"]) == checkpoint
    assert messages(aws["default"]) == [new["id"]]
    assert api("GET", f"/runs/{new['id']}").body["checkpoint"]["last_item_id"] == "item-119"

    # And without resume, the new run starts from scratch
    fresh = api("POST", f"/runs/{original['id']}/requeue").body
    assert fresh["checkpoint"] is None and agent.get_checkpoint(fresh["id"]) is None


def test_requeue_with_resume_of_a_run_without_checkpoint_starts_from_scratch(
    api: Api, names: resources.ResourceNames
) -> None:
    put_run(names, "run_default_done", state=RunState.SUCCEEDED)
    reply = api("POST", "/runs/run_default_done/requeue", {"resume": True})
    assert (
        reply.status == 201 and reply.body["checkpoint"] is None and reply.body["requeued_from"] == "run_default_done"
    )


# ---------------------------------------------------------------- search


def ids(reply_body: dict[str, Any]) -> list[str]:
    return [item["id"] for item in reply_body["items"]]


def read_all(api: Api, query: dict[str, Any], **caller: Any) -> tuple[list[str], int]:
    """Every page of a search; returns the ids in order and the number of pages."""
    found: list[str] = []
    pages = 0
    cursor = None
    while True:
        reply = api("GET", "/runs", query={**query, **({"cursor": cursor} if cursor else {})}, **caller)
        assert reply.status == 200, reply.body
        pages += 1
        found += ids(reply.body)
        cursor = reply.body["next_cursor"]
        if cursor is None:
            return found, pages


def test_search_pages_through_every_environment_newest_first(api: Api, names: resources.ResourceNames) -> None:
    # Given runs in two environments, created in interleaved order (some at the very same millisecond)
    base = datetime(2030, 1, 1, tzinfo=UTC)
    expected = []
    for i in range(23):
        environment = "staging" if i % 3 == 0 else "default"
        created = base + timedelta(seconds=i // 2)
        put_run(names, f"run_{environment}_{i:02d}", environment=environment, created_at=created)
        expected.append((iso(created), f"run_{environment}_{i:02d}"))
    newest_first = [run_id for _, run_id in sorted(expected, reverse=True)]

    # When a client reads every page, 4 runs at a time
    found, pages = read_all(api, {"limit": 4})

    # Then it sees every run exactly once, newest first, over ceil(23 / 4) pages
    assert found == newest_first
    assert pages == 6


def test_search_filters(api: Api, names: resources.ResourceNames) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    put_run(names, "run_default_a", created_at=base, state=RunState.SUCCEEDED)
    put_run(names, "run_default_b", created_at=base + timedelta(hours=1), state=RunState.FAILED, job="other")
    put_run(names, "run_default_c", created_at=base + timedelta(hours=2), package="mailer")
    put_run(
        names, "run_staging_d", created_at=base + timedelta(hours=3), environment="staging", state=RunState.SUCCEEDED
    )

    def search(**query: Any) -> list[str]:
        reply = api("GET", "/runs", query=query)
        assert reply.status == 200, reply.body
        return ids(reply.body)

    assert search() == ["run_staging_d", "run_default_c", "run_default_b", "run_default_a"]
    assert search(state="Succeeded") == ["run_staging_d", "run_default_a"]
    assert search(package="Mailer") == ["run_default_c"]  # PEP 503: any spelling of the name
    assert search(job="other") == ["run_default_b"]
    assert search(environment="staging") == ["run_staging_d"]
    # created_after is inclusive, created_before exclusive; a time without an offset is UTC
    assert search(created_after=iso(base + timedelta(hours=1))) == ["run_staging_d", "run_default_c", "run_default_b"]
    assert search(created_before="2030-01-01T02:00:00") == ["run_default_b", "run_default_a"]
    assert search(created_after="2030-01-01T00:30:00Z", created_before="2030-01-01T02:00:00+00:00") == ["run_default_b"]
    assert search(state="Succeeded", environment="default") == ["run_default_a"]


def test_a_selective_filter_fills_its_pages_across_short_reads(
    api: Api, names: resources.ResourceNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 30 runs of which every fifth failed, and DynamoDB reading only 3 items per query
    monkeypatch.setattr(run_search, "_FILTERED_QUERY_PAGE", 3)
    base = datetime(2030, 1, 1, tzinfo=UTC)
    failed = []
    for i in range(30):
        state = RunState.FAILED if i % 5 == 0 else RunState.SUCCEEDED
        environment = ("default", "staging")[i % 2]
        put_run(
            names,
            f"run_{environment}_{i:02d}",
            created_at=base + timedelta(minutes=i),
            environment=environment,
            state=state,
        )
        if state is RunState.FAILED:
            failed.append(f"run_{environment}_{i:02d}")

    # When failed runs are searched 2 at a time
    first = api("GET", "/runs", query={"state": "Failed", "limit": 2}).body

    # Then the first page is full although each query matched at most one, and all pages hold every match once
    assert ids(first) == ["run_staging_25", "run_default_20"]
    found, _ = read_all(api, {"state": "Failed", "limit": 2})
    assert found == list(reversed(failed))


def test_a_page_that_runs_out_of_read_budget_is_short_but_loses_nothing(
    api: Api, names: resources.ResourceNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a search that may read only its floor of 2 entries per stream (2 environments x 16 shards) per page,
    # where only the oldest of 200 runs matches
    monkeypatch.setattr(run_search, "_FILTERED_QUERY_PAGE", 2)
    monkeypatch.setattr(run_search, "MAX_EVALUATED_PER_PAGE", 4)
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for i in range(200):
        state = RunState.FAILED if i == 0 else RunState.SUCCEEDED
        environment = ("default", "staging")[i % 2]
        put_run(
            names,
            f"run_{environment}_{i:03d}",
            created_at=base + timedelta(minutes=i),
            environment=environment,
            state=state,
        )

    # When the client follows the cursor
    found, pages = read_all(api, {"state": "Failed", "limit": 10})

    # Then the early pages come back empty with a cursor, and the match is found once, at the end
    assert found == ["run_default_000"]
    assert pages > 1


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ({"limit": 0}, 422, "limit"),
        ({"limit": 201}, 422, "limit"),
        ({"limit": "ten"}, 422, "limit"),
        ({"state": "Sleeping"}, 422, "state"),
        ({"created_after": "yesterday"}, 422, "created_after"),
        ({"created_after": "2030-01-02T00:00:00Z", "created_before": "2030-01-01T00:00:00Z"}, 422, "created_before"),
        ({"environment": "Bad Env"}, 422, "environment"),
        ({"environment": "prod"}, 404, "environment"),
        ({"package": "../etc"}, 422, "package"),
        ({"cursor": "not a cursor!"}, 400, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'{"v": 1, "q": "x"}').decode()}, 400, "cursor"),
    ],
)
def test_bad_search_input_names_the_field(api: Api, query: dict[str, Any], status: int, field: str) -> None:
    reply = api("GET", "/runs", query=query)
    assert (reply.status, error_field(reply)) == (status, field), reply.body


def test_a_cursor_only_continues_its_own_query(api: Api, names: resources.ResourceNames) -> None:
    for i in range(3):
        put_run(names, f"run_default_{i}", created_at=datetime(2030, 1, 1, tzinfo=UTC) + timedelta(minutes=i))
    cursor = api("GET", "/runs", query={"limit": 1}).body["next_cursor"]
    assert cursor is not None
    # Another filter
    assert error_field(api("GET", "/runs", query={"limit": 1, "cursor": cursor, "state": "Queued"})) == "cursor"
    # A position edited by hand to something that is not a position
    raw = json.loads(run_search.decode_cursor_json(cursor))
    raw["after"] = {"0": "DROP TABLE"}
    tampered = base64.urlsafe_b64encode(zlib.compress(json.dumps(raw).encode())).decode()
    assert error_field(api("GET", "/runs", query={"limit": 1, "cursor": tampered})) == "cursor"
    # A position that is a run of another stream than the one it is kept for
    other_stream = (index_shard("run_default_0") + 1) % RUN_INDEX_SHARDS  # another shard, or another environment's
    raw["after"] = {str(other_stream): "2030-01-01T00:00:00.000Z#run_default_0"}
    tampered = base64.urlsafe_b64encode(zlib.compress(json.dumps(raw).encode())).decode()
    assert error_field(api("GET", "/runs", query={"limit": 1, "cursor": tampered})) == "cursor"
    # A node key cannot continue an admin's cursor over every environment
    assert (
        error_field(api("GET", "/runs", query={"limit": 1, "cursor": cursor}, scope=Scope.NODE, environment="default"))
        == "cursor"
    )


# ---------------------------------------------------------------- logs


def ship(names: resources.ResourceNames, run_id: str, attempt: int, *chunks: bytes) -> None:
    s3 = boto3.client("s3")
    for seq, data in enumerate(chunks):
        s3.put_object(Bucket=names.feed_bucket, Key=f"{run_log_prefix(run_id, attempt)}{seq:08d}.log", Body=data)


def test_logs_page_through_the_chunks_without_splitting_a_character(
    api: Api, names: resources.ResourceNames, agent: AgentAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a running run whose node shipped two chunks, the second starting inside a character ("é" is 2 bytes)
    monkeypatch.setattr(run_logs, "PAGE_BYTES", 7)
    put_run(names, "run_default_log")
    record = agent.claim("run_default_log", "node-a", LEASE, now_ms())
    text = "héllo wörld\nbye"
    data = text.encode()
    ship(names, "run_default_log", 1, data[:2], data[2:])

    # When a client reads page after page while it runs
    pages = []
    cursor = None
    while True:
        reply = api("GET", "/runs/run_default_log/logs", query={"cursor": cursor} if cursor else {}, scope=Scope.READ)
        assert reply.status == 200, reply.body
        pages.append(reply.body)
        if not reply.body["text"]:
            break
        cursor = reply.body["next_cursor"]

    # Then it gets all of the text in order, whole characters only, and is told to come back for more
    assert "".join(page["text"] for page in pages) == text
    assert all(page["attempt"] == 1 for page in pages)
    assert not pages[-1]["complete"] and pages[-1]["next_cursor"]

    # When the node ships the rest and ends the run
    ship(names, "run_default_log", 1, data[:2], data[2:], b" and done")
    agent.end_attempt(record, "node-a", state=RunState.SUCCEEDED)
    rest = api("GET", "/runs/run_default_log/logs", query={"cursor": pages[-1]["next_cursor"]}).body

    # Then the follower gets exactly what was added (a page at a time), and the log is complete
    assert rest["text"] == " and do" and not rest["complete"]
    final = api("GET", "/runs/run_default_log/logs", query={"cursor": rest["next_cursor"]}).body
    assert final == {"run_id": "run_default_log", "attempt": 1, "text": "ne", "next_cursor": None, "complete": True}


def test_logs_of_an_earlier_attempt_and_a_download(
    api: Api, names: resources.ResourceNames, agent: AgentAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_run(names, "run_default_two")
    first = agent.claim("run_default_two", "node-a", LEASE, now_ms())
    agent.end_attempt(
        first, "node-a", state=RunState.QUEUED, reason=FailureReason.PROCESS_CRASH, error={"message": "x"}
    )
    ship(names, "run_default_two", 1, b"first try\n")
    agent.claim("run_default_two", "node-b", LEASE, now_ms())
    ship(names, "run_default_two", 2, b"second ", b"try\n")

    # The latest attempt by default; it still runs, so it is not complete
    latest = api("GET", "/runs/run_default_two/logs").body
    assert (latest["attempt"], latest["text"], latest["complete"]) == (2, "second try\n", False)
    # Attempt 1 ended: its log is complete
    assert api("GET", "/runs/run_default_two/logs", query={"attempt": 1}).body["complete"] is True
    # A download is the whole text of one attempt, as a file
    download = api("GET", "/runs/run_default_two/logs", query={"download": True})
    assert download.status == 200 and download.body == "second try\n"
    assert download.headers["content-type"].startswith("text/plain")
    assert 'filename="run_default_two-attempt-2.log"' in download.headers["content-disposition"]
    # Too large to download: 413, with a hint to page
    monkeypatch.setattr(run_logs, "MAX_DOWNLOAD_BYTES", 5)
    too_large = api("GET", "/runs/run_default_two/logs", query={"download": True})
    assert too_large.status == 413 and error_field(too_large) == "download" and "cursor" in too_large.body["message"]


def test_logs_of_a_run_that_has_not_started(api: Api, names: resources.ResourceNames) -> None:
    put_run(names, "run_default_new")
    page = api("GET", "/runs/run_default_new/logs").body
    assert page == {"run_id": "run_default_new", "attempt": 0, "text": "", "next_cursor": None, "complete": False}


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ({"attempt": 3}, 404, "attempt"),
        ({"attempt": 0}, 422, "attempt"),
        ({"cursor": "%%%"}, 400, "cursor"),
        ({"download": "perhaps"}, 422, "download"),
    ],
)
def test_bad_log_requests_name_the_field(
    api: Api, names: resources.ResourceNames, query: dict[str, Any], status: int, field: str
) -> None:
    put_run(names, "run_default_l")
    reply = api("GET", "/runs/run_default_l/logs", query=query)
    assert (reply.status, error_field(reply)) == (status, field), reply.body


def test_a_log_cursor_belongs_to_its_run(api: Api, names: resources.ResourceNames, agent: AgentAws) -> None:
    for run_id in ("run_default_x", "run_default_y"):
        put_run(names, run_id)
        agent.claim(run_id, "node-a", LEASE, now_ms())
        ship(names, run_id, 1, b"out")
    cursor = api("GET", "/runs/run_default_x/logs").body["next_cursor"]
    assert error_field(api("GET", "/runs/run_default_y/logs", query={"cursor": cursor})) == "cursor"


# ---------------------------------------------------------------- the client, over HTTP


def test_the_client_drives_runs_logs_pins_and_the_feed_over_http(
    api: Api, greeter: dict[str, Any], names: resources.ResourceNames, agent: AgentAws
) -> None:
    # Given the API behind the local gateway, with an authorizer that lets an admin key in
    def authorizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"isAuthorized": True, "context": {"key_id": "client-key", "scope": "admin", "environment": ""}}

    with Gateway(lambda_handler, authorizer=authorizer) as gateway:
        client = RunlyClient(gateway.url, api_key="rly_client_secret")

        # The feed and pins
        assert [p.name for p in client.list_packages()] == ["greeter"]
        assert [v.version for v in client.list_versions("greeter")] == ["1.0.0"]
        assert client.get_version("greeter", "1.0.0").jobs[0].name == "greet"
        assert client.set_pin("default", "greeter", "<2").specifier == "<2"
        assert [p.package for p in client.list_pins("default")] == ["greeter"]
        assert client.get_pin("default", "greeter").updated_by == "client-key"

        # An idempotent enqueue, search and cancel
        request = EnqueueRunRequest.model_validate(GREET)
        run = client.enqueue(request, idempotency_key="client-1")
        assert client.enqueue(request, idempotency_key="client-1").id == run.id
        assert [r.id for r in client.iter_runs(page_size=1)] == [run.id]
        tagged = client.enqueue(request.model_copy(update={"tags": {"tenant": "acme", "tier": "gold"}}))
        assert tagged.tags == {"tenant": "acme", "tier": "gold"}
        assert [r.id for r in client.iter_runs(tags={"tenant": "acme", "tier": "gold"})] == [tagged.id]
        assert client.list_runs(tags={"tenant": "acme", "tier": "silver"}).items == []
        client.cancel_run(tagged.id)
        assert client.cancel_run(run.id).state is RunState.CANCELLED
        requeued = client.requeue_run(run.id, resume=True)
        assert requeued.requeued_from == run.id and requeued.state is RunState.QUEUED

        # Logs: followed while they are shipped, then downloaded whole
        record = agent.claim(requeued.id, "node-a", LEASE, now_ms())
        ship(names, requeued.id, 1, "héllo ".encode(), "wörld\n".encode())
        agent.end_attempt(record, "node-a", state=RunState.SUCCEEDED)
        assert "".join(client.follow_logs(requeued.id, interval=0.01)) == "héllo wörld\n"
        assert client.download_logs(requeued.id) == "héllo wörld\n"

        client.delete_pin("default", "greeter")
        with pytest.raises(ApiError) as missing:
            client.get_pin("default", "greeter")
        assert missing.value.status == 404


# ---------------------------------------------------------------- tags


def test_tags_are_kept_shown_and_searched_with_the_other_filters(api: Api, greeter: dict[str, Any]) -> None:
    def enqueue(tags: dict[str, str]) -> str:
        reply = api("POST", "/runs", {"package": "greeter", "job": "greet", "config": {"name": "x"}, "tags": tags})
        assert reply.status == 201, reply.body
        assert reply.body["tags"] == tags
        return str(reply.body["id"])

    acme = enqueue({"tenant": "acme", "tier": "gold", "url": "https://x.test/a:b"})
    acme_silver = enqueue({"tenant": "acme", "tier": "silver"})
    other = enqueue({"tenant": "globex"})
    untagged = enqueue({})

    def search(**query: Any) -> list[str]:
        reply = api("GET", "/runs", query=query)
        assert reply.status == 200, reply.body
        return ids(reply.body)

    assert api("GET", f"/runs/{acme}").body["tags"] == {"tenant": "acme", "tier": "gold", "url": "https://x.test/a:b"}
    assert api("GET", f"/runs/{untagged}").body["tags"] == {}
    assert search(tag="tenant:acme") == [acme_silver, acme]
    # repeated (API Gateway joins them with commas): a run must have all of them
    assert search(tag="tenant:acme,tier:gold") == [acme]
    assert search(tag="url:https://x.test/a:b") == [acme]  # the value is everything after the first ':'
    assert search(tag="tenant:globex", state="Queued") == [other]
    assert search(tag="tenant:globex", state="Running") == []
    assert search(tag="tenant:nobody") == []
    # a requeue keeps the tags of the run it repeats
    api("POST", f"/runs/{other}/cancel")
    requeued = api("POST", f"/runs/{other}/requeue", {})
    assert requeued.status == 201, requeued.body
    assert requeued.body["tags"] == {"tenant": "globex"}


@pytest.mark.parametrize(
    "tags",
    [
        {"a:b": "c"},
        {"a=b": "c"},
        {"": "c"},
        {"k" * 65: "c"},
        {"key": "v" * 257},
        {"key": "line\nbreak"},
        {"key": "a,b"},
        {f"k{i}": "v" for i in range(21)},
    ],
)
def test_bad_tags_are_refused_naming_the_field(api: Api, greeter: dict[str, Any], tags: dict[str, str]) -> None:
    reply = api("POST", "/runs", {"package": "greeter", "job": "greet", "config": {"name": "x"}, "tags": tags})
    field = error_field(reply)
    assert reply.status == 422 and field is not None and field.startswith("tags"), reply.body


@pytest.mark.parametrize(
    "tag",
    ["tenant", "a=b:c", ":v", "key:a\tb", ",".join(f"k{i}:v" for i in range(11)), "tenant:a,tenant:b"],
)
def test_bad_tag_filters_are_refused_naming_the_field(api: Api, tag: str) -> None:
    reply = api("GET", "/runs", query={"tag": tag})
    assert (reply.status, error_field(reply)) == (400, "tag"), reply.body


# ---------------------------------------------------------------- search over the index shards


def test_shards_merge_newest_first_across_pages_with_filters(api: Api, names: resources.ResourceNames) -> None:
    # Given 64 runs of one environment, spread over the index shards, every third one failed
    base = datetime(2030, 1, 1, tzinfo=UTC)
    failed: list[tuple[str, str]] = []
    for i in range(64):
        state = RunState.FAILED if i % 3 == 0 else RunState.SUCCEEDED
        created = base + timedelta(seconds=i // 4)  # four runs at each instant: the run id breaks the tie
        put_run(names, f"run_default_{i:02d}", created_at=created, state=state)
        if state is RunState.FAILED:
            failed.append((iso(created), f"run_default_{i:02d}"))
    assert len({index_shard(run_id) for _, run_id in failed}) > 8  # the matches really live in many shards

    # When failed runs are read 5 at a time
    found, pages = read_all(api, {"state": "Failed", "environment": "default", "limit": 5})

    # Then every match comes once, newest first (time, then run id), over full pages but the last
    assert found == [run_id for _, run_id in sorted(failed, reverse=True)]
    assert pages == -(-len(failed) // 5)


def test_a_run_whose_state_moved_since_the_index_was_written_is_checked_on_its_row(
    api: Api, names: resources.ResourceNames
) -> None:
    # Given a Queued run whose index entry still says Queued while its row, read afterwards, says Running (the
    # index is eventually consistent: here its entry is made stale by hand, as a lagging index would hold it)
    put_run(names, "run_default_moved", state=RunState.QUEUED)
    table = boto3.resource("dynamodb").Table(names.table)
    table.update_item(
        Key=run_key("run_default_moved"),
        UpdateExpression="SET #state = :running",
        ExpressionAttributeNames={"#state": "state"},
        ExpressionAttributeValues={":running": RunState.RUNNING.value},
    )
    original_query = Store.query_runs

    def lagging(self: Store, *args: Any, **kwargs: Any) -> Any:
        kwargs["filters"] = {}  # the index "matched" it: the row decides
        return original_query(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "query_runs", lagging)
        reply = api("GET", "/runs", query={"state": "Queued"})
    assert reply.status == 200 and ids(reply.body) == []


@pytest.mark.parametrize(
    "cursor",
    [
        "A" * (run_search.MAX_CURSOR_CHARS + 1),  # longer than any cursor
        # A few hundred bytes that inflate past what a cursor may hold
        base64.urlsafe_b64encode(zlib.compress(b'{"v": 2, "q": "' + b"x" * (200 * 1024) + b'"}')).decode(),
        base64.urlsafe_b64encode(b"not zlib at all").decode(),
    ],
    ids=["oversize", "inflates-too-far", "not-compressed"],
)
def test_a_cursor_past_its_bounds_is_a_400_naming_cursor(api: Api, cursor: str) -> None:
    reply = api("GET", "/runs", query={"cursor": cursor})
    assert (reply.status, error_field(reply)) == (400, "cursor"), reply.body


def test_a_cursor_of_every_environment_stream_stays_small(api: Api, names: resources.ResourceNames) -> None:
    # Given runs in both environments, and a page that stops with every stream part read
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for i in range(40):
        environment = ("default", "staging")[i % 2]
        put_run(names, f"run_{environment}_{i:02d}", environment=environment, created_at=base + timedelta(seconds=i))
    cursor = api("GET", "/runs", query={"limit": 3}).body["next_cursor"]
    # Then its cursor is compressed JSON well within the bound, at version 2
    assert cursor is not None and len(cursor) < run_search.MAX_CURSOR_CHARS // 4
    assert json.loads(run_search.decode_cursor_json(cursor))["v"] == 2


def test_a_batch_read_dynamodb_keeps_refusing_is_a_503(api: Api, names: resources.ResourceNames) -> None:
    # Given a run to list, and DynamoDB leaving every key of a BatchGetItem unprocessed (throttled)
    put_run(names, "run_default_throttled")
    calls: list[int] = []

    class Throttled:
        def batch_get_item(self, **request: Any) -> dict[str, Any]:
            calls.append(1)
            return {"Responses": {}, "UnprocessedKeys": request["RequestItems"]}

    def read(self: Store, keys: list[dict[str, str]]) -> list[dict[str, Any]]:
        return table.batch_get(Throttled(), names.table, keys, sleep=lambda seconds: None)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "_batch_get", read)
        reply = api("GET", "/runs")

    # Then the search answers 503 after its retries: never a page silently missing the run
    assert reply.status == 503 and reply.body["code"] == "unavailable"
    assert len(calls) == table.BATCH_WRITE_ATTEMPTS
