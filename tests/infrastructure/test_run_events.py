"""Run events: the table's stream, the runly bus and the publisher between them."""

from __future__ import annotations

from typing import Any

import pytest

from infrastructure.run_events import PUBLISHER_HANDLER, STREAM_RETRY_ATTEMPTS, failures_queue_name
from infrastructure.settings import StageSettings
from tests.infrastructure.cfn import resources_of_type
from tests.infrastructure.iam import (
    assert_no_wildcard_action,
    function_with_handler,
    grants,
    logical_id,
    role_of,
    role_statements,
)


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
    # Named in runly.resources, so rules written against it (docs/events.md) name it the same way.
    assert stage_settings.resource_names(account="a", region="r").event_bus == f"runly-{stage_settings.stage}"


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
    from runly.resources import QUEUE_RETENTION_SECONDS

    names = stage_settings.resource_names(account="any", region="any")
    failures = logical_id(template_json, "AWS::SQS::Queue", QueueName=failures_queue_name(names))
    properties = template_json["Resources"][failures]["Properties"]
    assert properties["SqsManagedSseEnabled"] is True
    assert properties["MessageRetentionPeriod"] == QUEUE_RETENTION_SECONDS
