"""The agent's writes never fail on size (in-process moto, which refuses an item over about 400 KB as DynamoDB
does), and a node taking over an expired lease counts attempts against max_attempts, as the reaper does."""

from __future__ import annotations

import json
import time

import boto3
import pytest

from functions.dal.maintenance import MaintenanceStore
from functions.logic.maintenance import reap
from node_agent.aws import AgentAws, ClaimRefused
from runly import limits, sizes
from runly.wire import Checkpoint, Progress
from runly_core import resources
from runly_core.contracts import FailureReason, RunState
from runly_core.records import RunRecord, utcnow
from runly_core.run_store import checkpoint_key, run_key
from tests.support.runs import put_run, queued_run

LEASE = 30
MB = 1024 * 1024


@pytest.fixture
def agent_aws(aws: dict[str, str], names: resources.ResourceNames) -> AgentAws:
    return AgentAws(queue_url=aws["default"], table_name=names.table, bucket=names.feed_bucket)


def now_ms() -> int:
    return int(time.time() * 1000)


def _item_bytes(names: resources.ResourceNames, key: dict[str, str]) -> int:
    item = boto3.resource("dynamodb").Table(names.table).get_item(Key=key)["Item"]
    return sum(len(k.encode()) + len(str(v).encode()) for k, v in item.items())


def _stored(agent_aws: AgentAws, run_id: str = "run_default_1") -> RunRecord:
    record = agent_aws.runs.get_with_config(run_id)  # as the API reads it: with its config
    assert record is not None
    return record


def test_an_output_over_its_limit_is_refused_before_any_write_and_the_run_can_still_fail_for_it(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    queued_run(names)
    claimed = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())

    # When the node records an output over its limit (2 MiB)
    with pytest.raises(sizes.OutputTooLarge):
        agent_aws.end_attempt(claimed, "node-a", state=RunState.SUCCEEDED, output={"blob": "x" * (2 * MB)})

    # Then nothing was written (the lease is still this attempt's) and the run fails with the reason instead
    assert _stored(agent_aws).state is RunState.RUNNING
    agent_aws.end_attempt(
        claimed, "node-a", state=RunState.FAILED, reason=FailureReason.OUTPUT_TOO_LARGE,
        error={"reason": "output_too_large", "message": "the job's output is 2097166 bytes as JSON"},
    )  # fmt: skip
    run = _stored(agent_aws).view()
    assert run.state is RunState.FAILED and run.error is not None
    assert (
        run.error.reason is FailureReason.OUTPUT_TOO_LARGE and run.attempts[0].reason is FailureReason.OUTPUT_TOO_LARGE
    )


def test_nan_in_an_output_is_refused_not_stored_as_null(agent_aws: AgentAws, names: resources.ResourceNames) -> None:
    queued_run(names)
    claimed = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    with pytest.raises(sizes.NotJson, match="NaN"):
        agent_aws.end_attempt(claimed, "node-a", state=RunState.SUCCEEDED, output={"mean": float("nan")})
    assert _stored(agent_aws).state is RunState.RUNNING


def test_a_1_mb_error_is_stored_cut_to_its_limits_and_the_run_still_reads(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    queued_run(names)
    claimed = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())

    # When a job's failure carries a 1 MB message and traceback (with a lone surrogate, which is not UTF-8)
    error = {"reason": "user_error", "message": "\ud800" + "m" * MB, "type": "E" * MB, "traceback": "t" * MB}
    agent_aws.end_attempt(claimed, "node-a", state=RunState.FAILED, reason=FailureReason.USER_ERROR, error=error)

    # Then the run is Failed, its error cut to the limits, and it renders as GET /runs renders it
    record = _stored(agent_aws)
    assert len((record.error_json or "").encode()) <= limits.MAX_ERROR_BYTES
    view = record.view()
    assert view.state is RunState.FAILED and view.error is not None
    assert view.error.message.startswith("?mmm") and view.error.message.endswith("[truncated]")
    assert len((view.attempts[0].error or "").encode()) <= limits.MAX_ATTEMPT_ERROR_BYTES
    json.loads(view.model_dump_json())
    assert _item_bytes(names, run_key("run_default_1")) < 0.2 * limits.DYNAMODB_MAX_ITEM_BYTES


def test_a_500_kb_progress_does_not_fail_the_heartbeat(agent_aws: AgentAws, names: resources.ResourceNames) -> None:
    queued_run(names)
    claimed = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    agent_aws.extend_lease(claimed, "node-a", now_ms() + LEASE * 1000, Progress(succeeded=1, message="fits"))

    # When a heartbeat carries a progress over its limit
    until = now_ms() + 2 * LEASE * 1000
    state = agent_aws.extend_lease(claimed, "node-a", until, Progress(succeeded=2, message="m" * 500 * 1024))

    # Then the lease is still extended (the progress is left out; the channel fails such a job)
    record = _stored(agent_aws)
    assert state is RunState.RUNNING and record.lease_until_ms == until
    assert record.view().progress == Progress(succeeded=1, message="fits")
    # And so is the attempt's end
    agent_aws.end_attempt(
        claimed, "node-a", state=RunState.SUCCEEDED, output=1, progress=Progress(message="m" * 500 * 1024)
    )
    assert _stored(agent_aws).state is RunState.SUCCEEDED


def test_a_checkpoint_over_its_limit_in_bytes_is_refused_before_the_write(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    queued_run(names)
    claimed = agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    # 550,000 characters, 1,100,000 bytes: within the 1 MiB limit in characters, over it in bytes
    big = Checkpoint(watermark=1, state="é" * 550_000, attempt=1, written_at=utcnow())
    with pytest.raises(sizes.CheckpointTooLarge, match="the limit is 1048576"):
        agent_aws.write_checkpoint(claimed, "node-a", big)
    assert agent_aws.get_checkpoint("run_default_1") is None
    # While one at the limit is written
    fits = Checkpoint(watermark=2, state="é" * 524_000, attempt=1, written_at=utcnow())
    agent_aws.write_checkpoint(claimed, "node-a", fits)
    assert agent_aws.get_checkpoint("run_default_1") == fits
    # Its state in S3 (runly_core.run_objects): the item keeps the envelope and the reference only
    assert _item_bytes(names, checkpoint_key("run_default_1")) <= 1024


def _run_allowing(names: resources.ResourceNames, max_attempts: int) -> None:
    record = queued_run(names).model_copy(update={"max_attempts": max_attempts})
    put_run(boto3.resource("dynamodb").Table(names.table), record)


def test_an_expired_lease_of_a_run_on_its_last_attempt_is_not_taken_over(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    # Given a run allowed one attempt, claimed by node A, which then went silent past its lease
    _run_allowing(names, max_attempts=1)
    agent_aws.claim("run_default_1", "node-a", LEASE, now_ms())
    later = now_ms() + (LEASE + 1) * 1000

    # When node B receives its message again
    with pytest.raises(ClaimRefused) as refused:
        agent_aws.claim("run_default_1", "node-b", LEASE, later)

    # Then B does not run attempt 2: the run ends Failed, node_lost, with its one attempt
    assert refused.value.terminal
    run = _stored(agent_aws).view()
    assert run.state is RunState.FAILED and run.error is not None and run.error.reason is FailureReason.NODE_LOST
    assert [(a.number, a.reason) for a in run.attempts] == [(1, FailureReason.NODE_LOST)]


@pytest.mark.parametrize("max_attempts", [1, 2])
def test_a_takeover_and_the_reaper_decide_an_abandoned_run_alike(
    aws: dict[str, str], agent_aws: AgentAws, names: resources.ResourceNames, max_attempts: int
) -> None:
    outcomes = []
    for decide in ("takeover", "reaper"):
        _run_allowing(names, max_attempts)
        agent_aws.claim("run_default_1", "node-a", LEASE, now_ms() - 3_600_000)
        if decide == "takeover":
            try:
                agent_aws.claim("run_default_1", "node-b", LEASE, now_ms())
            except ClaimRefused:
                pass
        else:
            reap(MaintenanceStore(names.table, aws), now_ms=now_ms(), grace_seconds=0)
        run = _stored(agent_aws)
        outcomes.append((run.state if run.state.terminal else "another attempt", run.attempts[0].reason))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == (RunState.FAILED if max_attempts == 1 else "another attempt")


def test_a_run_requeued_by_shutdowns_past_the_attempts_a_run_item_holds_fails(
    agent_aws: AgentAws, names: resources.ResourceNames
) -> None:
    # Given a run re-queued by node shutdowns (which do not count against max_attempts) MAX_RECORDED_ATTEMPTS times
    record = queued_run(names)
    for number in range(1, limits.MAX_RECORDED_ATTEMPTS + 1):
        claimed = agent_aws.claim("run_default_1", f"node-{number}", LEASE, now_ms())
        assert claimed.attempt == number
        agent_aws.end_attempt(
            claimed, f"node-{number}", state=RunState.QUEUED, reason=FailureReason.NODE_LOST,
            error={"message": "node shut down " + "x" * 5000}, retry_at=utcnow(),
        )  # fmt: skip
    # When it is received once more, it is not run again: it fails, and its item stays well under the limit
    with pytest.raises(ClaimRefused) as refused:
        agent_aws.claim("run_default_1", "node-last", LEASE, now_ms())
    assert refused.value.terminal
    run = _stored(agent_aws, record.run_id).view()
    assert run.state is RunState.FAILED and run.error is not None and run.error.reason is FailureReason.DEAD_LETTER
    assert len(run.attempts) == limits.MAX_RECORDED_ATTEMPTS
    assert _item_bytes(names, run_key("run_default_1")) < 0.25 * limits.DYNAMODB_MAX_ITEM_BYTES
