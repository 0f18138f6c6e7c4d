"""The runly control plane of one stage: composes the capabilities and wires them together."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from infrastructure.control_plane_api import ControlPlaneApi
from infrastructure.environment_queues import EnvironmentQueues
from infrastructure.feed_bucket import FeedBucket
from infrastructure.function_environment import api_function_environment
from infrastructure.lambda_asset import functions_code
from infrastructure.run_store import RunStore
from infrastructure.settings import StageSettings


class RunlyStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: StageSettings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, env=settings.cdk_environment(), **kwargs)
        # Tokens when the stack is environment-agnostic; the names resolve at deploy time.
        names = settings.resource_names(account=self.account, region=self.region)

        store = RunStore(self, "RunStore", table_name=names.table)
        feed = FeedBucket(self, "Feed", bucket_name=names.feed_bucket)
        queues = EnvironmentQueues(self, "Queues", names=names)
        api = ControlPlaneApi(
            self,
            "Api",
            api_name=f"{names.prefix}-api",
            code=functions_code(install_dependencies=settings.bundle_dependencies),
            environment=api_function_environment(
                table_name=store.table.table_name,
                feed_bucket=feed.bucket.bucket_name,
                queue_urls_json=self.to_json_string(queues.queue_urls()),
            ),
            throttle_rate_limit=settings.api_throttle_rate_limit,
            throttle_burst_limit=settings.api_throttle_burst_limit,
        )

        store.grant_read_write(api.function)
        feed.grant_package_read_write(api.function)
        queues.grant_send(api.function)

        cdk.CfnOutput(self, "ApiUrl", value=api.url, description="Base URL of the runly API")
        cdk.CfnOutput(self, "TableName", value=store.table.table_name)
        cdk.CfnOutput(self, "FeedBucketName", value=feed.bucket.bucket_name)
        for environment, queue in queues.queues.items():
            cdk.CfnOutput(
                self,
                queue_url_output_id(environment),
                value=queue.queue_url,
                description=f"Run queue of environment {environment}",
            )


def queue_url_output_id(environment: str) -> str:
    """`production-eu` -> `QueueUrlProductionEu` (output ids are alphanumeric)."""
    return "QueueUrl" + "".join(part.capitalize() for part in environment.split("-"))
