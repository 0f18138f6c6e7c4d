"""The control-plane API: one Lambda function behind an HTTP API (API Gateway v2)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import aws_cdk as cdk
import jsii
from aws_cdk import aws_apigateway as apigateway_v1
from aws_cdk import aws_apigatewayv2 as apigateway
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from runly.resources import API_FUNCTION_HANDLER, FUNCTIONS_MEMORY_MB, FUNCTIONS_TIMEOUT_SECONDS

RUNTIME = lambda_.Runtime.PYTHON_3_11
LOG_RETENTION = logs.RetentionDays.ONE_MONTH
# The routes: the function's resolver does the routing, API Gateway only forwards.
ROUTE_PATHS = ("/", "/{proxy+}")

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
        throttle_rate_limit: float,
        throttle_burst_limit: int,
    ) -> None:
        super().__init__(scope, construct_id)

        # The function's own role; the stack grants it exactly the data access it needs.
        self.role = iam.Role(
            self,
            "FunctionRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{api_name}: the control-plane API function",
        )
        function_logs = logs.LogGroup(self, "FunctionLogs", retention=LOG_RETENTION)
        # Instead of AWSLambdaBasicExecutionRole (logs on every log group): write to this one only.
        function_logs.grant_write(self.role)

        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            architecture=lambda_.Architecture.X86_64,  # the platform the dependencies are bundled for
            handler=API_FUNCTION_HANDLER,
            code=code,
            memory_size=FUNCTIONS_MEMORY_MB,
            timeout=cdk.Duration.seconds(FUNCTIONS_TIMEOUT_SECONDS),
            role=self.role,
            log_group=function_logs,
            environment=dict(environment),
            description="runly control-plane API",
        )
        cdk.Validations.of(self.function).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-L1",
                reason="Python 3.11 is the project's runtime (requires-python, dependency wheels bundled for cp311); "
                "moving to a newer runtime is a deliberate, tested upgrade.",
            )
        )

        self.http_api = apigateway.HttpApi(
            self, "HttpApi", api_name=api_name, description="runly control plane", create_default_stage=False
        )
        integration = integrations.HttpLambdaIntegration(
            "Function", self.function, payload_format_version=apigateway.PayloadFormatVersion.VERSION_2_0
        )
        for path in ROUTE_PATHS:
            for route in self.http_api.add_routes(
                path=path, methods=[apigateway.HttpMethod.ANY], integration=integration
            ):
                cdk.Validations.of(route).acknowledge(
                    cdk.Acknowledgment(
                        id="AwsSolutions-APIG4",
                        reason="Authorization (a Lambda authorizer checking runly API keys) comes in a later issue "
                        "of the walking skeleton; until it lands the API is open and must not face untrusted callers.",
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

    @property
    def url(self) -> str:
        url = self.stage.url
        assert url is not None
        return url
