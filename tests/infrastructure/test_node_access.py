"""On-premises access: a NodeRole per environment, assumable by the credentials function only, and the
POST /nodes/credentials route to that function behind the API key authorizer."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest

from functions.nodes.credentials import ROUTE
from functions.nodes.policy import NODE_ATTRIBUTES, QUEUE_ACTIONS, RUN_ATTRIBUTES, WRITE_RETURN_VALUE
from infrastructure.node_access import CREDENTIALS_HANDLER, ROLE_MAX_SESSION_SECONDS
from infrastructure.settings import StageSettings
from infrastructure.stack import environment_output_id
from tests.infrastructure.cfn import as_list, render, resources_of_type
from tests.infrastructure.iam import (
    assert_no_wildcard_action,
    feed_bucket_id,
    function_with_handler,
    grants,
    logical_id,
    role_of,
    role_statements,
)
from tests.infrastructure.synth import TEST_ENVIRONMENTS

# No PutItem: a put replaces every attribute of an item, those only the API writes included.
NODE_ITEM_ACTIONS = {
    "dynamodb:GetItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:ConditionCheckItem",
}
NODE_QUEUE_ACTIONS = {
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:SendMessage",
}
# Every action IAM knows for SQS (Service Authorization Reference; the batch calls are authorized as their single
# forms): the node policy's wildcard actions must match exactly NODE_QUEUE_ACTIONS among them.
SQS_ACTIONS = {
    *NODE_QUEUE_ACTIONS,
    *(
        f"sqs:{name}"
        for name in (
            "AddPermission", "CancelMessageMoveTask", "CreateQueue", "DeleteQueue", "GetQueueAttributes",
            "GetQueueUrl", "ListDeadLetterSourceQueues", "ListMessageMoveTasks", "ListQueueTags", "ListQueues",
            "PurgeQueue", "RemovePermission", "SetQueueAttributes", "StartMessageMoveTask", "TagQueue", "UntagQueue",
        )
    ),
}  # fmt: skip


def test_the_queue_wildcards_match_exactly_the_nodes_queue_actions() -> None:
    matched = {action for action in SQS_ACTIONS if any(fnmatch.fnmatchcase(action, p) for p in QUEUE_ACTIONS)}
    assert matched == NODE_QUEUE_ACTIONS


def assert_only_the_queue_wildcards(statements: list[dict[str, Any]]) -> None:
    """No wildcard action but the queue's two (each matching exactly the SQS actions above)."""
    assert_no_wildcard_action(
        [{**s, "Action": [a for a in as_list(s["Action"]) if a not in QUEUE_ACTIONS]} for s in statements]
    )


def expand_queue_actions(pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return {
        (action, resource)
        for pattern, resource in pairs
        for action in (
            {a for a in NODE_QUEUE_ACTIONS if fnmatch.fnmatchcase(a, pattern)}
            if pattern in QUEUE_ACTIONS
            else {pattern}
        )
    }


@pytest.fixture(scope="module")
def credentials_function(template_json: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return function_with_handler(template_json, CREDENTIALS_HANDLER)


@pytest.fixture(scope="module")
def node_roles(template_json: dict[str, Any]) -> dict[str, str]:
    """Environment -> logical id of its NodeRole, read from the stack's outputs."""
    outputs = template_json["Outputs"]
    return {
        environment: outputs[environment_output_id("NodeRoleArn", environment)]["Value"]["Fn::GetAtt"][0]
        for environment in TEST_ENVIRONMENTS
    }


def expected_node_grants(
    template_json: dict[str, Any], queue_id: str, environment: str, values_path: str
) -> set[tuple[str, str]]:
    """What a node of one environment may do, wherever its credentials come from (EC2 role or NodeRole); which
    items, and which of their attributes, the conditions say (assert_items_limited_to_runs_and_nodes, and the
    case table of test_node_policy_cases.py)."""
    table_id = logical_id(template_json, "AWS::DynamoDB::Table")
    feed = feed_bucket_id(template_json)
    values = f"arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:parameter{values_path}/{environment}/*"
    # One statement for the queue, the values and the runs (functions.nodes.policy): the pairs across services
    # are void; the packages apart, read only.
    actions = (*NODE_QUEUE_ACTIONS, "ssm:GetParameters", "s3:GetObject", "s3:PutObject")
    resources = (f"<{queue_id}.Arn>", values, f"<{feed}.Arn>/runs/{environment}/*")
    return {
        *{(a, r) for a in actions for r in resources},
        ("s3:GetObject", f"<{feed}.Arn>/packages/*"),
        *{(action, f"<{table_id}.Arn>") for action in NODE_ITEM_ACTIONS},
    }


def assert_items_limited_to_runs_and_nodes(statements: list[dict[str, Any]], environment: str) -> None:
    """Every table statement is bounded to the environment's partitions; writes name only the node's attributes."""
    runs, nodes, both = f"ENV#{environment}#RUN#*", f"ENV#{environment}#NODE#*", f"ENV#{environment}#*"
    table = [s for s in statements if any(str(a).startswith("dynamodb:") for a in as_list(s["Action"]))]
    by_sid = {s["Sid"]: s for s in table}
    assert set(by_sid) == {"ReadItems", "WriteRuns", "WriteNodes"}
    assert by_sid["ReadItems"]["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [both]}}
    for sid, partitions, attributes in (("WriteRuns", runs, RUN_ATTRIBUTES), ("WriteNodes", nodes, NODE_ATTRIBUTES)):
        assert by_sid[sid]["Condition"] == {
            "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [partitions], "dynamodb:Attributes": list(attributes)},
            "StringEqualsIfExists": {"dynamodb:ReturnValues": WRITE_RETURN_VALUE},
        }


def test_each_node_role_may_use_only_its_environment_queue_the_feed_prefixes_and_run_and_node_items(
    template_json: dict[str, Any], node_roles: dict[str, str], stage_settings: StageSettings
) -> None:
    names = stage_settings.resource_names(account="any", region="any")
    assert len(set(node_roles.values())) == len(TEST_ENVIRONMENTS)
    for environment, role_id in node_roles.items():
        statements = role_statements(template_json, role_id)
        assert_only_the_queue_wildcards(statements)
        queue_id = logical_id(template_json, "AWS::SQS::Queue", QueueName=names.queues(environment).queue)
        assert expand_queue_actions(grants(statements)) == expected_node_grants(
            template_json, queue_id, environment, names.values_path
        )
        assert_items_limited_to_runs_and_nodes(statements, environment)


def test_only_the_credentials_function_may_assume_a_node_role_for_an_hour_at_most_iams_least(
    template_json: dict[str, Any], node_roles: dict[str, str], credentials_function: tuple[str, dict[str, Any]]
) -> None:
    function_role = role_of(credentials_function[1])
    for role_id in node_roles.values():
        role = template_json["Resources"][role_id]["Properties"]
        assert role["AssumeRolePolicyDocument"]["Statement"] == [
            {
                "Action": "sts:AssumeRole",
                "Effect": "Allow",
                "Principal": {"AWS": {"Fn::GetAtt": [function_role, "Arn"]}},
            }
        ]
        # IAM's least; the credentials function asks for 15 minutes (tests/integration/test_node_credentials.py).
        assert role["MaxSessionDuration"] == ROLE_MAX_SESSION_SECONDS == 3600


def test_the_credentials_function_may_assume_the_node_roles_and_nothing_else(
    template_json: dict[str, Any], node_roles: dict[str, str], credentials_function: tuple[str, dict[str, Any]]
) -> None:
    _, function = credentials_function
    statements = role_statements(template_json, role_of(function))
    assert_no_wildcard_action(statements)
    log_group = function["LoggingConfig"]["LogGroup"]["Ref"]
    assert grants(statements) == {
        *{("sts:AssumeRole", f"<{role_id}.Arn>") for role_id in node_roles.values()},
        ("logs:CreateLogStream", f"<{log_group}.Arn>"),
        ("logs:PutLogEvents", f"<{log_group}.Arn>"),
    }


def test_the_credentials_function_gets_exactly_the_settings_it_reads(
    template_json: dict[str, Any],
    node_roles: dict[str, str],
    credentials_function: tuple[str, dict[str, Any]],
    stage_settings: StageSettings,
) -> None:
    from functions.nodes.credentials import CredentialsSettings

    prefix = str(CredentialsSettings.model_config.get("env_prefix", ""))
    read = {f"{prefix}{field}".upper() for field in CredentialsSettings.model_fields}
    variables = credentials_function[1]["Environment"]["Variables"]
    assert {name for name in variables if name.startswith(prefix)} == read

    # The roles map names each environment's own role and queue: a node key of one never gets another's.
    names = stage_settings.resource_names(account="any", region="any")
    roles = json.loads(render(variables["RUNLY_NODE_ROLES"]))
    queues = {
        e: logical_id(template_json, "AWS::SQS::Queue", QueueName=names.queues(e).queue) for e in TEST_ENVIRONMENTS
    }
    assert roles == {
        environment: {"role_arn": f"<{node_roles[environment]}.Arn>", "queue_arn": f"<{queues[environment]}.Arn>"}
        for environment in TEST_ENVIRONMENTS
    }
    assert variables["RUNLY_TABLE_ARN"] == {"Fn::GetAtt": [logical_id(template_json, "AWS::DynamoDB::Table"), "Arn"]}
    assert variables["RUNLY_FEED_BUCKET_ARN"] == {"Fn::GetAtt": [feed_bucket_id(template_json), "Arn"]}


def test_post_nodes_credentials_reaches_the_credentials_function_through_the_authorizer(
    template_json: dict[str, Any], credentials_function: tuple[str, dict[str, Any]]
) -> None:
    [route] = [
        r["Properties"]
        for r in resources_of_type(template_json, "AWS::ApiGatewayV2::Route").values()
        if r["Properties"]["RouteKey"] == f"POST {ROUTE}"
    ]
    [authorizer_id] = resources_of_type(template_json, "AWS::ApiGatewayV2::Authorizer")
    assert route["AuthorizationType"] == "CUSTOM"
    assert route["AuthorizerId"] == {"Ref": authorizer_id}
    integration_id = render(route["Target"]).removeprefix("integrations/").strip("<>")
    integration = template_json["Resources"][integration_id]["Properties"]
    assert integration["IntegrationUri"] == {"Fn::GetAtt": [credentials_function[0], "Arn"]}
    assert integration["PayloadFormatVersion"] == "2.0"
