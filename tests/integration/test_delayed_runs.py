"""Delayed runs over the real API handler and the real fire handler, on in-process moto: validation of
``not_before`` / ``delay_seconds``, the SQS path (a delayed message, no timer), the timer path (a one-time schedule,
fired into the fire function, which sends the message with the delay that remains), cancel deleting the timer, and
the agent's claim refusing a message received early without losing it (functions.logic.delays)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from functions.schedules import fire as fire_function
from node_agent.aws import AgentAws, ClaimRefused
from runly_cli.embedded.scheduler import Definition, render_event
from runly_core import resources
from runly_core.contracts import RunMessage, RunState, Scope
from runly_core.records import iso
from tests.support.api import FakeContext
from tests.support.run_api import GREET, NAMES, Api, api_fixtures, error_field, registered_greeter

GROUP = NAMES.scheduler_group
LEASE = 30


def _delete_timers() -> None:
    scheduler = boto3.client("scheduler")
    for schedule in scheduler.list_schedules(GroupName=GROUP)["Schedules"]:
        scheduler.delete_schedule(GroupName=GROUP, Name=schedule["Name"])


stack, aws, api = api_fixtures(cleanup=_delete_timers)


@pytest.fixture
def greeter(api: Api, tmp_path: Path) -> dict[str, Any]:
    return registered_greeter(api, tmp_path)


@pytest.fixture
def agent(aws: dict[str, str]) -> AgentAws:
    return AgentAws(queue_url=aws["default"], table_name=NAMES.table, bucket=NAMES.feed_bucket)


def timer_names() -> list[str]:
    return [s["Name"] for s in boto3.client("scheduler").list_schedules(GroupName=GROUP)["Schedules"]]


def timer(run_id: str) -> dict[str, Any]:
    return dict(boto3.client("scheduler").get_schedule(GroupName=GROUP, Name=run_id))


def fire_timer(run_id: str, at: datetime) -> dict[str, Any]:
    """Invoke the fire function as EventBridge Scheduler would when the run's timer fires."""
    event = render_event(Definition.from_schedule(timer(run_id)), at)
    return dict(fire_function.lambda_handler(event, FakeContext()))  # type: ignore[arg-type]


def received(queue_url: str) -> list[str]:
    sqs = boto3.client("sqs")
    batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
    return [RunMessage.model_validate_json(m["Body"]).run_id for m in batch]


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"delay_seconds": 60, "not_before": "2030-01-01T00:00:00Z"}, "delay_seconds"),
        ({"not_before": "2030-01-01T00:00:00"}, "not_before"),  # no time zone
        ({"not_before": "next tuesday"}, "not_before"),
        ({"delay_seconds": 366 * 86400 + 1}, "delay_seconds"),
        ({"delay_seconds": -1}, "delay_seconds"),
    ],
)
def test_a_bad_delay_is_a_422_naming_the_field(
    api: Api, greeter: dict[str, Any], aws: dict[str, str], fields: dict[str, Any], field: str
) -> None:
    reply = api("POST", "/runs", {**GREET, **fields})
    assert reply.status == 422, reply.body
    assert error_field(reply) == field
    assert received(aws["default"]) == [] and timer_names() == []


def test_a_not_before_more_than_a_year_ahead_is_a_422(api: Api, greeter: dict[str, Any], aws: dict[str, str]) -> None:
    too_far = (datetime.now(UTC) + timedelta(days=367)).isoformat()
    reply = api("POST", "/runs", {**GREET, "not_before": too_far})
    assert reply.status == 422 and error_field(reply) == "not_before", reply.body
    assert received(aws["default"]) == [] and timer_names() == []


def test_a_not_before_already_past_starts_the_run_at_once(
    api: Api, greeter: dict[str, Any], aws: dict[str, str], agent: AgentAws
) -> None:
    # Given a run asked not before a time already past
    past = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    run = api("POST", "/runs", {**GREET, "not_before": past.isoformat()}).body

    # Then it is not delayed: its message is there now, and a node claims it
    assert datetime.fromisoformat(run["not_before"]) == past
    assert run["queued_reason"] is None
    assert received(aws["default"]) == [run["id"]]
    assert agent.claim(run["id"], "node-a", LEASE, now_ms()).state is RunState.RUNNING


# ---------------------------------------------------------------- the SQS path


def test_a_short_delay_is_an_sqs_delay_and_the_claim_refuses_it_early(
    api: Api, greeter: dict[str, Any], aws: dict[str, str], agent: AgentAws
) -> None:
    # When a run is enqueued with a delay SQS can hold
    before = datetime.now(UTC)
    reply = api("POST", "/runs", {**GREET, "delay_seconds": 60})

    # Then it is Queued, delayed until a minute from now, and says so
    assert reply.status == 201, reply.body
    run = reply.body
    not_before = datetime.fromisoformat(run["not_before"])
    assert before + timedelta(seconds=60) <= not_before <= datetime.now(UTC) + timedelta(seconds=60)
    assert run["queued_reason"] == f"delayed until {iso(not_before)}"
    assert api("GET", f"/runs/{run['id']}").body["queued_reason"].startswith("delayed until ")
    # And its message is delayed in SQS (not receivable yet), with no timer
    assert received(aws["default"]) == [] and timer_names() == []
    # And a node that gets its message early (a clock ahead) is refused, told to hide it until not_before
    with pytest.raises(ClaimRefused) as refused:
        agent.claim(run["id"], "node-a", LEASE, now_ms())
    assert not refused.value.terminal and 59 <= refused.value.retry_in <= 61
    # And at not_before, it is claimed
    at = int(not_before.timestamp() * 1000)
    assert agent.claim(run["id"], "node-a", LEASE, at).state is RunState.RUNNING


def test_a_claim_a_fraction_of_a_second_early_waits_the_rest(
    api: Api, greeter: dict[str, Any], agent: AgentAws
) -> None:
    # Given a run whose not_before is 0.4 s away (its message came early by the SQS delay's rounding down)
    run = api("POST", "/runs", {**GREET, "not_before": (datetime.now(UTC) + timedelta(seconds=0.4)).isoformat()}).body
    not_before = datetime.fromisoformat(run["not_before"])

    # When a node claims it now
    claimed = agent.claim(run["id"], "node-a", LEASE, now_ms())

    # Then the claim waited until not_before, and took the run
    assert claimed.state is RunState.RUNNING
    assert datetime.now(UTC) >= not_before
    assert claimed.started_at is not None and datetime.fromisoformat(claimed.started_at) >= not_before


# ---------------------------------------------------------------- the timer path


def test_a_long_delay_waits_on_a_timer_that_sends_the_message(
    api: Api, greeter: dict[str, Any], aws: dict[str, str]
) -> None:
    # When a run is enqueued to start in two days
    not_before = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    reply = api("POST", "/runs", {**GREET, "not_before": not_before.isoformat()})

    # Then no message is sent: a one-time schedule fires 15 minutes before not_before, then deletes itself
    assert reply.status == 201, reply.body
    run = reply.body
    assert received(aws["default"]) == []
    twin = timer(run["id"])
    fires_at = not_before - timedelta(seconds=resources.SQS_MAX_DELAY_SECONDS)
    assert twin["ScheduleExpression"] == f"at({fires_at.strftime('%Y-%m-%dT%H:%M:%S')})"
    assert twin["ScheduleExpressionTimezone"] == "UTC"
    assert twin["ActionAfterCompletion"] == "DELETE"
    assert json.loads(twin["Target"]["Input"])["run_id"] == run["id"]
    assert api("GET", f"/runs/{run['id']}").body["queued_reason"] == (
        f"delayed until {not_before.strftime('%Y-%m-%dT%H:%M:%S.000Z')}"
    )

    # When the timer fires on time
    outcome = fire_timer(run["id"], fires_at)

    # Then the message is sent with the delay that remains (at most SQS's 15 minutes)
    assert outcome["status"] == "dispatched" and outcome["run_id"] == run["id"]
    assert 0 < outcome["delay_seconds"] <= resources.SQS_MAX_DELAY_SECONDS


def test_cancelling_a_delayed_run_deletes_its_timer_and_a_late_fire_sends_nothing(
    api: Api, greeter: dict[str, Any], aws: dict[str, str]
) -> None:
    # Given a run delayed by a day, waiting on its timer
    run = api("POST", "/runs", {**GREET, "delay_seconds": 86400}).body
    definition = Definition.from_schedule(timer(run["id"]))

    # When it is cancelled
    cancelled = api("POST", f"/runs/{run['id']}/cancel", scope=Scope.WRITE)

    # Then it is Cancelled and its timer is gone
    assert cancelled.status == 200 and cancelled.body["state"] == "Cancelled"
    assert cancelled.body["queued_reason"] is None
    assert timer_names() == []
    # And a fire that was already on its way (EventBridge read the timer before the delete) sends nothing
    event = render_event(definition, datetime.now(UTC))
    outcome = fire_function.lambda_handler(event, FakeContext())  # type: ignore[arg-type]
    assert outcome["status"] == "skipped"
    assert received(aws["default"]) == []


def test_a_batch_takes_sqs_delays_but_not_timers(api: Api, greeter: dict[str, Any], aws: dict[str, str]) -> None:
    reply = api("POST", "/runs/batch", {"runs": [{**GREET, "delay_seconds": 30}, {**GREET, "delay_seconds": 3600}]})
    assert reply.status == 422 and error_field(reply) == "runs[1].delay_seconds", reply.body
    assert received(aws["default"]) == [] and timer_names() == []

    reply = api("POST", "/runs/batch", {"runs": [{**GREET, "delay_seconds": 30}, GREET]})
    assert reply.status == 201, reply.body
    delayed, plain = reply.body["runs"]
    assert delayed["not_before"] and plain["not_before"] is None
    assert received(aws["default"]) == [plain["id"]]  # the delayed one is not receivable yet
