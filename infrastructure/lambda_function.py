"""One runly Lambda function with its own role and log group: what every function construct builds.

Each function gets a role of its own with nothing but the right to write to its own log group (instead of
AWSLambdaBasicExecutionRole, which allows every log group); the constructs grant it exactly the data access
it uses. The code is the shared asset (`lambda_asset.functions_code`): one bundle, many handlers.
"""

from __future__ import annotations

from collections.abc import Mapping

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from runly_core.resources import FUNCTIONS_MEMORY_MB, FUNCTIONS_TIMEOUT_SECONDS

RUNTIME = lambda_.Runtime.PYTHON_3_11
LOG_RETENTION = logs.RetentionDays.ONE_MONTH

RUNTIME_REASON = (
    "Python 3.11 is the project's runtime (requires-python, dependency wheels bundled for cp311); "
    "moving to a newer runtime is a deliberate, tested upgrade."
)


class RunlyFunction(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        handler: str,
        code: lambda_.Code,
        description: str,
        environment: Mapping[str, str],
        timeout_seconds: int = FUNCTIONS_TIMEOUT_SECONDS,
        memory_mb: int = FUNCTIONS_MEMORY_MB,
        tracing: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"), description=description
        )
        self.log_group = logs.LogGroup(self, "Logs", retention=LOG_RETENTION)
        self.log_group.grant_write(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            architecture=lambda_.Architecture.X86_64,  # the platform the dependencies are bundled for
            handler=handler,
            code=code,
            memory_size=memory_mb,
            timeout=cdk.Duration.seconds(timeout_seconds),
            role=self.role,
            log_group=self.log_group,
            environment=dict(environment),
            description=description,
            # Powertools Tracer: X-Ray segments per request (the role then needs xray:Put* on '*').
            tracing=lambda_.Tracing.ACTIVE if tracing else None,
        )
        cdk.Validations.of(self.function).acknowledge(cdk.Acknowledgment(id="AwsSolutions-L1", reason=RUNTIME_REASON))

    def add_to_policy(self, *, actions: list[str], resources: list[str]) -> None:
        self.role.add_to_principal_policy(iam.PolicyStatement(actions=actions, resources=resources))
