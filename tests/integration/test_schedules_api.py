"""Schedules over the real API handler and the real fire handler, on in-process moto (DynamoDB, SQS and EventBridge
Scheduler): create, list, get, change, delete; validation before anything is saved; firing once per scheduled time,
a disabled schedule, a template that no longer resolves. The fire events are built from the schedule moto's
scheduler holds, as EventBridge Scheduler builds them (runly_cli.embedded.scheduler.render_event)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import pytest

from functions.schedules import fire as fire_function
from runly_cli.embedded.aws import schedule_settings
from runly_cli.embedded.scheduler import Definition, render_event
from runly_core.contracts import RunMessage, Scope
from tests.support.api import FakeContext
from tests.support.run_api import NAMES, Api, api_fixtures, error_field, registered_greeter

NIGHTLY = {
    "name": "nightly greeting",
    "package": "greeter",
    "job": "greet",
    "config": {"name": "Ada"},
    "expression": "cron(0 3 * * ? *)",
    "timezone": "Europe/Paris",
}
GROUP = NAMES.scheduler_group
PARIS = ZoneInfo("Europe/Paris")


def _delete_schedules() -> None:
    scheduler = boto3.client("scheduler")
    for schedule in scheduler.list_schedules(GroupName=GROUP)["Schedules"]:
        scheduler.delete_schedule(GroupName=GROUP, Name=schedule["Name"])


stack, aws, api = api_fixtures(cleanup=_delete_schedules)


@pytest.fixture
def greeter(api: Api, tmp_path: Path) -> dict[str, Any]:
    return registered_greeter(api, tmp_path)


def eventbridge(schedule_id: str) -> dict[str, Any]:
    return dict(boto3.client("scheduler").get_schedule(GroupName=GROUP, Name=schedule_id))


def fire(schedule_id: str, scheduled_time: str) -> dict[str, Any]:
    """Invoke the fire function as EventBridge Scheduler would for one scheduled time."""
    event = render_event(Definition.from_schedule(eventbridge(schedule_id)), datetime.fromisoformat(scheduled_time))
    return dict(fire_function.lambda_handler(event, FakeContext()))  # type: ignore[arg-type]


def queued_run_ids(queue_url: str) -> list[str]:
    sqs = boto3.client("sqs")
    found: list[str] = []
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
        "Messages", []
    ):
        found += [RunMessage.model_validate_json(message["Body"]).run_id for message in batch]
    return found


# ---------------------------------------------------------------- create, read, change, delete


def test_a_created_schedule_is_saved_with_its_next_fire_times_and_given_to_eventbridge(
    api: Api, greeter: dict[str, Any]
) -> None:
    # When a schedule is created
    created = api("POST", "/schedules", NIGHTLY, scope=Scope.WRITE, key_id="writer")

    # Then it is answered with its template, its expression and its next fire times (03:00 in Paris)
    assert created.status == 201, created.body
    schedule = created.body
    assert {k: schedule[k] for k in ("name", "package", "job", "config", "environment", "version")} == {
        "name": "nightly greeting",
        "package": "greeter",
        "job": "greet",
        "config": {"name": "Ada"},
        "environment": "default",
        "version": None,
    }
    assert schedule["enabled"] is True and schedule["created_by"] == "writer"
    times = [datetime.fromisoformat(t) for t in schedule["next_fire_times"]]
    assert len(times) == 5 and times == sorted(times) and times[0] > datetime.now(UTC)
    local = [t.astimezone(PARIS) for t in times]
    assert all((t.hour, t.minute) == (3, 0) for t in local)
    assert all((later.date() - earlier.date()).days == 1 for earlier, later in pairwise(local))

    # And EventBridge Scheduler has it: the expression in its time zone, invoking the fire function with its id
    twin = eventbridge(schedule["id"])
    settings = schedule_settings(NAMES)
    assert twin["ScheduleExpression"] == "cron(0 3 * * ? *)"
    assert twin["ScheduleExpressionTimezone"] == "Europe/Paris"
    assert twin["State"] == "ENABLED"
    assert twin["Target"]["Arn"] == settings["RUNLY_SCHEDULE_FIRE_FUNCTION_ARN"]
    assert twin["Target"]["RoleArn"] == settings["RUNLY_SCHEDULER_ROLE_ARN"]
    assert json.loads(twin["Target"]["Input"]) == {
        "schedule_id": schedule["id"],
        "scheduled_time": "<aws.scheduler.scheduled-time>",
        "execution_id": "<aws.scheduler.execution-id>",
        "attempt": "<aws.scheduler.attempt-number>",
    }

    # And it reads back the same, alone and in the list
    assert api("GET", f"/schedules/{schedule['id']}", scope=Scope.READ).body == schedule
    assert [s["id"] for s in api("GET", "/schedules", scope=Scope.READ).body["items"]] == [schedule["id"]]


def test_a_rate_schedule_first_fires_one_interval_after_it_is_created(api: Api, greeter: dict[str, Any]) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    created = api("POST", "/schedules", {**NIGHTLY, "expression": "rate(2 hours)", "timezone": "UTC"})
    after = datetime.now(UTC)
    assert created.status == 201, created.body
    times = [datetime.fromisoformat(t) for t in created.body["next_fire_times"]]
    # two hours after the request was handled (a whole second: EventBridge's StartDate has no fraction)
    assert before + timedelta(hours=2) <= times[0] <= after + timedelta(hours=2, seconds=1)
    assert times[1] - times[0] == timedelta(hours=2)
    # EventBridge gets that first occurrence as the StartDate, so it fires when the preview says
    assert eventbridge(created.body["id"])["StartDate"] == times[0]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"expression": "cron(0 3 * * MON *)"}, "expression"),  # day-of-month and day-of-week both set
        ({"expression": "cron(0 3 15W * ? *)"}, "expression"),  # W: not supported
        ({"expression": "cron(0 3 * *)"}, "expression"),
        ({"expression": "at(2030-01-01T00:00:00)"}, "expression"),
        ({"expression": "rate(0 minutes)"}, "expression"),
        ({"expression": "cron(0 0 1 1 ? 2001)"}, "expression"),  # never fires again
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"package": "nothere"}, "package"),
        ({"job": "nothere"}, "job"),
        ({"version": "9.9.9"}, "version"),
        ({"environment": "nowhere"}, "environment"),
        ({"config": {"name": 42}}, "config.name"),
        ({"config": {}}, "config"),
        ({"name": ""}, "name"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_an_invalid_schedule_is_refused_naming_the_field_and_nothing_is_saved(
    api: Api, greeter: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    refused = api("POST", "/schedules", {**NIGHTLY, **change})
    assert 400 <= refused.status < 500 and error_field(refused) == field, refused.body
    assert api("GET", "/schedules").body["items"] == []
    assert boto3.client("scheduler").list_schedules(GroupName=GROUP)["Schedules"] == []


def test_node_keys_see_the_schedules_of_their_environment_only(api: Api, greeter: dict[str, Any]) -> None:
    default = api("POST", "/schedules", NIGHTLY).body
    staging = api("POST", "/schedules", {**NIGHTLY, "environment": "staging"}).body

    assert [s["id"] for s in api("GET", "/schedules").body["items"]] == [default["id"], staging["id"]]
    assert [s["id"] for s in api("GET", "/schedules", query={"environment": "staging"}).body["items"]] == [
        staging["id"]
    ]
    as_node = {"scope": Scope.NODE, "environment": "staging"}
    assert [s["id"] for s in api("GET", "/schedules", **as_node).body["items"]] == [staging["id"]]  # type: ignore[arg-type]
    assert api("GET", f"/schedules/{default['id']}", **as_node).status == 403  # type: ignore[arg-type]
    assert api("GET", "/schedules", query={"environment": "default"}, **as_node).status == 403  # type: ignore[arg-type]
    # Reading is all a node key may do; writing needs the write scope
    assert api("POST", "/schedules", {**NIGHTLY, "environment": "staging"}, **as_node).status == 403  # type: ignore[arg-type]
    assert api("POST", "/schedules", NIGHTLY, scope=Scope.READ).status == 403


def test_patch_disables_changes_the_expression_and_checks_a_new_config(api: Api, greeter: dict[str, Any]) -> None:
    schedule = api("POST", "/schedules", NIGHTLY).body
    path = f"/schedules/{schedule['id']}"

    # Disabled: no next fire, and EventBridge holds it disabled
    disabled = api("PATCH", path, {"enabled": False}, scope=Scope.WRITE)
    assert disabled.status == 200, disabled.body
    assert disabled.body["enabled"] is False and disabled.body["next_fire_times"] == []
    assert eventbridge(schedule["id"])["State"] == "DISABLED"

    # A new expression and time zone (spelled loosely: stored as EventBridge spells it), enabled again
    changed = api("PATCH", path, {"expression": "cron(30 6 ? * mon-fri *)", "timezone": "UTC", "enabled": True})
    assert changed.status == 200, changed.body
    assert changed.body["expression"] == "cron(30 6 ? * MON-FRI *)"
    assert {datetime.fromisoformat(t).weekday() for t in changed.body["next_fire_times"]} <= {0, 1, 2, 3, 4}
    twin = eventbridge(schedule["id"])
    assert (twin["ScheduleExpression"], twin["ScheduleExpressionTimezone"], twin["State"]) == (
        "cron(30 6 ? * MON-FRI *)",
        "UTC",
        "ENABLED",
    )

    # A config the job's schema refuses changes nothing
    refused = api("PATCH", path, {"config": {"name": "Ada", "times": 0}})
    assert refused.status == 422 and error_field(refused) == "config.times", refused.body
    assert api("GET", path).body == changed.body

    # A new config is taken; the other fields stay
    taken = api("PATCH", path, {"config": {"name": "Grace", "times": 2}, "max_attempts": 1})
    assert taken.status == 200
    assert taken.body["config"] == {"name": "Grace", "times": 2} and taken.body["max_attempts"] == 1
    assert taken.body["expression"] == changed.body["expression"] and taken.body["name"] == NIGHTLY["name"]

    # And an unknown schedule is a 404
    assert api("PATCH", "/schedules/sch_0000000000000000", {"enabled": False}).status == 404


def test_a_change_recreates_an_eventbridge_twin_that_is_missing(api: Api, greeter: dict[str, Any]) -> None:
    # Given a schedule whose creation was cut short after its item was written (no twin in EventBridge)
    schedule = api("POST", "/schedules", NIGHTLY).body
    boto3.client("scheduler").delete_schedule(GroupName=GROUP, Name=schedule["id"])

    # When it is changed, then EventBridge has it again, as changed
    assert api("PATCH", f"/schedules/{schedule['id']}", {"enabled": False}).status == 200
    assert eventbridge(schedule["id"])["State"] == "DISABLED"


def test_delete_removes_the_schedule_and_its_eventbridge_twin(api: Api, greeter: dict[str, Any]) -> None:
    schedule = api("POST", "/schedules", NIGHTLY).body
    path = f"/schedules/{schedule['id']}"

    assert api("DELETE", path, scope=Scope.WRITE).status == 204
    assert api("GET", path).status == 404
    assert boto3.client("scheduler").list_schedules(GroupName=GROUP)["Schedules"] == []
    assert api("DELETE", path).status == 404


# ---------------------------------------------------------------- firing


def test_a_fire_enqueues_one_run_marked_with_the_schedule_however_often_it_is_retried(
    api: Api, greeter: dict[str, Any], aws: dict[str, str]
) -> None:
    schedule = api("POST", "/schedules", NIGHTLY).body

    # When EventBridge Scheduler invokes the fire function, then retries that same invocation
    first = fire(schedule["id"], "2030-01-02T01:00:00+00:00")
    retried = fire(schedule["id"], "2030-01-02T01:00:00+00:00")

    # Then one run was enqueued and dispatched, and the retry got that run back
    assert first["status"] == "enqueued" and retried["status"] == "duplicate", (first, retried)
    assert retried["run_id"] == first["run_id"]
    assert queued_run_ids(aws["default"]) == [first["run_id"]]

    # And it is a normal run of the template, marked with its schedule
    run = api("GET", f"/runs/{first['run_id']}", scope=Scope.READ).body
    assert run["schedule_id"] == schedule["id"]
    assert (run["package"], run["job"], run["config"], run["state"]) == ("greeter", "greet", {"name": "Ada"}, "Queued")

    # And the schedule says when it last fired and what it enqueued
    after = api("GET", f"/schedules/{schedule['id']}").body
    assert after["last_fired_at"] == "2030-01-02T01:00:00Z" and after["last_run_id"] == first["run_id"]

    # And the next scheduled time is another fire: a second run; both are found by their schedule
    second = fire(schedule["id"], "2030-01-03T01:00:00+00:00")
    assert second["status"] == "enqueued" and second["run_id"] != first["run_id"]
    found = api("GET", "/runs", query={"schedule_id": schedule["id"]}).body["items"]
    assert {r["id"] for r in found} == {first["run_id"], second["run_id"]}


def test_a_disabled_schedule_enqueues_nothing(api: Api, greeter: dict[str, Any], aws: dict[str, str]) -> None:
    schedule = api("POST", "/schedules", {**NIGHTLY, "enabled": False}).body
    assert eventbridge(schedule["id"])["State"] == "DISABLED"

    # Even if invoked (EventBridge had read it just before it was disabled)
    outcome = fire(schedule["id"], "2030-01-02T01:00:00+00:00")

    assert outcome["status"] == "disabled" and outcome["run_id"] is None
    assert queued_run_ids(aws["default"]) == []
    assert api("GET", "/runs").body["items"] == []


def test_a_template_that_no_longer_resolves_records_last_error_and_the_next_good_fire_clears_it(
    api: Api, greeter: dict[str, Any], aws: dict[str, str]
) -> None:
    # Given a schedule of version 1.0.0, and then a pin that excludes that version
    schedule = api("POST", "/schedules", {**NIGHTLY, "version": "1.0.0"}).body
    assert api("PUT", "/environments/default/pins/greeter", {"specifier": ">=2"}).status == 200

    # When it fires, then nothing is enqueued, the fire does not fail, and the schedule says why
    outcome = fire(schedule["id"], "2030-01-02T01:00:00+00:00")
    assert outcome["status"] == "failed" and "version" in outcome["error"], outcome
    assert queued_run_ids(aws["default"]) == []
    broken = api("GET", f"/schedules/{schedule['id']}").body
    assert broken["last_error"].startswith("version:") and ">=2" in broken["last_error"]
    assert broken["last_error_at"] is not None and broken["last_fired_at"] is None

    # When the pin is lifted, the next fire enqueues and clears the error
    assert api("DELETE", "/environments/default/pins/greeter").status == 204
    assert fire(schedule["id"], "2030-01-03T01:00:00+00:00")["status"] == "enqueued"
    healed = api("GET", f"/schedules/{schedule['id']}").body
    assert healed["last_error"] is None and healed["last_fired_at"] == "2030-01-03T01:00:00Z"


def test_a_deleted_schedule_fired_late_enqueues_nothing(api: Api, greeter: dict[str, Any], aws: dict[str, str]) -> None:
    schedule = api("POST", "/schedules", NIGHTLY).body
    event = render_event(Definition.from_schedule(eventbridge(schedule["id"])), datetime(2030, 1, 2, tzinfo=UTC))
    assert api("DELETE", f"/schedules/{schedule['id']}").status == 204

    outcome = fire_function.lambda_handler(event, FakeContext())  # type: ignore[arg-type]

    assert outcome["status"] == "missing"
    assert queued_run_ids(aws["default"]) == []


def test_a_schedules_tags_go_on_every_run_it_enqueues_and_a_change_of_them_on_the_next(
    api: Api, greeter: dict[str, Any]
) -> None:
    schedule = api("POST", "/schedules", {**NIGHTLY, "tags": {"report": "nightly"}}).body
    assert schedule["tags"] == {"report": "nightly"}
    first = fire(schedule["id"], "2030-01-02T01:00:00+00:00")
    assert api("GET", f"/runs/{first['run_id']}").body["tags"] == {"report": "nightly"}

    changed = api("PATCH", f"/schedules/{schedule['id']}", {"tags": {"report": "nightly", "team": "finance"}})
    assert changed.status == 200 and changed.body["tags"] == {"report": "nightly", "team": "finance"}
    second = fire(schedule["id"], "2030-01-03T01:00:00+00:00")
    found = api("GET", "/runs", query={"tag": "team:finance"}).body["items"]
    assert [run["id"] for run in found] == [second["run_id"]]

    # {} takes them off; a bad tag is refused naming the field, and the schedule keeps what it had
    assert api("PATCH", f"/schedules/{schedule['id']}", {"tags": {}}).body["tags"] == {}
    refused = api("PATCH", f"/schedules/{schedule['id']}", {"tags": {"bad key": "x"}})
    assert refused.status == 422 and (error_field(refused) or "").startswith("tags"), refused.body
    assert api("GET", f"/schedules/{schedule['id']}").body["tags"] == {}


# ---------------------------------------------------------------- delayed runs of a schedule


def test_a_schedules_runs_may_be_delayed_after_each_fire(
    api: Api, greeter: dict[str, Any], aws: dict[str, str]
) -> None:
    # Given a schedule whose runs start 5 minutes after each fire
    created = api("POST", "/schedules", {**NIGHTLY, "delay_seconds": 300}, scope=Scope.WRITE)
    assert created.status == 201, created.body
    assert created.body["delay_seconds"] == 300

    # When it fires
    at = "2030-01-01T02:00:00+00:00"
    before = datetime.now(UTC)
    outcome = fire(created.body["id"], at)

    # Then its run is delayed 5 minutes from the fire, as an SQS delay (its message is not receivable yet)
    assert outcome["status"] == "enqueued", outcome
    run = api("GET", f"/runs/{outcome['run_id']}").body
    not_before = datetime.fromisoformat(run["not_before"])
    assert before + timedelta(seconds=300) <= not_before <= datetime.now(UTC) + timedelta(seconds=300)
    assert run["queued_reason"].startswith("delayed until ")
    assert queued_run_ids(aws["default"]) == []

    # And the delay can be changed, and taken away (0)
    changed = api("PATCH", f"/schedules/{created.body['id']}", {"delay_seconds": 0}, scope=Scope.WRITE)
    assert changed.status == 200 and changed.body["delay_seconds"] is None, changed.body


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"not_before": "2030-01-01T00:00:00Z"}, "not_before"), ({"delay_seconds": 901}, "delay_seconds")],
)
def test_a_schedule_takes_no_fixed_not_before_nor_a_delay_beyond_sqs(
    api: Api, greeter: dict[str, Any], fields: dict[str, Any], field: str
) -> None:
    reply = api("POST", "/schedules", {**NIGHTLY, **fields}, scope=Scope.WRITE)
    assert reply.status == 422 and error_field(reply) == field, reply.body
    assert boto3.client("scheduler").list_schedules(GroupName=GROUP)["Schedules"] == []
