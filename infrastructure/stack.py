"""The runly control plane of one stage: composes the capabilities and wires them together."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from infrastructure.control_plane_api import ControlPlaneApi
from infrastructure.environment_queues import EnvironmentQueues
from infrastructure.feed_bucket import FeedBucket
from infrastructure.function_environment import (
    api_function_environment,
    authorizer_function_environment,
    fire_function_environment,
    maintenance_function_environment,
)
from infrastructure.job_values import JobValues
from infrastructure.lambda_asset import functions_code
from infrastructure.maintenance import Maintenance
from infrastructure.node_access import OnPremisesAccess
from infrastructure.node_fleet import NodeFleet
from infrastructure.observability import Observability, dashboard_url
from infrastructure.run_events import RunEvents
from infrastructure.run_store import RunStore
from infrastructure.schedules import Schedules
from infrastructure.settings import StageSettings


class RunlyStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: StageSettings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, env=settings.cdk_environment(), **kwargs)
        # Tokens when the stack is environment-agnostic; the names resolve at deploy time.
        names = settings.resource_names(account=self.account, region=self.region)

        store = RunStore(self, "RunStore", table_name=names.table)
        feed = FeedBucket(self, "Feed", bucket_name=names.feed_bucket)
        queues = EnvironmentQueues(self, "Queues", names=names)
        values = JobValues(self, "JobValues", names=names)
        # One asset for every function: each one is a handler in it.
        code = functions_code(install_dependencies=settings.bundle_dependencies)
        queue_urls_json = self.to_json_string(queues.queue_urls())
        schedules = Schedules(
            self,
            "Schedules",
            names=names,
            code=code,
            environment=fire_function_environment(table_name=store.table.table_name, queue_urls_json=queue_urls_json),
            store=store,
            queues=queues,
        )
        # The API's settings (functions.settings.ApiSettings).
        api_environment = api_function_environment(
            table_name=store.table.table_name,
            feed_bucket=feed.bucket.bucket_name,
            queue_urls_json=queue_urls_json,
            values_path=values.values_path,
            **schedules.api_environment(),
        )
        api = ControlPlaneApi(
            self,
            "Api",
            api_name=f"{names.prefix}-api",
            code=code,
            environment=api_environment,
            authorizer_environment=authorizer_function_environment(table_name=store.table.table_name),
            throttle_rate_limit=settings.api_throttle_rate_limit,
            throttle_burst_limit=settings.api_throttle_burst_limit,
        )

        store.grant_read_write(api.function)
        api.allow_authorizer_to_read_keys(store.table)
        feed.grant_package_read_write(api.function)
        feed.grant_run_objects_read(api.function)
        queues.grant_send(api.function)
        schedules.grant_manage_schedules(api.function)
        values.grant_manage(api.function)

        maintenance = Maintenance(
            self,
            "Maintenance",
            code=code,
            environment=maintenance_function_environment(
                table_name=store.table.table_name, queue_urls_json=queue_urls_json
            ),
            store=store,
            queues=queues,
        )
        run_events = (
            None
            if settings.run_events == "off"
            else RunEvents(self, "RunEvents", names=names, code=code, store=store, mode=settings.run_events)
        )
        on_premises = OnPremisesAccess(
            self,
            "OnPremises",
            code=code,
            store=store,
            feed=feed,
            queues=queues,
            http_api=api.http_api,
            authorizer=api.authorizer,
            parameters_arn=values.parameters_arn,
        )
        if settings.fleet is not None:
            NodeFleet(self, "Fleet", settings=settings.fleet, names=names, store=store, feed=feed, queues=queues)
        observability = Observability(
            self,
            "Observability",
            names=names,
            settings=settings.alarms,
            queues=queues,
            http_api=api.http_api,
            table=store.table,
            functions={
                "api": api.function,
                "authorizer": api.authorizer_function,
                **({"run-events": run_events.publisher.function} if run_events is not None else {}),
                "node-credentials": on_premises.credentials.function,
                "reaper": maintenance.reaper.function,
                "schedule-fire": schedules.fire.function,
                **{
                    f"dead-letters-{environment}": handler.function
                    for environment, handler in maintenance.dead_letter_handlers.items()
                },
            },
            undeliverable_events=run_events.failures if run_events is not None else None,
            run_events=settings.run_events,
        )

        cdk.CfnOutput(self, "ApiUrl", value=api.url, description="Base URL of the runly API")
        cdk.CfnOutput(self, "TableName", value=store.table.table_name)
        cdk.CfnOutput(self, "FeedBucketName", value=feed.bucket.bucket_name)
        if run_events is not None:
            cdk.CfnOutput(
                self, "EventBusName", value=run_events.bus.event_bus_name, description="Run State Changed events"
            )
        cdk.CfnOutput(
            self,
            "DashboardUrl",
            value=dashboard_url(region=self.region, dashboard_name=observability.dashboard.dashboard_name),
        )
        if observability.topic is not None:
            cdk.CfnOutput(self, "AlarmTopicArn", value=observability.topic.topic_arn)
        for environment, queue in queues.queues.items():
            cdk.CfnOutput(
                self,
                queue_url_output_id(environment),
                value=queue.queue_url,
                description=f"Run queue of environment {environment}",
            )
        for environment, role in on_premises.node_roles.items():
            cdk.CfnOutput(
                self,
                environment_output_id("NodeRoleArn", environment),
                value=role.role_arn,
                description=f"Assumed for on-premises nodes of environment {environment} (POST /nodes/credentials)",
            )


def queue_url_output_id(environment: str) -> str:
    """`production-eu` -> `QueueUrlProductionEu` (output ids are alphanumeric)."""
    return environment_output_id("QueueUrl", environment)


def environment_output_id(prefix: str, environment: str) -> str:
    return prefix + "".join(part.capitalize() for part in environment.split("-"))
