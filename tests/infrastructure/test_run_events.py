"""Run events: the table's stream, the runly bus and the publisher between them."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from functions.events.changes import stream_filter
from infrastructure.run_events import PUBLISHER_HANDLER, STREAM_RETRY_ATTEMPTS, failures_queue_name
from infrastructure.settings import StageSettings
from infrastructure.stack import RunlyStack
from runly_core.contracts import TERMINAL_STATES
from tests.infrastructure.cfn import resources_of_type
from tests.infrastructure.iam import (
    assert_no_wildcard_action,
    function_with_handler,
    grants,
    logical_id,
    role_of,
    role_statements,
)
from tests.infrastructure.synth import NO_EVENTS_STAGE, no_events_synth_context


@pytest.fixture(scope="module")
def publisher(template_json: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return function_with_handler(template_json, PUBLISHER_HANDLER)


@pytest.fixture(scope="module")
def bus_id(template_json: dict[str, Any], stage_settings: StageSettings) -> str:
    names = stage_settings.resource_names(account="any", region="any")
    return logical_id(template_json, "AWS::Events::EventBus", Name=names.event_bus)


def test_the_table_streams_new_and_old_images(template_json: dict[str, Any]) -> None:
    [table] = resources_of_type(template_json, "AWS::DynamoDB::Table").values()
    assert table["Properties"]["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}


def test_the_bus_is_named_runly_stage(bus_id: str, stage_settings: StageSettings) -> None:
    # Named in runly_core.resources, so rules written against it (docs/events.md) name it the same way.
    assert stage_settings.resource_names(account="a", region="r").event_bus == f"runly-{stage_settings.stage}"


def _publisher_mapping(template_json: dict[str, Any]) -> dict[str, Any]:
    function_id, _ = function_with_handler(template_json, PUBLISHER_HANDLER)
    [mapping] = [
        m["Properties"]
        for m in resources_of_type(template_json, "AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == {"Ref": function_id}
    ]
    return mapping


def test_by_default_only_runs_entering_a_terminal_state_reach_the_publisher(template_json: dict[str, Any]) -> None:
    # The default stage's run_events is "terminal": one event per run, the stream filtered before the publisher
    [criteria] = _publisher_mapping(template_json)["FilterCriteria"]["Filters"]
    pattern = json.loads(criteria["Pattern"])
    assert pattern == stream_filter(TERMINAL_STATES)
    assert sorted(pattern["dynamodb"]["NewImage"]["state"]["S"]) == ["Cancelled", "Failed", "Succeeded", "TimedOut"]
    assert pattern["dynamodb"]["Keys"] == {"pk": {"S": [{"prefix": "ENV#"}]}, "sk": {"S": ["RUN"]}}


def test_with_run_events_all_every_record_reaches_the_publisher(fleet_template_json: dict[str, Any]) -> None:
    assert "FilterCriteria" not in _publisher_mapping(fleet_template_json)


@pytest.fixture(scope="module")
def no_events_template_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = cdk.App(context=no_events_synth_context(), outdir=str(tmp_path_factory.mktemp("cdk.out.quiet")))
    settings = StageSettings.from_context(no_events_synth_context())
    return dict(Template.from_stack(RunlyStack(app, f"runly-{NO_EVENTS_STAGE}", settings=settings)).to_json())


def test_with_run_events_off_there_is_no_bus_publisher_mapping_or_alarm(
    no_events_template_json: dict[str, Any],
) -> None:
    template = no_events_template_json
    assert resources_of_type(template, "AWS::Events::EventBus") == {}
    table_id = logical_id(template, "AWS::DynamoDB::Table")
    sources = [
        m["Properties"]["EventSourceArn"]
        for m in resources_of_type(template, "AWS::Lambda::EventSourceMapping").values()
    ]
    assert {"Fn::GetAtt": [table_id, "StreamArn"]} not in sources
    handlers = [f["Properties"].get("Handler") for f in resources_of_type(template, "AWS::Lambda::Function").values()]
    assert PUBLISHER_HANDLER not in handlers and handlers
    alarms = [a["Properties"]["AlarmName"] for a in resources_of_type(template, "AWS::CloudWatch::Alarm").values()]
    assert not any("run-events" in name for name in alarms) and alarms
    assert "EventBusName" not in template["Outputs"]


def test_the_publisher_reads_the_stream_reporting_failures_and_parking_what_never_publishes(
    template_json: dict[str, Any], publisher: tuple[str, dict[str, Any]], stage_settings: StageSettings
) -> None:
    function_id, _ = publisher
    table_id = logical_id(template_json, "AWS::DynamoDB::Table")
    [mapping] = [
        m["Properties"]
        for m in resources_of_type(template_json, "AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == {"Ref": function_id}
    ]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": [table_id, "StreamArn"]}
    assert mapping["StartingPosition"] == "TRIM_HORIZON"
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["MaximumRetryAttempts"] == STREAM_RETRY_ATTEMPTS
    names = stage_settings.resource_names(account="any", region="any")
    failures = logical_id(template_json, "AWS::SQS::Queue", QueueName=failures_queue_name(names))
    assert mapping["DestinationConfig"] == {"OnFailure": {"Destination": {"Fn::GetAtt": [failures, "Arn"]}}}


def test_the_publisher_is_told_the_bus_and_nothing_else_it_does_not_read(
    publisher: tuple[str, dict[str, Any]], bus_id: str
) -> None:
    from functions.events.publisher import EventsSettings

    prefix = str(EventsSettings.model_config.get("env_prefix", ""))
    read = {f"{prefix}{field}".upper() for field in EventsSettings.model_fields}
    variables = publisher[1]["Environment"]["Variables"]
    assert {name for name in variables if name.startswith(prefix)} == read == {"RUNLY_EVENT_BUS_NAME"}
    assert variables["RUNLY_EVENT_BUS_NAME"] == {"Ref": bus_id}


def test_the_publisher_may_read_the_stream_put_on_the_bus_and_park_failures_only(
    template_json: dict[str, Any],
    publisher: tuple[str, dict[str, Any]],
    bus_id: str,
    stage_settings: StageSettings,
) -> None:
    _, function = publisher
    statements = role_statements(template_json, role_of(function))
    assert_no_wildcard_action(statements)
    table_id = logical_id(template_json, "AWS::DynamoDB::Table")
    names = stage_settings.resource_names(account="any", region="any")
    failures = logical_id(template_json, "AWS::SQS::Queue", QueueName=failures_queue_name(names))
    log_group = function["LoggingConfig"]["LogGroup"]["Ref"]
    stream = f"<{table_id}.StreamArn>"
    assert grants(statements) == {
        ("dynamodb:DescribeStream", stream),
        ("dynamodb:GetRecords", stream),
        ("dynamodb:GetShardIterator", stream),
        # No resource-level permission exists for listing streams (acknowledged in cdk-nag with that reason).
        ("dynamodb:ListStreams", "*"),
        ("events:PutEvents", f"<{bus_id}.Arn>"),
        ("sqs:SendMessage", f"<{failures}.Arn>"),
        ("sqs:GetQueueAttributes", f"<{failures}.Arn>"),
        ("sqs:GetQueueUrl", f"<{failures}.Arn>"),
        ("logs:CreateLogStream", f"<{log_group}.Arn>"),
        ("logs:PutLogEvents", f"<{log_group}.Arn>"),
    }


def test_the_failure_queue_is_encrypted_and_kept_as_long_as_the_run_queues(
    template_json: dict[str, Any], stage_settings: StageSettings
) -> None:
    from runly_core.resources import QUEUE_RETENTION_SECONDS

    names = stage_settings.resource_names(account="any", region="any")
    failures = logical_id(template_json, "AWS::SQS::Queue", QueueName=failures_queue_name(names))
    properties = template_json["Resources"][failures]["Properties"]
    assert properties["SqsManagedSseEnabled"] is True
    assert properties["MessageRetentionPeriod"] == QUEUE_RETENTION_SECONDS
