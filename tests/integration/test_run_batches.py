"""POST /runs/batch over the real API handler on in-process moto: every item checked before anything is written,
idempotency keys per item (shared with POST /runs), every created run on its queue, a partly refused send taken
back, and the client's enqueue_many over HTTP."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from functions.api.app import lambda_handler
from functions.api.dependencies import services
from functions.dal.nodes import NodeStore
from functions.dal.queue import RunQueue
from functions.logic import runs
from functions.logic.packages import resolve_version
from runly.wire import JobSpec
from runly_cli.embedded.gateway import Gateway
from runly_client.client import ApiError, RunlyClient
from runly_core.contracts import EnqueueRunRequest, RunMessage, Scope
from runly_core.records import IdempotencyRecord, PackageRecord, iso, utcnow
from tests.support.run_api import GREET, NAMES, Api, api_fixtures, error_field, registered_greeter
from tests.support.runs import put_run

stack, aws, api = api_fixtures()


@pytest.fixture
def greeter(api: Api, tmp_path: Path) -> dict[str, Any]:
    return registered_greeter(api, tmp_path)


def messages(queue_url: str) -> list[str]:
    """Run ids of the messages waiting in a queue (WaitTimeSeconds=0: moto would honour the queue's long poll)."""
    sqs = boto3.client("sqs")
    found: list[str] = []
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
        "Messages", []
    ):
        found += [RunMessage.model_validate_json(m["Body"]).run_id for m in batch]
    return found


def batch(api: Api, items: Sequence[dict[str, Any]], **kwargs: Any) -> Any:
    return api("POST", "/runs/batch", {"runs": list(items)}, **kwargs)


def run_items() -> list[dict[str, Any]]:
    return [item for item in _scan() if item["sk"] == "RUN"]


def _scan() -> list[dict[str, Any]]:
    return list(boto3.resource("dynamodb").Table(NAMES.table).scan()["Items"])


def test_every_run_of_a_batch_is_recorded_and_reaches_its_queue(
    api: Api, greeter: dict[str, Any], aws: dict[str, str]
) -> None:
    # Given 23 runs (three SendMessageBatch groups in default) and two in staging
    items: list[dict[str, Any]] = [{**GREET, "config": {"name": f"n{i}"}} for i in range(23)]
    items += [{**GREET, "environment": "staging", "config": {"name": f"s{i}"}} for i in range(2)]

    reply = batch(api, items)

    # Then each comes back in request order, created, and each one's message is on its environment's queue
    assert reply.status == 201, reply.body
    views = reply.body["runs"]
    assert [v["config"]["name"] for v in views] == [item["config"]["name"] for item in items]
    assert {v["state"] for v in views} == {"Queued"} and all(v["queued_reason"] is None for v in views)
    assert sorted(messages(aws["default"])) == sorted(v["id"] for v in views[:23])
    assert sorted(messages(aws["staging"])) == sorted(v["id"] for v in views[23:])
    assert api("GET", f"/runs/{views[0]['id']}").body["version"] == "1.0.0"


@pytest.mark.parametrize(
    ("bad", "status", "field"),
    [
        ({"config": {"name": 7}}, 422, "runs[2].config.name"),
        ({"config": {"nom": "x"}}, 422, "runs[2].config"),
        ({"package": "nothing-here"}, 404, "runs[2].package"),
        ({"version": "9.9.9"}, 404, "runs[2].version"),
        ({"job": "nope"}, 404, "runs[2].job"),
        ({"environment": "prod"}, 404, "runs[2].environment"),
        ({"config": {"name": "x" * (64 * 1024)}}, 413, "runs[2].config"),
        ({"job": "not a job name"}, 422, "runs[2].job"),  # refused by the body's own validation
        ({"idempotency_key": "has space"}, 422, "runs[2].idempotency_key"),
        ({"surprise": 1}, 422, "runs[2].surprise"),
    ],
)
def test_a_bad_item_rejects_the_batch_naming_it_and_nothing_is_enqueued(
    api: Api, greeter: dict[str, Any], aws: dict[str, str], bad: dict[str, Any], status: int, field: str
) -> None:
    items = [{**GREET, "idempotency_key": f"k{i}"} for i in range(4)]
    items[2] = {**items[2], **bad}

    reply = batch(api, items)

    assert reply.status == status and error_field(reply) == field, reply.body
    assert set(reply.body) >= {"code", "message"}
    if status != 422 or "config" in field:  # the use case's own checks say which item in the message too
        assert reply.body["message"].startswith(f"{field}: ")
    assert run_items() == [] and messages(aws["default"]) == []
    assert not any(str(item["pk"]).startswith("IDEM#") for item in _scan())


def test_a_version_outside_the_pin_is_refused_for_the_item_that_names_it(
    api: Api, greeter: dict[str, Any], aws: dict[str, str]
) -> None:
    api("PUT", "/environments/default/pins/greeter", {"specifier": "<1"})
    reply = batch(api, [{**GREET, "environment": "staging"}, {**GREET, "version": "1.0.0"}])
    assert reply.status == 409 and error_field(reply) == "runs[1].version"
    assert run_items() == []
    api("DELETE", "/environments/default/pins/greeter")


@pytest.mark.parametrize("count", [0, 101])
def test_a_batch_holds_1_to_100_runs(api: Api, greeter: dict[str, Any], count: int) -> None:
    reply = batch(api, [GREET] * count)
    assert reply.status == 422 and error_field(reply) == "runs"
    assert ("at most 100" if count else "at least 1") in reply.body["message"]


def test_idempotency_keys_replay_per_item_and_are_shared_with_post_runs(
    api: Api, greeter: dict[str, Any], aws: dict[str, str]
) -> None:
    # Given a batch with two keyed runs and one without a key
    items = [{**GREET, "idempotency_key": "a"}, {**GREET, "config": {"name": "B"}, "idempotency_key": "b"}, GREET]
    first = batch(api, items)
    assert first.status == 201
    ids = [v["id"] for v in first.body["runs"]]
    assert sorted(messages(aws["default"])) == sorted(ids)

    # When only the keyed ones are sent again: the same runs, 200, and no message more
    again = batch(api, items[:2])
    assert again.status == 200 and [v["id"] for v in again.body["runs"]] == ids[:2]

    # And a new item beside a replayed one: 201, the replayed run unchanged
    mixed = batch(api, [items[1], {**GREET, "idempotency_key": "c"}])
    assert mixed.status == 201 and mixed.body["runs"][0]["id"] == ids[1] and mixed.body["runs"][1]["id"] not in ids
    assert messages(aws["default"]) == [mixed.body["runs"][1]["id"]]

    # The key is the same key POST /runs takes as its header (per API key)
    single = api("POST", "/runs", GREET, headers={"Idempotency-Key": "a"})
    assert single.status == 200 and single.body["id"] == ids[0]
    assert batch(api, [{**GREET, "idempotency_key": "a"}], key_id="another-key").status == 201

    # A key used for another body is a conflict, named with its item; nothing of the batch is written
    before = len(run_items())
    conflict = batch(
        api, [{**GREET, "idempotency_key": "fresh"}, {**GREET, "config": {"name": "Z"}, "idempotency_key": "b"}]
    )
    assert conflict.status == 409 and error_field(conflict) == "runs[1].idempotency_key"
    assert len(run_items()) == before

    # One key twice in one batch names both items
    twice = batch(api, [{**GREET, "idempotency_key": "d"}, {**GREET, "idempotency_key": "d"}])
    assert (
        twice.status == 422 and error_field(twice) == "runs[1].idempotency_key" and "runs[0]" in twice.body["message"]
    )


def test_a_keyed_run_whose_batch_died_before_sending_is_dispatched_on_replay(
    api: Api, greeter: dict[str, Any], aws: dict[str, str]
) -> None:
    # Given a batch request that recorded a run and its key, then died before sending (over a minute ago)
    request = EnqueueRunRequest.model_validate(GREET)
    long_ago = utcnow() - timedelta(seconds=runs.DISPATCH_GRACE_SECONDS + 60)
    record = runs.new_run(request, _greeter_record(), request_job(), now=long_ago)
    key = IdempotencyRecord(
        owner="test-key",
        key="orphan",
        fingerprint=runs.request_fingerprint(request),
        run_id=record.run_id,
        created_at=iso(long_ago),
        expires_at=int(time.time()) + 3600,
    )
    table = boto3.resource("dynamodb").Table(NAMES.table)
    put_run(table, record)
    table.put_item(Item=key.to_item())

    # When the client retries the batch
    reply = batch(api, [{**GREET, "idempotency_key": "orphan"}, {**GREET, "idempotency_key": "new"}])

    # Then the orphan is sent (once) beside the new run
    assert reply.status == 201 and reply.body["runs"][0]["id"] == record.run_id
    assert batch(api, [{**GREET, "idempotency_key": "orphan"}]).status == 200
    assert sorted(messages(aws["default"])) == sorted(v["id"] for v in reply.body["runs"])
    assert services().store.get_idempotency("test-key", "orphan").dispatched  # type: ignore[union-attr]


def _greeter_record() -> PackageRecord:
    return resolve_version("greeter", "1.0.0", store=services().store)


def request_job() -> JobSpec:
    return _greeter_record().jobs[0]


def test_runs_whose_message_the_queue_refused_are_taken_back_with_their_keys(
    api: Api, greeter: dict[str, Any], aws: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queue that keeps refusing the second message of a batch
    send = RunQueue.dispatch_many

    def dispatch_many(self: RunQueue, batch_messages: Sequence[RunMessage], delays: Sequence[int] = ()) -> set[int]:
        unsent = send(self, [m for position, m in enumerate(batch_messages) if position != 1])
        assert not unsent
        return {1}

    monkeypatch.setattr(RunQueue, "dispatch_many", dispatch_many)
    items = [{**GREET, "config": {"name": f"n{i}"}, "idempotency_key": f"q{i}"} for i in range(3)]

    reply = batch(api, items)

    # Then the caller is told which item was not enqueued; that run and its key are gone, the others stand
    assert reply.status == 503 and "runs[1]" in reply.body["message"]
    recorded = {item["config_json"] for item in _scan() if item["sk"] == "CONFIG"}
    assert recorded == {'{"name":"n0"}', '{"name":"n2"}'}
    assert len(messages(aws["default"])) == 2
    store = services().store
    assert store.get_idempotency("test-key", "q1") is None
    assert store.get_idempotency("test-key", "q0").dispatched  # type: ignore[union-attr]

    # And retrying the batch with the same keys enqueues only the missing one
    monkeypatch.setattr(RunQueue, "dispatch_many", send)
    retried = batch(api, items)
    assert retried.status == 201 and len(run_items()) == 3
    assert messages(aws["default"]) == [retried.body["runs"][1]["id"]]


def test_a_failed_send_of_a_whole_group_is_retried(
    api: Api, greeter: dict[str, Any], aws: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given SQS that fails the first SendMessageBatch call, and refuses one entry of the second
    calls: list[int] = []
    queue = services().queue
    real = queue._sqs.send_message_batch

    def flaky(**kwargs: Any) -> dict[str, Any]:
        calls.append(len(kwargs["Entries"]))
        if len(calls) == 1:
            raise queue._sqs.exceptions.ClientError({"Error": {"Code": "InternalError", "Message": "x"}}, "Send")
        if len(calls) == 2:
            refused, *rest = kwargs["Entries"]
            answer = real(**{**kwargs, "Entries": rest})
            return {**answer, "Failed": [{"Id": refused["Id"], "SenderFault": False, "Code": "InternalError"}]}
        return dict(real(**kwargs))

    monkeypatch.setattr(queue._sqs, "send_message_batch", flaky)
    monkeypatch.setattr("functions.dal.queue.RETRY_BASE_SECONDS", 0.0)

    reply = batch(api, [GREET] * 3)

    assert reply.status == 201 and calls == [3, 3, 1]
    assert sorted(messages(aws["default"])) == sorted(v["id"] for v in reply.body["runs"])


def test_a_key_bound_to_an_environment_enqueues_there_only(
    api: Api, greeter: dict[str, Any], aws: dict[str, str]
) -> None:
    items = [{**GREET, "environment": "staging"}, GREET]
    assert batch(api, items, scope=Scope.WRITE).status == 201
    assert batch(api, items, scope=Scope.READ).status == 403
    # Every item's environment is checked before anything is written
    refused = batch(api, items, scope=Scope.WRITE, environment="staging")
    assert refused.status == 403 and "staging" in refused.body["message"]
    assert len(run_items()) == 2


def test_the_client_enqueues_many_over_http(api: Api, greeter: dict[str, Any], aws: dict[str, str]) -> None:
    def authorizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"isAuthorized": True, "context": {"key_id": "client-key", "scope": "write", "environment": ""}}

    with Gateway(lambda_handler, authorizer=authorizer) as gateway:
        client = RunlyClient(gateway.url, api_key="rly_client_secret")
        requests = [EnqueueRunRequest.model_validate({**GREET, "config": {"name": n}}) for n in ("x", "y")]
        created = client.enqueue_many(requests, idempotency_keys=["cx", None])
        assert [r.config["name"] for r in created] == ["x", "y"]
        assert client.enqueue_many(requests[:1], idempotency_keys=["cx"])[0].id == created[0].id
        assert sorted(messages(aws["default"])) == sorted(r.id for r in created)

        bad = EnqueueRunRequest.model_validate({**GREET, "config": {"name": 1}})
        with pytest.raises(ApiError) as refused:
            client.enqueue_many([requests[0], bad])
        assert refused.value.status == 422 and refused.value.error.field == "runs[1].config.name"


def test_a_single_enqueue_reads_no_nodes_and_one_version(
    api: Api, greeter: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # POST /runs answers without queued_reason (GET says it), so it reads neither the nodes nor every version
    store = services().store
    monkeypatch.setattr(store, "package_versions", _refused("every version read"))
    monkeypatch.setattr(NodeStore, "list", _refused("nodes read"))
    reply = api("POST", "/runs", GREET)
    assert reply.status == 201 and reply.body["queued_reason"] is None
    assert batch(api, [GREET, {**GREET, "version": "1.0"}]).status == 201


def _refused(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(what)

    return refuse
