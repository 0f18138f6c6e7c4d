"""The schedules construct: a schedule group, the fire function and the role EventBridge Scheduler invokes it with,
and what the API may do with them; each with least privilege."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infrastructure import function_environment
from infrastructure.schedules import FIRE_HANDLER, MANAGE_SCHEDULE_ACTIONS
from infrastructure.settings import StageSettings
from runly_core import resources
from tests.infrastructure.cfn import as_list, render, resources_of_type
from tests.infrastructure.iam import (
    assert_no_wildcard_action,
    function_with_handler,
    grants,
    logical_id,
    role_of,
    role_statements,
)
from tests.infrastructure.synth import TEST_ENVIRONMENTS

SCHEDULER = "scheduler.amazonaws.com"


@pytest.fixture(scope="module")
def group_id(template_json: dict[str, Any]) -> str:
    [found] = resources_of_type(template_json, "AWS::Scheduler::ScheduleGroup")
    return found


@pytest.fixture(scope="module")
def fire_function(template_json: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return function_with_handler(template_json, FIRE_HANDLER)


@pytest.fixture(scope="module")
def scheduler_role_id(template_json: dict[str, Any]) -> str:
    [found] = [
        role_id
        for role_id, role in resources_of_type(template_json, "AWS::IAM::Role").items()
        if any(
            statement["Principal"].get("Service") == SCHEDULER
            for statement in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        )
    ]
    return found


@pytest.fixture(scope="module")
def api_function(template_json: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return function_with_handler(template_json, resources.API_FUNCTION_HANDLER)


def test_the_group_is_named_as_the_embedded_stack_names_it(
    template_json: dict[str, Any], group_id: str, stage_settings: StageSettings
) -> None:
    names = stage_settings.resource_names(account="any", region="any")
    assert template_json["Resources"][group_id]["Properties"]["Name"] == names.scheduler_group


def test_the_api_is_told_the_group_the_scheduler_role_and_the_fire_function(
    api_function: tuple[str, dict[str, Any]],
    fire_function: tuple[str, dict[str, Any]],
    group_id: str,
    scheduler_role_id: str,
) -> None:
    variables = api_function[1]["Environment"]["Variables"]
    assert variables[function_environment.SCHEDULER_GROUP] == {"Ref": group_id}
    assert variables[function_environment.SCHEDULER_ROLE_ARN] == {"Fn::GetAtt": [scheduler_role_id, "Arn"]}
    assert variables[function_environment.SCHEDULE_FIRE_FUNCTION_ARN] == {"Fn::GetAtt": [fire_function[0], "Arn"]}


def test_the_fire_function_gets_exactly_the_settings_it_reads_with_the_apis_table_and_queues(
    fire_function: tuple[str, dict[str, Any]], api_function: tuple[str, dict[str, Any]]
) -> None:
    from functions.settings import ScheduleFireSettings

    prefix = str(ScheduleFireSettings.model_config.get("env_prefix", ""))
    read = {f"{prefix}{field}".upper() for field in ScheduleFireSettings.model_fields}
    assert read == function_environment.FIRE_SETTINGS_VARIABLES
    variables = fire_function[1]["Environment"]["Variables"]
    assert set(variables) == function_environment.FIRE_FUNCTION_VARIABLES
    api_variables = api_function[1]["Environment"]["Variables"]
    for name in function_environment.FIRE_SETTINGS_VARIABLES:
        assert variables[name] == api_variables[name], name
    assert variables["POWERTOOLS_SERVICE_NAME"] == "runly-schedules"


def test_the_fire_function_may_touch_the_items_a_fire_needs_query_nodes_and_send_runs_only(
    template_json: dict[str, Any], fire_function: tuple[str, dict[str, Any]], stage_settings: StageSettings
) -> None:
    names = stage_settings.resource_names(account="any", region="any")
    statements = role_statements(template_json, role_of(fire_function[1]))
    assert_no_wildcard_action(statements)
    table_id = logical_id(template_json, "AWS::DynamoDB::Table")
    log_group = fire_function[1]["LoggingConfig"]["LogGroup"]["Ref"]
    run_queues = {
        logical_id(template_json, "AWS::SQS::Queue", QueueName=names.queues(e).queue) for e in TEST_ENVIRONMENTS
    }
    assert grants(statements) == {
        *{
            (f"dynamodb:{action}", f"<{table_id}.Arn>")
            for action in ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "BatchGetItem")
        },
        ("dynamodb:Query", f"<{table_id}.Arn>/index/{resources.ITEMS_BY_KIND.name}"),
        *{("sqs:SendMessage", f"<{queue}.Arn>") for queue in run_queues},
        ("logs:CreateLogStream", f"<{log_group}.Arn>"),
        ("logs:PutLogEvents", f"<{log_group}.Arn>"),
    }
    # The table's items only by the partitions a fire touches: not keys, not nodes
    [items] = [s for s in statements if "dynamodb:GetItem" in as_list(s["Action"])]
    assert items["Condition"] == {
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["SCHEDULE#*", "ENV#*", "IDEM#*", "PKG#*"]}
    }


def test_eventbridge_scheduler_may_only_invoke_the_fire_function_for_this_accounts_group(
    template_json: dict[str, Any], fire_function: tuple[str, dict[str, Any]], scheduler_role_id: str, group_id: str
) -> None:
    role = template_json["Resources"][scheduler_role_id]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Action"] == "sts:AssumeRole" and trust["Principal"] == {"Service": SCHEDULER}
    assert trust["Condition"] == {
        "StringEquals": {
            "aws:SourceAccount": {"Ref": "AWS::AccountId"},
            "aws:SourceArn": {"Fn::GetAtt": [group_id, "Arn"]},
        }
    }
    statements = role_statements(template_json, scheduler_role_id)
    assert grants(statements) == {("lambda:InvokeFunction", f"<{fire_function[0]}.Arn>")}


def test_the_api_may_manage_the_groups_schedules_and_pass_the_scheduler_role_to_eventbridge_scheduler_only(
    template_json: dict[str, Any], api_function: tuple[str, dict[str, Any]], group_id: str, scheduler_role_id: str
) -> None:
    statements = role_statements(template_json, role_of(api_function[1]))
    scheduler_statements = [s for s in statements if any(a.startswith("scheduler:") for a in as_list(s["Action"]))]
    assert grants(scheduler_statements) == {
        (action, f"arn:<AWS::Partition>:scheduler:<AWS::Region>:<AWS::AccountId>:schedule/<{group_id}>/*")
        for action in MANAGE_SCHEDULE_ACTIONS
    }
    [pass_role] = [s for s in statements if "iam:PassRole" in as_list(s["Action"])]
    assert as_list(pass_role["Action"]) == ["iam:PassRole"]
    assert render(pass_role["Resource"]) == f"<{scheduler_role_id}.Arn>"
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": SCHEDULER}}
    # And no other function may touch schedules or pass roles
    for function_id, function in resources_of_type(template_json, "AWS::Lambda::Function").items():
        if function_id == api_function[0]:
            continue
        actions = {
            a for s in role_statements(template_json, role_of(function["Properties"])) for a in as_list(s["Action"])
        }
        assert not {a for a in actions if a.startswith("scheduler:") or a == "iam:PassRole"}, function_id


def test_the_fire_function_is_watched_like_every_function(
    template_json: dict[str, Any], fire_function: tuple[str, dict[str, Any]]
) -> None:
    watched = {
        json.dumps(alarm["Properties"].get("Dimensions", []))
        for alarm in resources_of_type(template_json, "AWS::CloudWatch::Alarm").values()
        if alarm["Properties"].get("MetricName") == "Errors"
    }
    assert any(fire_function[0] in dimensions for dimensions in watched)
