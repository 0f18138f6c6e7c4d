"""Alarms, an optional topic they notify, and one dashboard.

Alarms (5-minute periods, missing data is not breaching):
- dead letters, per environment: a message sits in, or was just taken from, the DLQ (the dead-letter handler
  consumes the DLQ within seconds, so its depth alone would hardly ever show a poison message);
- age of the oldest message of each run queue above `alarms.oldest_message_age_seconds` (runs waiting for a node
  that never comes; set it above your longest run, whose message stays in the queue while it runs);
- API 5xx answers; every function's errors and throttles; DynamoDB throttled reads and writes;
- run events that could not be published after every retry;
- the reaper refused a lease index entry that is no run the API created (written with a node's credentials).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aws_cdk as cdk
from aws_cdk import aws_apigatewayv2 as apigateway
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from functions.events import metrics as run_metrics
from infrastructure.environment_queues import EnvironmentQueues
from infrastructure.settings import AlarmSettings, RunEventsMode
from runly_core.contracts import RunState
from runly_core.resources import ResourceNames

PERIOD = cdk.Duration.minutes(5)
# Emitted by functions.maintenance.reaper (namespace runly, service runly-reaper): one per ReapReport field.
REAPER_SERVICE = "runly-reaper"
REAPER_METRICS = (
    "ReaperRequeued",
    "ReaperFailed",
    "ReaperCancelled",
    "ReaperSkipped",
    "ReaperRefused",
    "ReaperRenewed",
    "ReaperBounded",
)
REAPER_REFUSED_METRIC = "ReaperRefused"
# Emitted by the API function (functions.api.observability), once per run POST /runs or POST /runs/batch creates.
API_SERVICE = "runly-api"
API_ENQUEUED_METRIC = "RunsEnqueued"
WIDGET_WIDTH = 8
WIDGET_HEIGHT = 6


def dashboard_url(*, region: str, dashboard_name: str) -> str:
    return f"https://console.aws.amazon.com/cloudwatch/home?region={region}#dashboards:name={dashboard_name}"


class Observability(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        names: ResourceNames,
        settings: AlarmSettings,
        queues: EnvironmentQueues,
        http_api: apigateway.IHttpApi,
        table: dynamodb.ITable,
        functions: Mapping[str, lambda_.IFunction],
        undeliverable_events: sqs.IQueue | None,
        run_events: RunEventsMode = "all",
    ) -> None:
        super().__init__(scope, construct_id)
        self._prefix = names.prefix
        self.alarms: list[cloudwatch.Alarm] = []
        self.topic = self._topic(settings) if settings.notify else None

        for environment, dead_letter_queue in queues.dead_letter_queues.items():
            self._alarm(
                f"DeadLetters-{environment}",
                name=f"dead-letters-{environment}",
                description=f"Poison messages reached the dead-letter queue of environment {environment}: their "
                "runs were failed with reason dead_letter. Find them: GET /runs?state=Failed.",
                metric=cloudwatch.MathExpression(
                    expression="waiting + taken",
                    label="Dead letters waiting or taken",
                    using_metrics={
                        "waiting": dead_letter_queue.metric_approximate_number_of_messages_visible(
                            statistic="Maximum", period=PERIOD
                        ),
                        "taken": dead_letter_queue.metric_number_of_messages_received(statistic="Sum", period=PERIOD),
                    },
                    period=PERIOD,
                ),
                threshold=0,
                comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            )
        for environment, queue in queues.queues.items():
            self._alarm(
                f"OldestRun-{environment}",
                name=f"oldest-run-{environment}",
                description=f"A message of environment {environment} is older than "
                f"{settings.oldest_message_age_seconds} s: no node takes its run, or a run runs longer than that.",
                metric=queue.metric_approximate_age_of_oldest_message(statistic="Maximum", period=PERIOD),
                threshold=settings.oldest_message_age_seconds,
                comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            )
        self._alarm(
            "ApiServerErrors",
            name="api-5xx",
            description=f"The API answered 5xx at least {settings.api_server_errors} times in 5 minutes.",
            metric=http_api.metric_server_error(statistic="Sum", period=PERIOD),
            threshold=settings.api_server_errors,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        )
        for label, function in functions.items():
            self._alarm(
                f"Errors-{label}",
                name=f"{label}-errors",
                description=f"The {label} function failed (see its log group).",
                metric=function.metric_errors(statistic="Sum", period=PERIOD),
                threshold=1,
                comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            )
            self._alarm(
                f"Throttles-{label}",
                name=f"{label}-throttles",
                description=f"Invocations of the {label} function were throttled (account concurrency).",
                metric=function.metric_throttles(statistic="Sum", period=PERIOD),
                threshold=1,
                comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            )
        table_throttles = cloudwatch.MathExpression(
            expression="reads + writes",
            label="Throttled reads and writes",
            using_metrics={
                "reads": table.metric("ReadThrottleEvents", statistic="Sum", period=PERIOD),
                "writes": table.metric("WriteThrottleEvents", statistic="Sum", period=PERIOD),
            },
            period=PERIOD,
        )
        self._alarm(
            "TableThrottles",
            name="table-throttles",
            description="DynamoDB throttled reads or writes of the runly table (nodes back off and retry).",
            metric=table_throttles,
            threshold=1,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        )
        self._alarm(
            "ReaperRefused",
            name="reaper-refused",
            description="The reaper found lease index entries that are no run the API created: items written with "
            "a node's credentials (a node bug, or a stolen node key writing inside its environment). They were left "
            "alone; the reaper's log names their keys.",
            metric=cloudwatch.Metric(
                namespace=run_metrics.NAMESPACE,
                metric_name=REAPER_REFUSED_METRIC,
                dimensions_map={"service": REAPER_SERVICE},
                statistic="Sum",
                period=PERIOD,
            ),
            threshold=0,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        )
        if undeliverable_events is not None:
            self._alarm(
                "UndeliverableRunEvents",
                name="run-events-undeliverable",
                description="Run events could not be published after every retry; the stream records they came from "
                "are described in the publish-failures queue (replayable for 24 hours).",
                metric=undeliverable_events.metric_approximate_number_of_messages_visible(
                    statistic="Maximum", period=PERIOD
                ),
                threshold=0,
                comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            )

        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=names.prefix, default_interval=cdk.Duration.hours(3)
        )
        self._widgets(
            queues=queues,
            http_api=http_api,
            table_throttles=table_throttles,
            functions=functions,
            run_events=run_events,
        )

    # ------------------------------------------------------------ alarms

    def _topic(self, settings: AlarmSettings) -> sns.Topic:
        key = kms.Key(
            self,
            "AlarmTopicKey",
            description="runly: encrypts the alarm topic",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        # CloudWatch publishes to an encrypted topic only if the key lets it; the AWS-managed SNS key cannot.
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
            )
        )
        topic = sns.Topic(self, "AlarmTopic", display_name=f"{self._prefix} alarms", master_key=key, enforce_ssl=True)
        for address in settings.emails:
            topic.add_subscription(subscriptions.EmailSubscription(address))
        return topic

    def _alarm(
        self,
        construct_id: str,
        *,
        name: str,
        description: str,
        metric: cloudwatch.IMetric,
        threshold: float,
        comparison: cloudwatch.ComparisonOperator,
    ) -> None:
        alarm = cloudwatch.Alarm(
            self,
            construct_id,
            alarm_name=f"{self._prefix}-{name}",
            alarm_description=description,
            metric=metric,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        if self.topic is not None:
            alarm.add_alarm_action(actions.SnsAction(self.topic))
            alarm.add_ok_action(actions.SnsAction(self.topic))
        self.alarms.append(alarm)

    # ------------------------------------------------------------ dashboard

    def _widgets(
        self,
        *,
        queues: EnvironmentQueues,
        http_api: apigateway.IHttpApi,
        table_throttles: cloudwatch.IMetric,
        functions: Mapping[str, lambda_.IFunction],
        run_events: RunEventsMode,
    ) -> None:
        def graph(title: str, left: Sequence[cloudwatch.IMetric], *, stacked: bool = False) -> cloudwatch.GraphWidget:
            return cloudwatch.GraphWidget(
                title=title, left=list(left), stacked=stacked, width=WIDGET_WIDTH, height=WIDGET_HEIGHT
            )

        def runly_metric(service: str, name: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace=run_metrics.NAMESPACE,
                metric_name=name,
                dimensions_map={"service": service},
                statistic="Sum",
                period=PERIOD,
                label=name,
            )

        finished = [RunState.SUCCEEDED, RunState.FAILED, RunState.TIMED_OUT, RunState.CANCELLED]
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms), width=24, height=4)
        )
        # The publisher counts the states it publishes (the stage's run_events); without the non-terminal ones,
        # the API's count of enqueued runs stands in for "started".
        if run_events == "all":
            started = [
                runly_metric(run_metrics.SERVICE, run_metrics.RUN_STATE_METRICS[state])
                for state in (RunState.QUEUED, RunState.RUNNING)
            ]
        else:
            started = [runly_metric(API_SERVICE, API_ENQUEUED_METRIC)]
        run_graphs = [graph("Runs started" if run_events == "all" else "Runs enqueued", started)]
        if run_events != "off":
            run_graphs.append(
                graph(
                    "Runs finished",
                    [runly_metric(run_metrics.SERVICE, run_metrics.RUN_STATE_METRICS[state]) for state in finished],
                    stacked=True,
                )
            )
        self.dashboard.add_widgets(
            *run_graphs,
            graph("Reaper actions", [runly_metric(REAPER_SERVICE, name) for name in REAPER_METRICS], stacked=True),
        )
        self.dashboard.add_widgets(
            graph(
                "Runs waiting per environment",
                [
                    queue.metric_approximate_number_of_messages_visible(
                        statistic="Maximum", period=cdk.Duration.minutes(1), label=environment
                    )
                    for environment, queue in queues.queues.items()
                ],
            ),
            graph(
                "Runs in flight per environment",
                [
                    queue.metric_approximate_number_of_messages_not_visible(
                        statistic="Maximum", period=cdk.Duration.minutes(1), label=environment
                    )
                    for environment, queue in queues.queues.items()
                ],
            ),
            graph(
                "Oldest message age (s)",
                [
                    queue.metric_approximate_age_of_oldest_message(
                        statistic="Maximum", period=PERIOD, label=environment
                    )
                    for environment, queue in queues.queues.items()
                ],
            ),
        )
        self.dashboard.add_widgets(
            graph(
                "API requests",
                [
                    http_api.metric_count(statistic="Sum", period=PERIOD, label="requests"),
                    http_api.metric_client_error(statistic="Sum", period=PERIOD, label="4xx"),
                    http_api.metric_server_error(statistic="Sum", period=PERIOD, label="5xx"),
                ],
            ),
            graph(
                "API latency (ms)",
                [
                    http_api.metric_latency(statistic=statistic, period=PERIOD, label=statistic)
                    for statistic in ("p50", "p90", "p99")
                ],
            ),
            graph(
                "Dead letters per environment",
                [
                    queue.metric_approximate_number_of_messages_visible(
                        statistic="Maximum", period=PERIOD, label=environment
                    )
                    for environment, queue in queues.dead_letter_queues.items()
                ],
            ),
        )
        self.dashboard.add_widgets(
            graph(
                "Function errors",
                [
                    function.metric_errors(statistic="Sum", period=PERIOD, label=label)
                    for label, function in functions.items()
                ],
            ),
            graph(
                "Function throttles",
                [
                    function.metric_throttles(statistic="Sum", period=PERIOD, label=label)
                    for label, function in functions.items()
                ],
            ),
            graph("DynamoDB throttled requests", [table_throttles]),
        )
