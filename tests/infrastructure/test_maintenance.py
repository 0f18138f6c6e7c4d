"""The maintenance construct: a dead-letter handler per environment and the reaper on a one-minute schedule."""

from __future__ import annotations

from typing import Any

import pytest

from functions.settings import EnvSettings
from infrastructure import function_environment
from infrastructure.maintenance import DEAD_LETTER_HANDLER, REAPER_HANDLER
from infrastructure.settings import StageSettings
from runly_core import resources
from tests.infrastructure.cfn import render, resources_of_type
from tests.infrastructure.iam import (
    assert_no_wildcard_action,
    function_with_handler,
    functions_with_handler,
    grants,
    logical_id,
    role_of,
    role_statements,
)
from tests.infrastructure.synth import TEST_ENVIRONMENTS

ITEM_ACTIONS = {"dynamodb:GetItem", "dynamodb:UpdateItem"}


def _queue_id(template_json: dict[str, Any], name: str) -> str:
    return logical_id(template_json, "AWS::SQS::Queue", QueueName=name)


@pytest.fixture(scope="module")
def names(stage_settings: StageSettings) -> resources.ResourceNames:
    return stage_settings.resource_names(account="any", region="any")


@pytest.fixture(scope="module")
def dead_letter_handlers(
    template_json: dict[str, Any], names: resources.ResourceNames
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Environment -> (logical id, properties) of the function consuming that environment's DLQ."""
    functions = functions_with_handler(template_json, DEAD_LETTER_HANDLER)
    by_environment = {}
    for mapping in resources_of_type(template_json, "AWS::Lambda::EventSourceMapping").values():
        function_id = mapping["Properties"]["FunctionName"]["Ref"]
        if function_id in functions:
            source = mapping["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
            [environment] = [
                e for e in TEST_ENVIRONMENTS if source == _queue_id(template_json, names.queues(e).dead_letter_queue)
            ]
            by_environment[environment] = (function_id, functions[function_id])
    return by_environment


def test_each_environment_dead_letter_queue_has_its_own_handler_in_batches_of_ten(
    template_json: dict[str, Any],
    dead_letter_handlers: dict[str, tuple[str, dict[str, Any]]],
) -> None:
    assert set(dead_letter_handlers) == set(TEST_ENVIRONMENTS)
    assert len({function_id for function_id, _ in dead_letter_handlers.values()}) == len(TEST_ENVIRONMENTS)
    for function_id, _ in dead_letter_handlers.values():
        [mapping] = [
            m["Properties"]
            for m in resources_of_type(template_json, "AWS::Lambda::EventSourceMapping").values()
            if m["Properties"]["FunctionName"] == {"Ref": function_id}
        ]
        assert mapping["BatchSize"] == 10
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_dead_letter_handler_fits_in_its_queue_visibility_timeout(
    template_json: dict[str, Any], dead_letter_handlers: dict[str, tuple[str, dict[str, Any]]]
) -> None:
    # Lambda refuses an SQS mapping whose function may run longer than the queue hides a message (default 30 s).
    dead_letter_queues = [
        q["Properties"]
        for q in resources_of_type(template_json, "AWS::SQS::Queue").values()
        if q["Properties"].get("QueueName", "").endswith("-dlq")
    ]
    for _, function in dead_letter_handlers.values():
        for queue in dead_letter_queues:
            assert function["Timeout"] <= queue.get("VisibilityTimeout", 30)


def test_dead_letter_handler_may_consume_its_own_dlq_and_get_and_update_items_only(
    template_json: dict[str, Any],
    dead_letter_handlers: dict[str, tuple[str, dict[str, Any]]],
    names: resources.ResourceNames,
) -> None:
    table_id = logical_id(template_json, "AWS::DynamoDB::Table")
    for environment, (_, function) in dead_letter_handlers.items():
        statements = role_statements(template_json, role_of(function))
        assert_no_wildcard_action(statements)
        log_group = function["LoggingConfig"]["LogGroup"]["Ref"]
        dead_letter_queue = _queue_id(template_json, names.queues(environment).dead_letter_queue)
        assert grants(statements) == {
            ("sqs:ReceiveMessage", f"<{dead_letter_queue}.Arn>"),
            ("sqs:DeleteMessage", f"<{dead_letter_queue}.Arn>"),
            ("sqs:GetQueueAttributes", f"<{dead_letter_queue}.Arn>"),
            ("dynamodb:GetItem", f"<{table_id}.Arn>"),
            ("dynamodb:UpdateItem", f"<{table_id}.Arn>"),
            ("logs:CreateLogStream", f"<{log_group}.Arn>"),
            ("logs:PutLogEvents", f"<{log_group}.Arn>"),
        }


def test_reaper_runs_every_minute(template_json: dict[str, Any]) -> None:
    function_id, _ = function_with_handler(template_json, REAPER_HANDLER)
    [rule] = [
        r["Properties"]
        for r in resources_of_type(template_json, "AWS::Events::Rule").values()
        if any(t["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]} for t in r["Properties"].get("Targets", []))
    ]
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    assert rule["State"] == "ENABLED"
    permissions = [
        p["Properties"]
        for p in resources_of_type(template_json, "AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == {"Fn::GetAtt": [function_id, "Arn"]}
    ]
    assert [p["Principal"] for p in permissions] == ["events.amazonaws.com"]


def test_reaper_queries_the_lease_index_updates_runs_and_sends_to_run_queues_only(
    template_json: dict[str, Any], names: resources.ResourceNames
) -> None:
    _, function = function_with_handler(template_json, REAPER_HANDLER)
    statements = role_statements(template_json, role_of(function))
    assert_no_wildcard_action(statements)
    table_id = logical_id(template_json, "AWS::DynamoDB::Table")
    log_group = function["LoggingConfig"]["LogGroup"]["Ref"]
    run_queues = {_queue_id(template_json, names.queues(e).queue) for e in TEST_ENVIRONMENTS}
    assert grants(statements) == {
        ("dynamodb:Query", f"<{table_id}.Arn>/index/{resources.RUNS_BY_LEASE.name}"),
        ("dynamodb:GetItem", f"<{table_id}.Arn>"),
        ("dynamodb:BatchGetItem", f"<{table_id}.Arn>"),
        ("dynamodb:UpdateItem", f"<{table_id}.Arn>"),
        *{("sqs:SendMessage", f"<{queue}.Arn>") for queue in run_queues},
        ("logs:CreateLogStream", f"<{log_group}.Arn>"),
        ("logs:PutLogEvents", f"<{log_group}.Arn>"),
    }


def test_maintenance_functions_get_exactly_the_settings_they_read(
    template_json: dict[str, Any], dead_letter_handlers: dict[str, tuple[str, dict[str, Any]]]
) -> None:
    from functions.maintenance.settings import DeadLetterSettings, ReaperSettings

    _, api = function_with_handler(template_json, resources.API_FUNCTION_HANDLER)
    maintenance: list[tuple[type[EnvSettings], dict[str, Any]]] = [
        (DeadLetterSettings, function) for _, function in dead_letter_handlers.values()
    ]
    maintenance.append((ReaperSettings, function_with_handler(template_json, REAPER_HANDLER)[1]))
    for model, function in maintenance:
        prefix = str(model.model_config.get("env_prefix", ""))
        fields = {f"{prefix}{field}".upper(): info for field, info in model.model_fields.items()}
        required = {name for name, info in fields.items() if info.is_required()}
        variables = function["Environment"]["Variables"]
        given = {name for name in variables if name.startswith(prefix)}
        # Every variable given is read, every required one is given (optional ones keep their defaults).
        assert required <= given <= set(fields), (model.__name__, given ^ set(fields))
        # Nothing of the API's they do not read: no feed bucket, no scheduler role.
        assert not given & {function_environment.FEED_BUCKET, function_environment.SCHEDULER_ROLE_ARN}
        # And they are the API's very values: the same table and queues.
        for name in function_environment.SETTINGS_VARIABLES & given:
            assert variables[name] == api["Environment"]["Variables"][name], name
        assert render(variables["POWERTOOLS_SERVICE_NAME"]) in {"runly-dlq", "runly-reaper"}
