"""Large values out of the hot run item (issue 14, item 3): the config in its own CONFIG item, written with the run;
the run item a heartbeat rewrites stays within one write unit (in-process moto)."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest

from bench.counting import item_size
from functions.logic.packages import bundle_key
from functions.logic.runs import check_config_size, new_run
from node_agent.aws import AgentAws
from runly.wire import JobSpec, Progress
from runly_core import resources
from runly_core.contracts import MAX_CONFIG_BYTES, EnqueueRunRequest
from runly_core.records import PackageRecord, RunRecord, utcnow
from runly_core.run_store import RunStore, config_key, run_key
from runly_core.table import BATCH_WRITE_ATTEMPTS, Unread, batch_get

LEASE = 30
WRITE_UNIT = 1024  # DynamoDB bills a standard write per 1 KB of the item's size (names and values)


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
