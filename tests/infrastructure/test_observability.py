"""Alarms, the optional alarm topic and the dashboard."""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.events.metrics import NAMESPACE, RUN_STATE_METRICS, SERVICE
from infrastructure.observability import API_ENQUEUED_METRIC, API_SERVICE, REAPER_METRICS, REAPER_SERVICE
from infrastructure.settings import StageSettings
from runly_core import resources
from runly_core.contracts import TERMINAL_STATES
from tests.infrastructure.cfn import render, resources_of_type
from tests.infrastructure.iam import logical_id
from tests.infrastructure.synth import ALARM_EMAIL, TEST_ENVIRONMENTS


def _alarms(template_json: dict[str, Any], names: resources.ResourceNames) -> dict[str, dict[str, Any]]:
    """runly's own alarms (not the ones Auto Scaling policies use), by name without the stage prefix."""
    return {
        alarm["Properties"]["AlarmName"].removeprefix(f"{names.prefix}-"): alarm["Properties"]
        for alarm in resources_of_type(template_json, "AWS::CloudWatch::Alarm").values()
        if "AlarmName" in alarm["Properties"]
    }


@pytest.fixture(scope="module")
def names(stage_settings: StageSettings) -> resources.ResourceNames:
    return stage_settings.resource_names(account="any", region="any")


@pytest.fixture(scope="module")
def alarms(template_json: dict[str, Any], names: resources.ResourceNames) -> dict[str, dict[str, Any]]:
    return _alarms(template_json, names)


def _metrics(alarm: dict[str, Any]) -> dict[str, tuple[str, str, Any]]:
    """Query id (or "metric" for a single-metric alarm) -> (namespace, metric name, first dimension value)."""
    if "MetricName" in alarm:
        return {"metric": (alarm["Namespace"], alarm["MetricName"], alarm["Dimensions"][0]["Value"])}
    found = {}
    for query in alarm["Metrics"]:
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            found[query["Id"]] = (metric["Namespace"], metric["MetricName"], metric["Dimensions"][0]["Value"])
    return found


def test_dead_letters_alarm_per_environment_when_one_waits_or_was_just_taken(
    template_json: dict[str, Any], alarms: dict[str, dict[str, Any]], names: resources.ResourceNames
) -> None:
    for environment in TEST_ENVIRONMENTS:
        alarm = alarms[f"dead-letters-{environment}"]
        dlq = logical_id(template_json, "AWS::SQS::Queue", QueueName=names.queues(environment).dead_letter_queue)
        dimension = {"Fn::GetAtt": [dlq, "QueueName"]}
        assert _metrics(alarm) == {
            "waiting": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", dimension),
            "taken": ("AWS/SQS", "NumberOfMessagesReceived", dimension),
        }
        [expression] = [m["Expression"] for m in alarm["Metrics"] if m.get("ReturnData", True) and "Expression" in m]
        assert expression == "waiting + taken"
        assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)


def test_oldest_message_alarm_per_run_queue_at_the_stage_threshold(
    template_json: dict[str, Any],
    alarms: dict[str, dict[str, Any]],
    names: resources.ResourceNames,
    stage_settings: StageSettings,
) -> None:
    for environment in TEST_ENVIRONMENTS:
        alarm = alarms[f"oldest-run-{environment}"]
        queue = logical_id(template_json, "AWS::SQS::Queue", QueueName=names.queues(environment).queue)
        assert _metrics(alarm) == {
            "metric": ("AWS/SQS", "ApproximateAgeOfOldestMessage", {"Fn::GetAtt": [queue, "QueueName"]})
        }
        assert alarm["Threshold"] == stage_settings.alarms.oldest_message_age_seconds
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_api_5xx_alarm(template_json: dict[str, Any], alarms: dict[str, dict[str, Any]]) -> None:
    [api_id] = resources_of_type(template_json, "AWS::ApiGatewayV2::Api")
    alarm = alarms["api-5xx"]
    assert _metrics(alarm) == {"metric": ("AWS/ApiGateway", "5xx", {"Ref": api_id})}
    assert alarm["Statistic"] == "Sum"


def test_every_function_has_an_errors_and_a_throttles_alarm(
    template_json: dict[str, Any], alarms: dict[str, dict[str, Any]]
) -> None:
    functions = set(resources_of_type(template_json, "AWS::Lambda::Function"))
    for metric_name in ("Errors", "Throttles"):
        watched = {
            alarm["Dimensions"][0]["Value"]["Ref"]
            for alarm in alarms.values()
            if alarm.get("Namespace") == "AWS/Lambda" and alarm.get("MetricName") == metric_name
        }
        assert watched == functions, metric_name


def test_table_throttles_alarm(template_json: dict[str, Any], alarms: dict[str, dict[str, Any]]) -> None:
    table = {"Ref": logical_id(template_json, "AWS::DynamoDB::Table")}
    assert _metrics(alarms["table-throttles"]) == {
        "reads": ("AWS/DynamoDB", "ReadThrottleEvents", table),
        "writes": ("AWS/DynamoDB", "WriteThrottleEvents", table),
    }


def test_undeliverable_run_events_alarm(alarms: dict[str, dict[str, Any]]) -> None:
    alarm = alarms["run-events-undeliverable"]
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)


def test_alarms_notify_no_one_by_default(alarms: dict[str, dict[str, Any]], template_json: dict[str, Any]) -> None:
    assert resources_of_type(template_json, "AWS::SNS::Topic") == {}
    assert all("AlarmActions" not in alarm for alarm in alarms.values())
    for alarm in alarms.values():
        assert alarm["TreatMissingData"] == "notBreaching"


def test_with_a_topic_every_alarm_notifies_it_encrypted_over_tls_only(
    fleet_template_json: dict[str, Any], fleet_settings: StageSettings
) -> None:
    names = fleet_settings.resource_names(account="any", region="any")
    [(topic_id, topic)] = resources_of_type(fleet_template_json, "AWS::SNS::Topic").items()
    key_id = topic["Properties"]["KmsMasterKeyId"]["Fn::GetAtt"][0]
    key = fleet_template_json["Resources"][key_id]["Properties"]
    assert key["EnableKeyRotation"] is True
    # CloudWatch must be able to use the key, or its notifications to the encrypted topic are dropped.
    assert any(
        s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
        and {"kms:Decrypt", "kms:GenerateDataKey*"} <= set(s["Action"])
        for s in key["KeyPolicy"]["Statement"]
    )
    [policy] = resources_of_type(fleet_template_json, "AWS::SNS::TopicPolicy").values()
    assert any(
        s["Effect"] == "Deny" and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
    )
    for alarm in _alarms(fleet_template_json, names).values():
        assert alarm["AlarmActions"] == [{"Ref": topic_id}] and alarm["OKActions"] == [{"Ref": topic_id}]
    [subscription] = resources_of_type(fleet_template_json, "AWS::SNS::Subscription").values()
    assert (subscription["Properties"]["Protocol"], subscription["Properties"]["Endpoint"]) == ("email", ALARM_EMAIL)
    assert "AlarmTopicArn" in fleet_template_json["Outputs"]


def test_dashboard_shows_queues_runs_reaper_api_and_functions(
    template_json: dict[str, Any], names: resources.ResourceNames
) -> None:
    [dashboard] = resources_of_type(template_json, "AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardName"] == names.prefix
    body = render(dashboard["Properties"]["DashboardBody"])
    widgets = json.loads(body)["widgets"]
    titles = {w["properties"].get("title") for w in widgets}
    assert {
        "Alarms",
        "Runs enqueued",  # the default stage publishes terminal states only: "started" is the API's count
        "Runs finished",
        "Reaper actions",
        "Runs waiting per environment",
        "Runs in flight per environment",
        "API latency (ms)",
        "Function errors",
    } <= titles
    metrics = [m for w in widgets for m in w["properties"].get("metrics", [])]
    flat = json.dumps(metrics)
    for state in TERMINAL_STATES:
        assert json.dumps([NAMESPACE, RUN_STATE_METRICS[state], "service", SERVICE])[1:-1] in flat, state
    assert json.dumps([NAMESPACE, API_ENQUEUED_METRIC, "service", API_SERVICE])[1:-1] in flat
    for name in REAPER_METRICS:
        assert json.dumps([NAMESPACE, name, "service", "runly-reaper"])[1:-1] in flat, name
    assert "DashboardUrl" in template_json["Outputs"]


def test_reaper_metrics_on_the_dashboard_are_the_ones_the_reaper_emits() -> None:
    # functions.maintenance.reaper emits "Reaper" + field name, capitalised, for each field of its report.
    from dataclasses import fields

    from functions.logic.maintenance import ReapReport

    assert set(REAPER_METRICS) == {f"Reaper{field.name.capitalize()}" for field in fields(ReapReport)}


def test_with_every_run_state_published_the_dashboard_graphs_every_state(fleet_template_json: dict[str, Any]) -> None:
    [dashboard] = resources_of_type(fleet_template_json, "AWS::CloudWatch::Dashboard").values()
    widgets = json.loads(render(dashboard["Properties"]["DashboardBody"]))["widgets"]
    assert "Runs started" in {w["properties"].get("title") for w in widgets}
    flat = json.dumps([m for w in widgets for m in w["properties"].get("metrics", [])])
    for name in RUN_STATE_METRICS.values():
        assert json.dumps([NAMESPACE, name, "service", SERVICE])[1:-1] in flat, name


def test_the_enqueue_count_on_the_dashboard_is_the_one_the_api_emits() -> None:
    from functions.api.observability import METRICS_NAMESPACE
    from functions.api.observability import SERVICE as API_FUNCTION_SERVICE

    assert (METRICS_NAMESPACE, API_FUNCTION_SERVICE) == (NAMESPACE, API_SERVICE)


def test_reaper_metrics_are_the_reaper_reports_fields_and_a_refused_entry_alarms(
    alarms: dict[str, dict[str, Any]],
) -> None:
    import dataclasses

    from functions.logic.maintenance import ReapReport
    from functions.maintenance import reaper

    # The reaper emits one metric per ReapReport field, under its own service: the names the dashboard and the
    # alarm read must be exactly those (a renamed field would leave a graph, or the alarm, on a metric never sent).
    assert REAPER_METRICS == tuple(f"Reaper{field.name.capitalize()}" for field in dataclasses.fields(ReapReport))
    assert (reaper.metrics.namespace, reaper.metrics.service) == (NAMESPACE, REAPER_SERVICE)
    alarm = alarms["reaper-refused"]
    assert _metrics(alarm) == {"metric": (NAMESPACE, "ReaperRefused", REAPER_SERVICE)}
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")
