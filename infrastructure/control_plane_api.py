"""The control-plane API: one Lambda function behind an HTTP API (API Gateway v2), guarded by a Lambda authorizer.

Every route but the open ones (runly_core.resources.OPEN_ROUTES: the OpenAPI document, Swagger UI, the dashboard) runs
the
authorizer first: a REQUEST authorizer with simple responses whose identity source is the Authorization header
(so API Gateway answers 401 itself when it is missing). API Gateway caches its answers per Authorization header
for runly_core.resources.AUTHORIZER_RESULT_TTL_SECONDS, which bounds how long a revoked key keeps working.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import aws_cdk as cdk
import jsii
from aws_cdk import aws_apigateway as apigateway_v1
from aws_cdk import aws_apigatewayv2 as apigateway
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infrastructure.lambda_function import LOG_RETENTION, RunlyFunction
from runly_core.records import key_key
from runly_core.resources import (
    API_FUNCTION_HANDLER,
    AUTHORIZATION_HEADER,
    AUTHORIZER_FUNCTION_HANDLER,
    AUTHORIZER_RESULT_TTL_SECONDS,
    OPEN_ROUTES,
    PARTITION_KEY,
)

# The routes: the function's resolver does the routing, API Gateway only forwards (and authorizes).
ROUTE_PATHS = ("/", "/{proxy+}")
# API Gateway waits at most this long for an authorizer; the authorizer does one GetItem.
AUTHORIZER_TIMEOUT_SECONDS = 10
AUTHORIZER_MEMORY_MB = 256

# One JSON line per request, HTTP API context variables only.
ACCESS_LOG_FORMAT = json.dumps(
    {
        "requestId": "$context.requestId",
        "ip": "$context.identity.sourceIp",
        "requestTime": "$context.requestTime",
        "httpMethod": "$context.httpMethod",
        "path": "$context.path",
        "routeKey": "$context.routeKey",
        "status": "$context.status",
        "protocol": "$context.protocol",
        "responseLength": "$context.responseLength",
        "responseLatency": "$context.responseLatency",
        "integrationLatency": "$context.integrationLatency",
        "integrationError": "$context.integrationErrorMessage",
    }
)


@jsii.implements(apigateway.IAccessLogSettings)
class _AccessLogSettings:
    def __init__(self, log_group: logs.ILogGroup) -> None:
        self._destination = apigateway.LogGroupLogDestination(log_group)

    @property
    def destination(self) -> apigateway.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigateway_v1.AccessLogFormat:
        return apigateway_v1.AccessLogFormat.custom(ACCESS_LOG_FORMAT)


class ControlPlaneApi(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        api_name: str,
        code: lambda_.Code,
        environment: Mapping[str, str],
        authorizer_environment: Mapping[str, str],
        throttle_rate_limit: float,
        throttle_burst_limit: int,
    ) -> None:
        super().__init__(scope, construct_id)

        # Each function has its own role; the stack grants the API exactly the data access it needs, the
        # authorizer the right to read API key items and nothing else (see allow_authorizer_to_read_keys).
        api = RunlyFunction(
            self, "Api", handler=API_FUNCTION_HANDLER, code=code, environment=environment,
            description=f"{api_name}: the control-plane API function", tracing=True,
        )  # fmt: skip
        self.role, self.function = api.role, api.function
        cdk.Validations.of(self.role).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="Active tracing: xray:PutTraceSegments and xray:PutTelemetryRecords support no resource-level "
                "permissions, so they can only be granted on '*' (tests/infrastructure check it is only those).",
            )
        )
        authorizer = RunlyFunction(
            self, "Authorizer", handler=AUTHORIZER_FUNCTION_HANDLER, code=code, environment=authorizer_environment,
            description=f"{api_name}: the API key authorizer", timeout_seconds=AUTHORIZER_TIMEOUT_SECONDS,
            memory_mb=AUTHORIZER_MEMORY_MB,
        )  # fmt: skip
        self.authorizer_role, self.authorizer_function = authorizer.role, authorizer.function
        self.authorizer = authorizers.HttpLambdaAuthorizer(
            "ApiKeys",
            self.authorizer_function,
            authorizer_name=f"{api_name}-keys",
            response_types=[authorizers.HttpLambdaResponseType.SIMPLE],
            identity_source=[f"$request.header.{AUTHORIZATION_HEADER}"],
            # Cached per Authorization header (the identity source): a revoked key works at most this long more.
            results_cache_ttl=cdk.Duration.seconds(AUTHORIZER_RESULT_TTL_SECONDS),
        )

        # The authorizer is the API's default: a route added later (by any construct) is protected unless it
        # says otherwise, as the open routes below do.
        self.http_api = apigateway.HttpApi(
            self,
            "HttpApi",
            api_name=api_name,
            description="runly control plane",
            create_default_stage=False,
            default_authorizer=self.authorizer,
        )
        integration = integrations.HttpLambdaIntegration(
            "Function", self.function, payload_format_version=apigateway.PayloadFormatVersion.VERSION_2_0
        )
        for path in ROUTE_PATHS:
            self.http_api.add_routes(path=path, methods=[apigateway.HttpMethod.ANY], integration=integration)
        # More specific than /{proxy+}, so API Gateway picks them (without the authorizer) for these method+paths.
        for method, path in OPEN_ROUTES:
            for route in self.http_api.add_routes(
                path=path,
                methods=[apigateway.HttpMethod(method)],
                integration=integration,
                authorizer=apigateway.HttpNoneAuthorizer(),
            ):
                cdk.Validations.of(route).acknowledge(
                    cdk.Acknowledgment(
                        id="AwsSolutions-APIG4",
                        reason="Open on purpose (runly_core.resources.OPEN_ROUTES): the OpenAPI document, Swagger UI "
                        "and "
                        "the dashboard's static page and files expose no data (the page calls the API with its "
                        "user's key); every other route runs the API key authorizer.",
                    )
                )

        self.access_logs = logs.LogGroup(self, "AccessLogs", retention=LOG_RETENTION)
        self.stage = apigateway.HttpStage(
            self,
            "DefaultStage",
            http_api=self.http_api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigateway.ThrottleSettings(rate_limit=throttle_rate_limit, burst_limit=throttle_burst_limit),
            access_log_settings=_AccessLogSettings(self.access_logs),
        )

    def allow_authorizer_to_read_keys(self, table: dynamodb.ITable) -> None:
        """dynamodb:GetItem on the table's API key items (partition keys KEY#...) only: not its indexes, not
        runs, nodes or packages."""
        self.authorizer_role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["dynamodb:GetItem"],
                resources=[table.table_arn],
                conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{key_key('')[PARTITION_KEY]}*"]}},
            )
        )

    @property
    def url(self) -> str:
        url = self.stage.url
        assert url is not None
        return url
