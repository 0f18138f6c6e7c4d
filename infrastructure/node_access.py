"""On-premises nodes without long-lived AWS keys.

Per environment, a `NodeRole` holding that environment's node policy (`functions.nodes.policy`, the same one the
EC2 fleet's instances hold), which only the credentials function may assume. The function answers
`POST /nodes/credentials`: the authorizer has checked the node key; the function assumes the environment's role
with the same policy again as session policy, for 15 minutes, and returns the credentials. The agent refreshes them
before they expire (docs/onprem.md).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_apigatewayv2 as apigateway
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from functions.nodes.credentials import ROUTE, SERVICE
from functions.nodes.policy import QUEUE_ACTIONS, node_policy_document, values_arn
from infrastructure.environment_queues import EnvironmentQueues
from infrastructure.feed_bucket import FeedBucket
from infrastructure.job_values import PARAMETERS_ARN
from infrastructure.lambda_function import RunlyFunction
from infrastructure.nag import (
    NODE_QUEUE_ACTIONS_REASON,
    acknowledge_scoped_wildcard,
    acknowledge_wildcard_actions,
    acknowledge_wildcard_arn,
)
from infrastructure.run_store import RunStore
from runly_core.records import environment_runs_prefix
from runly_core.resources import PACKAGES_PREFIX

CREDENTIALS_HANDLER = "functions.nodes.credentials.lambda_handler"
# Read by functions.nodes.credentials.CredentialsSettings.
TABLE_ARN = "RUNLY_TABLE_ARN"
FEED_BUCKET_ARN = "RUNLY_FEED_BUCKET_ARN"
NODE_ROLES = "RUNLY_NODE_ROLES"  # JSON object: environment name -> {role_arn, queue_arn}
# IAM's least MaxSessionDuration for a role; the credentials function asks STS for less (CREDENTIALS_SECONDS).
ROLE_MAX_SESSION_SECONDS = 3600


class OnPremisesAccess(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code: lambda_.Code,
        store: RunStore,
        feed: FeedBucket,
        queues: EnvironmentQueues,
        http_api: apigateway.HttpApi | None,
        parameters_arn: str,
        authorizer: apigateway.IHttpRouteAuthorizer | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.credentials = RunlyFunction(
            self,
            "Credentials",
            handler=CREDENTIALS_HANDLER,
            code=code,
            description="runly: short-lived AWS credentials for on-premises nodes (POST /nodes/credentials)",
            environment={
                TABLE_ARN: store.table.table_arn,
                FEED_BUCKET_ARN: feed.bucket.bucket_arn,
                PARAMETERS_ARN: parameters_arn,
                "POWERTOOLS_SERVICE_NAME": SERVICE,
                "POWERTOOLS_LOG_LEVEL": "INFO",
            },
        )

        feed_resource: cdk.CfnResource = feed.bucket.node.default_child  # type: ignore[assignment]
        self.node_roles: dict[str, iam.Role] = {}
        for environment, queue in queues.queues.items():
            role = iam.Role(
                self,
                f"NodeRole-{environment}",
                assumed_by=iam.ArnPrincipal(self.credentials.role.role_arn),
                description=f"runly on-premises nodes of environment {environment}, through POST /nodes/credentials",
                max_session_duration=cdk.Duration.seconds(ROLE_MAX_SESSION_SECONDS),
                inline_policies={
                    "node": iam.PolicyDocument.from_json(
                        node_policy_document(
                            environment=environment,
                            queue_arn=queue.queue_arn,
                            feed_bucket_arn=feed.bucket.bucket_arn,
                            table_arn=store.table.table_arn,
                            parameters_arn=parameters_arn,
                        )
                    )
                },
            )
            acknowledge_wildcard_actions(role, actions=QUEUE_ACTIONS, reason=NODE_QUEUE_ACTIONS_REASON)
            acknowledge_wildcard_arn(
                role,
                arn=values_arn(parameters_arn, environment),
                reason="A node reads the variables and secrets its runs' jobs declare (names known at run time); "
                "reads are confined to its environment's values path.",
            )
            acknowledge_scoped_wildcard(
                role,
                resource=feed_resource,
                suffix=f"/{PACKAGES_PREFIX}*",
                reason="A node downloads whichever package version a run names; reads are confined to the "
                "packages/ prefix of the feed bucket.",
            )
            acknowledge_scoped_wildcard(
                role,
                resource=feed_resource,
                suffix=f"/{environment_runs_prefix(environment)}*",
                reason="A node uploads the log chunks of the runs it executes (runs/<environment>/<run>/logs/<attempt>/"
                "<seq>.log, keys known at run time) and its outputs; confined to its environment's runs/ prefix.",
            )
            self.node_roles[environment] = role

        self.credentials.add_to_policy(
            actions=["sts:AssumeRole"], resources=[role.role_arn for role in self.node_roles.values()]
        )
        self.credentials.function.add_environment(
            NODE_ROLES,
            stack.to_json_string(
                {
                    environment: {"role_arn": role.role_arn, "queue_arn": queues.queues[environment].queue_arn}
                    for environment, role in self.node_roles.items()
                }
            ),
        )

        self.route: apigateway.HttpRoute | None = None
        if http_api is not None:
            self.route = apigateway.HttpRoute(
                self,
                "Route",
                http_api=http_api,
                route_key=apigateway.HttpRouteKey.with_(ROUTE, apigateway.HttpMethod.POST),
                integration=integrations.HttpLambdaIntegration(
                    "Credentials",
                    self.credentials.function,
                    payload_format_version=apigateway.PayloadFormatVersion.VERSION_2_0,
                ),
                authorizer=authorizer,  # None: the API's default authorizer, if it has one
            )
            if authorizer is None and http_api.default_authorizer is None:
                cdk.Validations.of(self.route).acknowledge(
                    cdk.Acknowledgment(
                        id="AwsSolutions-APIG4",
                        reason="The API's Lambda authorizer is being added to the HttpApi; until this route gets "
                        "it, the function refuses every request (no authorizer context: 401), so nothing is issued.",
                    )
                )
