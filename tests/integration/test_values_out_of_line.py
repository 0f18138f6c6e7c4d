"""Large values out of the hot run item (issue 14, item 3): the config in its own CONFIG item, written with the run;
an output over 4 KiB in S3 (checksummed, verified on read), served by GET /runs/{id}; the run item a heartbeat
rewrites stays within one write unit (moto server, through the API's handler)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from bench.counting import item_size
from functions.logic.packages import bundle_key
from functions.logic.runs import check_config_size, new_run
from node_agent.aws import AgentAws
from node_agent.settings import AgentSettings
from node_agent.supervisor import RunSupervisor
from runly import limits, sizes
from runly.sizes import stored_json
from runly.wire import Checkpoint, JobSpec, Progress
from runly_core import resources
from runly_core.contracts import MAX_CONFIG_BYTES, EnqueueRunRequest, FailureReason, RunState
from runly_core.records import ObjectRef, PackageRecord, RunRecord, run_objects_prefix, utcnow
from runly_core.run_objects import CHECKPOINT_INLINE_BYTES, OUTPUT_INLINE_BYTES, RunObjectUnreadable, output_object_key
from runly_core.run_store import RunStore, checkpoint_key, config_key, run_key
from runly_core.table import BATCH_WRITE_ATTEMPTS, Unread, batch_get
from tests.support.run_api import GREET, NAMES, Api, api_fixtures, registered_greeter

LEASE = 30
WRITE_UNIT = 1024  # DynamoDB bills a standard write per 1 KB of the item's size (names and values)


@pytest.fixture
def names() -> resources.ResourceNames:
    return NAMES


stack, aws, api = api_fixtures()


@pytest.fixture
def greeter(api: Api, tmp_path: Path) -> dict[str, Any]:
    return registered_greeter(api, tmp_path)


@pytest.fixture
def agent_aws(aws: dict[str, str], names: resources.ResourceNames) -> AgentAws:
    return AgentAws(queue_url=aws["default"], table_name=names.table, bucket=names.feed_bucket)


def now_ms() -> int:
    return int(time.time() * 1000)


def _largest_config_run() -> RunRecord:
    """A run as the API builds it (real id, bundle key, trace context) with the largest config it accepts."""
    config = {"blob": "x" * (MAX_CONFIG_BYTES - 16)}
    check_config_size(config)
    job = JobSpec(name="crunch", entry_point="e2ejobs.jobs:Crunch", config_schema={})
    sha256 = "ab" * 32
    package = PackageRecord(
        name="e2ejobs",
        version="1.0.0",
        sha256=sha256,
        size=1,
        key=bundle_key("e2ejobs", "1.0.0", sha256),
        jobs_json="[]",
        created_at="",
    )
    request = EnqueueRunRequest(package="e2ejobs", job="crunch", config=config)
    return new_run(request, package, job, now=utcnow())


def _stored(names: resources.ResourceNames, key: dict[str, str]) -> dict[str, object]:
    item = boto3.resource("dynamodb").Table(names.table).get_item(Key=key, ConsistentRead=True).get("Item")
    assert item is not None
    return dict(item)


def test_a_run_with_a_64_kb_config_heartbeats_at_one_write_unit(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    # Given a run created by the API's transition with a config at its limit
    record = _largest_config_run()
    RunStore(boto3.resource("dynamodb").Table(names.table)).create(record)
    config = _stored(names, config_key(record.run_id))["config_json"]
    assert isinstance(config, str) and len(config.encode()) > MAX_CONFIG_BYTES - 32

    # When a node claims it and heartbeats (with progress)
    claimed = agent_aws.claim(record.run_id, "node-with-a-long-name-0123456789", LEASE, now_ms())
    assert claimed.config_json == record.config_json  # the job gets its whole config
    agent_aws.extend_lease(
        claimed,
        "node-with-a-long-name-0123456789",
        now_ms() + LEASE * 1000,
        Progress(total=1000, succeeded=500, message="half way"),
    )

    # Then the run item (what every beat rewrites) is at most 1 KB by DynamoDB's size rule (names + values)
    run = _stored(names, run_key(record.run_id))
    assert "config_json" not in run and run["config_bytes"] == len(record.required_config_json.encode())
    print(f"run item after claim and heartbeat: {item_size(run)} bytes")
    assert item_size(run) <= WRITE_UNIT, (item_size(run), sorted(run))


def test_a_run_and_its_config_are_read_together_by_the_api(agent_aws: AgentAws, names: resources.ResourceNames) -> None:
    record = _largest_config_run()
    store = RunStore(boto3.resource("dynamodb").Table(names.table))
    store.create(record)
    read = store.get_with_config(record.run_id)
    assert read is not None and read.view().config == {"blob": "x" * (MAX_CONFIG_BYTES - 16)}
    # The run item alone holds no config, and says so rather than answering an empty one
    alone = store.get(record.run_id)
    assert alone is not None and alone.config_json is None
    with pytest.raises(ValueError, match="config was not read"):
        alone.view()


class _Throttled:
    """A DynamoDB client whose BatchGetItem always leaves every key unprocessed (a throttled table)."""

    def __init__(self) -> None:
        self.calls = 0

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        ((table, request),) = RequestItems.items()
        return {"Responses": {table: []}, "UnprocessedKeys": {table: request}}


def test_keys_a_batch_read_leaves_unprocessed_are_retried_then_said_never_dropped() -> None:
    client = _Throttled()
    with pytest.raises(Unread, match="2 keys left unprocessed"):
        batch_get(client, "t", [{"pk": "a", "sk": "RUN"}, {"pk": "a", "sk": "CONFIG"}], sleep=lambda _: None)
    assert client.calls == BATCH_WRITE_ATTEMPTS


# ---------------------------------------------------------------- outputs
def _finish(api: Api, agent_aws: AgentAws, output: Any) -> str:
    run_id = str(api("POST", "/runs", GREET).body["id"])
    claimed = agent_aws.claim(run_id, "node-a", LEASE, now_ms())
    agent_aws.end_attempt(claimed, "node-a", state=RunState.SUCCEEDED, output=output)
    return run_id


def test_an_output_up_to_4_kib_stays_in_the_run_item(
    api: Api, greeter: dict[str, Any], agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    output = {"text": "o" * (OUTPUT_INLINE_BYTES - 20)}
    assert len(stored_json(output).encode()) <= OUTPUT_INLINE_BYTES
    run_id = _finish(api, agent_aws, output)
    run = _stored(names, run_key(run_id))
    assert run["output_json"] == stored_json(output) and "output_ref" not in run
    assert api("GET", f"/runs/{run_id}").body["output"] == output
    listed = boto3.client("s3").list_objects_v2(Bucket=names.feed_bucket, Prefix=f"{run_objects_prefix(run_id)}output/")
    assert listed.get("KeyCount") == 0


def test_a_1000_kib_output_is_stored_in_s3_checksummed_and_served_by_get_run(
    api: Api, greeter: dict[str, Any], agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    output = {"rows": ["é" * 1024 for _ in range(500)], "n": 500}  # about 1000 KiB of UTF-8
    data = stored_json(output).encode()
    assert 990 * 1024 < len(data) < 1010 * 1024
    sent: list[dict[str, Any]] = []
    agent_aws.run_objects._s3.meta.events.register(
        "provide-client-params.s3.PutObject", lambda params, **_: sent.append(dict(params))
    )
    run_id = _finish(api, agent_aws, output)

    # The run item names it (its sha256 and length) and stays small
    run = _stored(names, run_key(run_id))
    sha256 = hashlib.sha256(data).hexdigest()
    assert "output_json" not in run and run["output_ref"] == {"sha256": sha256, "bytes": len(data)}
    assert item_size(run) <= WRITE_UNIT
    # The object is under the run's prefix, named by its digest, put with its SHA-256 for S3 to check (S3 refuses a
    # body that does not match it, BadDigest; moto neither checks nor keeps it, so the request is what is tested)
    key = f"runs/default/{run_id}/output/{sha256}.json"
    assert [(p["Key"], p["ChecksumSHA256"]) for p in sent] == [
        (key, base64.b64encode(hashlib.sha256(data).digest()).decode())
    ]
    head = boto3.client("s3").head_object(Bucket=names.feed_bucket, Key=key)
    assert head["ContentLength"] == len(data)

    # GET /runs/{id} serves it whole
    answer = api("GET", f"/runs/{run_id}")
    assert answer.status == 200 and answer.body["output"] == output


def test_an_output_whose_object_was_changed_is_refused_not_served(
    api: Api, greeter: dict[str, Any], agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    output = {"blob": "b" * (64 * 1024)}
    run_id = _finish(api, agent_aws, output)
    ref = ObjectRef.model_validate(_stored(names, run_key(run_id))["output_ref"])
    key = output_object_key(run_id, ref.sha256)
    # Same length, one byte changed: only the digest tells
    tampered = stored_json({"blob": "c" + "b" * (64 * 1024 - 1)}).encode()
    assert len(tampered) == ref.bytes
    boto3.client("s3").put_object(Bucket=names.feed_bucket, Key=key, Body=tampered)
    answer = api("GET", f"/runs/{run_id}")
    assert answer.status == 503 and "output cannot be read" in answer.body["message"]
    assert "sha256" in answer.body["message"]

    # Cut short: the length tells
    boto3.client("s3").put_object(Bucket=names.feed_bucket, Key=key, Body=tampered[:100])
    with pytest.raises(RunObjectUnreadable, match="100 bytes where"):
        agent_aws.run_objects.get(key, ref)
    # Gone: said so
    boto3.client("s3").delete_object(Bucket=names.feed_bucket, Key=key)
    with pytest.raises(RunObjectUnreadable, match="no such object"):
        agent_aws.run_objects.get(key, ref)


def test_an_output_over_2_mib_is_refused_naming_its_limit_before_anything_is_written(
    api: Api, greeter: dict[str, Any], agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    run_id = str(api("POST", "/runs", GREET).body["id"])
    claimed = agent_aws.claim(run_id, "node-a", LEASE, now_ms())
    with pytest.raises(sizes.OutputTooLarge, match=str(limits.MAX_OUTPUT_BYTES)):
        agent_aws.end_attempt(claimed, "node-a", state=RunState.SUCCEEDED, output="x" * limits.MAX_OUTPUT_BYTES)
    assert boto3.client("s3").list_objects_v2(Bucket=names.feed_bucket, Prefix="runs/").get("KeyCount") == 0
    assert _stored(names, run_key(run_id))["state"] == "Running"


def _checkpointing(api: Api, agent_aws: AgentAws) -> RunRecord:
    run_id = str(api("POST", "/runs", GREET).body["id"])
    return agent_aws.claim(run_id, "node-a", LEASE, now_ms())


def _state_ref(names: resources.ResourceNames, run_id: str) -> dict[str, Any] | None:
    stored = json.loads(str(_stored(names, checkpoint_key(run_id))["checkpoint_json"]))
    return stored.get("state_ref")


def test_a_checkpoint_up_to_8_kib_stays_inline_in_its_item(
    api: Api, greeter: dict[str, Any], agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    claimed = _checkpointing(api, agent_aws)
    checkpoint = Checkpoint(
        watermark=3, state={"s": "x" * (CHECKPOINT_INLINE_BYTES - 200)}, attempt=1, written_at=utcnow()
    )
    assert len(sizes.checkpoint_json(checkpoint).encode()) <= CHECKPOINT_INLINE_BYTES
    agent_aws.write_checkpoint(claimed, "node-a", checkpoint)
    assert _state_ref(names, claimed.run_id) is None
    assert agent_aws.get_checkpoint(claimed.run_id) == checkpoint
    assert api("GET", f"/runs/{claimed.run_id}").body["checkpoint"]["state"] == checkpoint.state
    prefix = f"{run_objects_prefix(claimed.run_id)}checkpoints/"
    assert boto3.client("s3").list_objects_v2(Bucket=names.feed_bucket, Prefix=prefix).get("KeyCount") == 0


def test_a_350_kib_checkpoint_state_goes_to_s3_alternating_two_slots(
    api: Api, greeter: dict[str, Any], agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    claimed = _checkpointing(api, agent_aws)
    run_id = claimed.run_id
    s3 = boto3.client("s3")
    states = [{"n": n, "blob": "é" * (175 * 1024)} for n in range(3)]  # 350 KiB of UTF-8 each
    keys = []
    for sequence, state in enumerate(states):
        checkpoint = Checkpoint(watermark=sequence, state=state, attempt=1, written_at=utcnow())
        agent_aws.write_checkpoint(claimed, "node-a", checkpoint, sequence)
        ref = _state_ref(names, run_id)
        assert ref is not None
        data = stored_json(state).encode()
        assert ref == {"key": ref["key"], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        keys.append(ref["key"])
        # The item keeps the envelope and the reference only
        assert item_size(_stored(names, checkpoint_key(run_id))) <= WRITE_UNIT
        assert agent_aws.get_checkpoint(run_id) == checkpoint
    assert keys == [f"runs/default/{run_id}/checkpoints/0001-{slot}.json" for slot in (0, 1, 0)]
    # The earlier slot's object stayed while the next was written; the third overwrote the first
    assert s3.get_object(Bucket=names.feed_bucket, Key=keys[1])["Body"].read() == stored_json(states[1]).encode()
    assert s3.get_object(Bucket=names.feed_bucket, Key=keys[0])["Body"].read() == stored_json(states[2]).encode()
    answer = api("GET", f"/runs/{run_id}")
    assert answer.status == 200 and answer.body["checkpoint"]["state"] == states[2]


def test_a_checkpoint_state_changed_or_gone_is_refused_on_resume_and_by_get_run(
    api: Api, greeter: dict[str, Any], agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    claimed = _checkpointing(api, agent_aws)
    run_id = claimed.run_id
    state = {"blob": "b" * (64 * 1024)}
    agent_aws.write_checkpoint(claimed, "node-a", Checkpoint(watermark=1, state=state, attempt=1, written_at=utcnow()))
    ref = _state_ref(names, run_id)
    assert ref is not None
    # Same length, one byte changed: only the digest tells
    tampered = stored_json({"blob": "c" + "b" * (64 * 1024 - 1)}).encode()
    assert len(tampered) == ref["bytes"]
    boto3.client("s3").put_object(Bucket=names.feed_bucket, Key=ref["key"], Body=tampered)
    with pytest.raises(RunObjectUnreadable, match="sha256"):
        agent_aws.get_checkpoint(run_id)  # the agent fails the attempt checkpoint_unreadable for it
    answer = api("GET", f"/runs/{run_id}")
    assert answer.status == 503 and "checkpoint cannot be read" in answer.body["message"]
    # Gone: said so
    boto3.client("s3").delete_object(Bucket=names.feed_bucket, Key=ref["key"])
    with pytest.raises(RunObjectUnreadable, match="no such object"):
        agent_aws.get_checkpoint(run_id)
    assert api("GET", f"/runs/{run_id}").status == 503


def test_a_resumed_attempt_whose_checkpoint_state_is_gone_fails_checkpoint_unreadable_not_retried(
    api: Api, greeter: dict[str, Any], agent_aws: AgentAws, names: resources.ResourceNames, tmp_path: Path
) -> None:
    # Given a run that checkpointed a 64 KiB state (in S3), then lost its node, and that state's object gone
    run_id = str(api("POST", "/runs", GREET).body["id"])
    first = agent_aws.claim(run_id, "node-a", LEASE, now_ms())
    state = {"blob": "b" * (64 * 1024)}
    agent_aws.write_checkpoint(first, "node-a", Checkpoint(watermark=1, state=state, attempt=1, written_at=utcnow()))
    ref = _state_ref(names, run_id)
    assert ref is not None
    boto3.client("s3").delete_object(Bucket=names.feed_bucket, Key=ref["key"])
    # When the next attempt is claimed on another node (the first's lease long past) and its agent reads the state
    (delivery,) = agent_aws.receive(1, 0, 30)
    second = agent_aws.claim(run_id, "node-b", LEASE, now_ms() + (LEASE + 60) * 1000)
    with pytest.raises(RunObjectUnreadable) as unreadable:
        agent_aws.checkpoint_for(second)
    settings = AgentSettings(
        queue_url=agent_aws.queue_url, table_name=names.table, feed_bucket=names.feed_bucket, node_id="node-b",
        work_dir=tmp_path,
    )  # fmt: skip
    supervisor = RunSupervisor(
        settings=settings, aws=agent_aws, cache=None,  # type: ignore[arg-type]
        record=second, delivery=delivery, checkpoint=None, cold=threading.Event(),
        checkpoint_error=str(unreadable.value),
    )  # fmt: skip
    supervisor._run(tmp_path)
    # Then the run failed for it, at once, with no retry queued
    run = _stored(names, run_key(run_id))
    assert run["state"] == RunState.FAILED.value
    error = json.loads(str(run["error_json"]))
    assert error["reason"] == FailureReason.CHECKPOINT_UNREADABLE.value and "no such object" in error["message"]
    assert "retry_at" not in run
