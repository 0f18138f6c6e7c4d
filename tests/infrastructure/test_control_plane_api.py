from __future__ import annotations

import json
from typing import Any

import pytest

from functions.nodes.credentials import ROUTE as NODE_CREDENTIALS_ROUTE
from infrastructure import function_environment
from infrastructure.job_values import API_ACTIONS as JOB_VALUES_API_ACTIONS
from infrastructure.settings import StageSettings
from infrastructure.stack import queue_url_output_id
from runly_core import resources
from tests.infrastructure.cfn import as_list, render, resources_of_type
from tests.infrastructure.synth import TEST_ENVIRONMENTS

XRAY_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
NODE_CREDENTIALS_ROUTE_KEY = f"POST {NODE_CREDENTIALS_ROUTE}"


def _function_with_handler(template_json: dict[str, Any], handler: str) -> tuple[str, dict[str, Any]]:
    [(logical_id, function)] = [
        (logical_id, function)
        for logical_id, function in resources_of_type(template_json, "AWS::Lambda::Function").items()
        if function["Properties"].get("Handler") == handler
    ]
    return logical_id, function["Properties"]


def _role_statements(template_json: dict[str, Any], function: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every statement of every policy attached to the function's role."""
    role_id = function[1]["Role"]["Fn::GetAtt"][0]
    role = template_json["Resources"][role_id]["Properties"]
    assert "ManagedPolicyArns" not in role, "the function's role must not carry managed policies"
    statements = [s for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    for policy in resources_of_type(template_json, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    assert statements
    return statements


@pytest.fixture(scope="module")
def function(template_json: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return _function_with_handler(template_json, resources.API_FUNCTION_HANDLER)


@pytest.fixture(scope="module")
def role_statements(template_json: dict[str, Any], function: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return _role_statements(template_json, function)


@pytest.fixture(scope="module")
def authorizer_function(template_json: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return _function_with_handler(template_json, resources.AUTHORIZER_FUNCTION_HANDLER)


def _statements_for(statements: list[dict[str, Any]], service: str) -> list[dict[str, Any]]:
    return [s for s in statements if any(action.startswith(f"{service}:") for action in as_list(s["Action"]))]


def _actions(statements: list[dict[str, Any]]) -> set[str]:
    return {action for statement in statements for action in as_list(statement["Action"])}


def _resources(statements: list[dict[str, Any]]) -> set[str]:
    return {render(resource) for statement in statements for resource in as_list(statement["Resource"])}


def _logical_id(template_json: dict[str, Any], resource_type: str, **properties: Any) -> str:
    [logical_id] = [
        logical_id
        for logical_id, resource in resources_of_type(template_json, resource_type).items()
        if all(resource["Properties"].get(key) == value for key, value in properties.items())
    ]
    return logical_id


def _feed_bucket_id(template_json: dict[str, Any]) -> str:
    # The feed is the bucket runly names; the other one holds its access logs.
    [logical_id] = [
        logical_id
        for logical_id, bucket in resources_of_type(template_json, "AWS::S3::Bucket").items()
        if "BucketName" in bucket["Properties"]
    ]
    return logical_id


# --- the function -------------------------------------------------------------------------------------------


def test_function_runs_the_api_handler_on_python_3_11(function: tuple[str, dict[str, Any]]) -> None:
    _, properties = function
    assert properties["Handler"] == resources.API_FUNCTION_HANDLER
    assert properties["Runtime"] == "python3.11"
    assert properties["MemorySize"] == resources.FUNCTIONS_MEMORY_MB
    assert properties["Timeout"] == resources.FUNCTIONS_TIMEOUT_SECONDS


def test_function_environment_has_exactly_the_declared_variables(function: tuple[str, dict[str, Any]]) -> None:
    variables = function[1]["Environment"]["Variables"]
    assert set(variables) == function_environment.API_FUNCTION_VARIABLES
    for name, value in function_environment.POWERTOOLS_ENVIRONMENT.items():
        assert variables[name] == value


def test_function_is_given_exactly_the_settings_the_functions_read(function: tuple[str, dict[str, Any]]) -> None:
    # The functions read RUNLY_* through their settings model: a renamed or new field must fail here, not in Lambda.
    from functions.settings import ApiSettings

    prefix = ApiSettings.model_config.get("env_prefix", "")
    read_by_functions = {f"{prefix}{field}".upper() for field in ApiSettings.model_fields}
    assert read_by_functions == function_environment.SETTINGS_VARIABLES
    given = {name for name in function[1]["Environment"]["Variables"] if name.startswith(prefix.upper())}
    assert given == read_by_functions


def test_function_is_told_the_table_bucket_and_every_environment_queue(
    template_json: dict[str, Any], function: tuple[str, dict[str, Any]], stage_settings: StageSettings
) -> None:
    variables = function[1]["Environment"]["Variables"]
    names = stage_settings.resource_names(account="any", region="any")
    assert variables[function_environment.TABLE_NAME] == {"Ref": _logical_id(template_json, "AWS::DynamoDB::Table")}
    assert variables[function_environment.FEED_BUCKET] == {"Ref": _feed_bucket_id(template_json)}

    # When the JSON the function receives is rendered, then each environment maps to the Ref (URL) of its queue.
    queue_urls = json.loads(render(variables[function_environment.QUEUE_URLS]))
    queue_ids = {
        environment: _logical_id(template_json, "AWS::SQS::Queue", QueueName=names.queues(environment).queue)
        for environment in TEST_ENVIRONMENTS
    }
    assert queue_urls == {environment: f"<{queue_id}>" for environment, queue_id in queue_ids.items()}


# --- least privilege ----------------------------------------------------------------------------------------


def test_function_role_has_no_wildcard_action_nor_resource_but_for_tracing_and_describing_values(
    role_statements: list[dict[str, Any]],
) -> None:
    for statement in role_statements:
        assert statement["Effect"] == "Allow"
        assert not [action for action in as_list(statement["Action"]) if "*" in action], statement
        if "*" in as_list(statement["Resource"]):
            # X-Ray and ssm:DescribeParameters have no resource-level permissions: "*" is the only way, and only for
            # X-Ray's two write actions and the secrets' metadata (functions/dal/values.py filters it by path).
            assert set(as_list(statement["Action"])) in (XRAY_ACTIONS, {"ssm:DescribeParameters"}), statement
        assert "NotAction" not in statement and "NotResource" not in statement


def test_function_traces_to_xray(function: tuple[str, dict[str, Any]], role_statements: list[dict[str, Any]]) -> None:
    assert function[1]["TracingConfig"] == {"Mode": "Active"}
    assert _actions(_statements_for(role_statements, "xray")) == XRAY_ACTIONS


def test_function_reads_and_writes_items_of_the_table_and_its_indexes_only(
    template_json: dict[str, Any], role_statements: list[dict[str, Any]]
) -> None:
    statements = _statements_for(role_statements, "dynamodb")
    table_id = _logical_id(template_json, "AWS::DynamoDB::Table")
    assert _resources(statements) == {f"<{table_id}.Arn>", f"<{table_id}.Arn>/index/*"}
    assert {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"} <= _actions(statements)
    assert not {"dynamodb:CreateTable", "dynamodb:DeleteTable", "dynamodb:UpdateTable"} & _actions(statements)


def test_function_gets_and_puts_objects_under_packages_and_only_gets_runs_objects(
    template_json: dict[str, Any], role_statements: list[dict[str, Any]]
) -> None:
    statements = _statements_for(role_statements, "s3")
    feed_id = _feed_bucket_id(template_json)
    object_statements = [s for s in statements if "s3:ListBucket" not in as_list(s["Action"])]
    packages = [s for s in object_statements if _resources([s]) == {f"<{feed_id}.Arn>/{resources.PACKAGES_PREFIX}*"}]
    runs = [s for s in object_statements if _resources([s]) == {f"<{feed_id}.Arn>/{resources.RUNS_PREFIX}*"}]
    assert len(packages) + len(runs) == len(object_statements)
    assert _actions(packages) == {"s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"}
    # Runs' objects (logs, outputs stored out of their items): read only, for GET /runs/{id} and the logs routes
    assert _actions(runs) == {"s3:GetObject"}

    # Listing (so a missing package is a 404, as functions/dal/feed.py expects) is on the feed bucket alone.
    list_statements = [s for s in statements if "s3:ListBucket" in as_list(s["Action"])]
    assert _actions(list_statements) == {"s3:ListBucket"}
    assert _resources(list_statements) == {f"<{feed_id}.Arn>"}


def test_function_sends_to_every_run_queue_and_to_no_dead_letter_queue(
    template_json: dict[str, Any], role_statements: list[dict[str, Any]], stage_settings: StageSettings
) -> None:
    names = stage_settings.resource_names(account="any", region="any")
    statements = _statements_for(role_statements, "sqs")
    run_queues = {
        _logical_id(template_json, "AWS::SQS::Queue", QueueName=names.queues(environment).queue)
        for environment in TEST_ENVIRONMENTS
    }
    assert _actions(statements) == {"sqs:SendMessage"}
    assert _resources(statements) == {f"<{queue_id}.Arn>" for queue_id in run_queues}


def test_function_writes_logs_to_its_own_log_group_only(
    function: tuple[str, dict[str, Any]], role_statements: list[dict[str, Any]]
) -> None:
    log_group_id = function[1]["LoggingConfig"]["LogGroup"]["Ref"]
    statements = _statements_for(role_statements, "logs")
    assert _actions(statements) == {"logs:CreateLogStream", "logs:PutLogEvents"}
    assert _resources(statements) == {f"<{log_group_id}.Arn>"}


# --- the HTTP API -------------------------------------------------------------------------------------------


def test_api_routes_root_every_path_and_the_open_routes_to_the_function_with_payload_2(
    template_json: dict[str, Any], function: tuple[str, dict[str, Any]]
) -> None:
    integrations = resources_of_type(template_json, "AWS::ApiGatewayV2::Integration")
    # POST /nodes/credentials has a function of its own (tests/infrastructure/test_node_access.py).
    routes = [
        route
        for route in resources_of_type(template_json, "AWS::ApiGatewayV2::Route").values()
        if route["Properties"]["RouteKey"] != NODE_CREDENTIALS_ROUTE_KEY
    ]
    open_route_keys = {f"{method} {path}" for method, path in resources.OPEN_ROUTES}
    assert {route["Properties"]["RouteKey"] for route in routes} == {"ANY /", "ANY /{proxy+}", *open_route_keys}
    for route in routes:
        integration_id = render(route["Properties"]["Target"]).removeprefix("integrations/").strip("<>")
        integration = integrations[integration_id]["Properties"]
        assert integration["IntegrationType"] == "AWS_PROXY"
        assert integration["IntegrationUri"] == {"Fn::GetAtt": [function[0], "Arn"]}
        assert integration["PayloadFormatVersion"] == "2.0"


def test_every_route_but_the_open_ones_runs_the_authorizer(template_json: dict[str, Any]) -> None:
    [authorizer_id] = resources_of_type(template_json, "AWS::ApiGatewayV2::Authorizer")
    open_route_keys = {f"{method} {path}" for method, path in resources.OPEN_ROUTES}
    for route in resources_of_type(template_json, "AWS::ApiGatewayV2::Route").values():
        properties = route["Properties"]
        if properties["RouteKey"] in open_route_keys:
            assert properties.get("AuthorizationType", "NONE") == "NONE" and "AuthorizerId" not in properties
        else:
            assert properties["AuthorizationType"] == "CUSTOM", properties["RouteKey"]
            assert properties["AuthorizerId"] == {"Ref": authorizer_id}


def test_authorizer_is_a_request_authorizer_with_simple_responses_cached_per_authorization_header(
    template_json: dict[str, Any], authorizer_function: tuple[str, dict[str, Any]]
) -> None:
    [authorizer] = resources_of_type(template_json, "AWS::ApiGatewayV2::Authorizer").values()
    properties = authorizer["Properties"]
    assert properties["AuthorizerType"] == "REQUEST"
    assert properties["AuthorizerPayloadFormatVersion"] == "2.0"
    assert properties["EnableSimpleResponses"] is True
    assert properties["IdentitySource"] == [f"$request.header.{resources.AUTHORIZATION_HEADER}"]
    # Cached per identity source, within the bound docs/api.md states for a revoked key (at most 60 s).
    assert properties["AuthorizerResultTtlInSeconds"] == resources.AUTHORIZER_RESULT_TTL_SECONDS
    assert 0 < resources.AUTHORIZER_RESULT_TTL_SECONDS <= 60
    assert f"<{authorizer_function[0]}.Arn>" in render(properties["AuthorizerUri"])


def test_authorizer_function_gets_exactly_the_settings_it_reads(
    authorizer_function: tuple[str, dict[str, Any]],
) -> None:
    from functions.settings import AuthorizerSettings

    prefix = str(AuthorizerSettings.model_config.get("env_prefix", ""))
    read = {f"{prefix}{field}".upper() for field in AuthorizerSettings.model_fields}
    assert read == function_environment.AUTHORIZER_SETTINGS_VARIABLES
    variables = authorizer_function[1]["Environment"]["Variables"]
    assert set(variables) == function_environment.AUTHORIZER_FUNCTION_VARIABLES
    assert authorizer_function[1]["Runtime"] == "python3.11"


def test_authorizer_may_only_get_api_key_items_and_write_its_own_logs(
    template_json: dict[str, Any], authorizer_function: tuple[str, dict[str, Any]]
) -> None:
    statements = _role_statements(template_json, authorizer_function)
    table_id = _logical_id(template_json, "AWS::DynamoDB::Table")
    log_group_id = authorizer_function[1]["LoggingConfig"]["LogGroup"]["Ref"]
    assert _actions(statements) == {"dynamodb:GetItem", "logs:CreateLogStream", "logs:PutLogEvents"}
    [dynamodb_statement] = _statements_for(statements, "dynamodb")
    assert _resources([dynamodb_statement]) == {f"<{table_id}.Arn>"}
    assert dynamodb_statement["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["KEY#*"]}}
    assert _resources(_statements_for(statements, "logs")) == {f"<{log_group_id}.Arn>"}


def test_api_stage_logs_access_and_throttles(template_json: dict[str, Any], stage_settings: StageSettings) -> None:
    [stage] = resources_of_type(template_json, "AWS::ApiGatewayV2::Stage").values()
    properties = stage["Properties"]
    assert properties["StageName"] == "$default"
    assert properties["AutoDeploy"] is True
    log_group_id = properties["AccessLogSettings"]["DestinationArn"]["Fn::GetAtt"][0]
    assert template_json["Resources"][log_group_id]["Type"] == "AWS::Logs::LogGroup"
    assert "$context.requestId" in properties["AccessLogSettings"]["Format"]
    assert properties["DefaultRouteSettings"] == {
        "ThrottlingRateLimit": stage_settings.api_throttle_rate_limit,
        "ThrottlingBurstLimit": stage_settings.api_throttle_burst_limit,
    }


# --- outputs ------------------------------------------------------------------------------------------------


def test_stack_outputs_the_api_url_table_bucket_and_each_queue_url(template_json: dict[str, Any]) -> None:
    outputs = template_json["Outputs"]
    queue_outputs = {queue_url_output_id(environment) for environment in TEST_ENVIRONMENTS}
    assert {"ApiUrl", "TableName", "FeedBucketName", *queue_outputs} <= set(outputs)
    assert render(outputs["ApiUrl"]["Value"]).startswith("https://")
    assert len(queue_outputs) == len(TEST_ENVIRONMENTS)
    for output_id in queue_outputs:
        assert template_json["Resources"][outputs[output_id]["Value"]["Ref"]]["Type"] == "AWS::SQS::Queue"


def test_the_api_manages_values_under_the_deployments_values_path_only(
    role_statements: list[dict[str, Any]], function: tuple[str, dict[str, Any]]
) -> None:
    # Variables and secrets (infrastructure/job_values.py): set, read, list, delete under /runly-test/*; secrets'
    # metadata through DescribeParameters; never GetParameters (the call that decrypts several at once) nor kms.
    ssm = {
        (action, render(resource))
        for statement in role_statements
        for action in as_list(statement["Action"])
        if action.startswith(("ssm:", "kms:"))
        for resource in as_list(statement["Resource"])
    }
    values = "arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:parameter/runly-test/*"
    assert ssm == {
        *((action, values) for action in JOB_VALUES_API_ACTIONS),
        ("ssm:DescribeParameters", "*"),
    }
    assert function[1]["Environment"]["Variables"][function_environment.VALUES_PATH] == "/runly-test"
