"""Run events: the table's stream -> a publisher function -> `Run State Changed` events on a custom bus.

Subscribers (a webhook through an API destination, an SNS topic, another account's bus) are one rule away; see
docs/events.md. Stream batches whose events cannot be published are retried; after `STREAM_RETRY_ATTEMPTS` the
batch's description lands in a queue of its own (nothing is dropped silently) and an alarm fires.

The stage setting `run_events` chooses what is published: "all" (every state a run enters), "terminal" (only
finished runs: the stream mapping's filter drops the other records before the publisher is invoked) or "off"
(none of this is built).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from functions.events.changes import stream_filter
from functions.events.metrics import SERVICE
from infrastructure.lambda_function import RunlyFunction
from infrastructure.run_store import RunStore
from infrastructure.settings import RunEventsMode
from runly_core.contracts import TERMINAL_STATES
from runly_core.resources import QUEUE_RETENTION_SECONDS, ResourceNames

PUBLISHER_HANDLER = "functions.events.publisher.lambda_handler"
EVENT_BUS_NAME = "RUNLY_EVENT_BUS_NAME"  # read by functions.events.publisher.EventsSettings
STREAM_BATCH_SIZE = 100
STREAM_RETRY_ATTEMPTS = 10


def failures_queue_name(names: ResourceNames) -> str:
    return f"{names.prefix}-run-events-dlq"


def stream_filters(mode: RunEventsMode) -> list[Mapping[str, Any]] | None:
    """The stream mapping's filters: none for every state change, else only run items entering a terminal state
    (Lambda drops the other records before invoking the publisher, and bills no invocation for them)."""
    if mode == "all":
        return None  # an empty list would be an empty FilterCriteria, which CloudFormation refuses
    return [lambda_.FilterCriteria.filter(stream_filter(TERMINAL_STATES))]


class RunEvents(Construct):
    """Built unless the stage's ``run_events`` is "off"; "terminal" filters the stream to finished runs."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        names: ResourceNames,
        code: lambda_.Code,
        store: RunStore,
        mode: RunEventsMode,
    ) -> None:
        super().__init__(scope, construct_id)
        if mode == "off":
            raise ValueError("run events are off: build no RunEvents")
        self.bus = events.EventBus(self, "Bus", event_bus_name=names.event_bus, description="runly: run state changes")

        self.publisher = RunlyFunction(
            self,
            "Publisher",
            handler=PUBLISHER_HANDLER,
            code=code,
            description="runly: publishes run state changes from the table stream to EventBridge",
            environment={
                EVENT_BUS_NAME: self.bus.event_bus_name,
                "POWERTOOLS_SERVICE_NAME": SERVICE,
                "POWERTOOLS_LOG_LEVEL": "INFO",
            },
        )
        self.bus.grant_put_events_to(self.publisher.role)
        store.grant_stream_read(self.publisher.role)

        # Where a stream batch goes once every retry failed: its shard and sequence numbers, to replay by hand
        # within the stream's 24 hours.
        self.failures = sqs.Queue(
            self,
            "PublishFailures",
            queue_name=failures_queue_name(names),
            retention_period=cdk.Duration.seconds(QUEUE_RETENTION_SECONDS),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        cdk.Validations.of(self.failures).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-SQS3",
                reason="This queue is itself a dead-letter destination (the stream mapping's on-failure "
                "destination); a dead-letter queue of a dead-letter queue would only move the same records again.",
            )
        )
        lambda_.EventSourceMapping(
            self,
            "StreamSource",
            target=self.publisher.function,
            event_source_arn=store.stream_arn,
            # Nothing lost: a mapping created again (or after a pause) starts from the oldest record it still has.
            starting_position=lambda_.StartingPosition.TRIM_HORIZON,
            batch_size=STREAM_BATCH_SIZE,
            max_batching_window=cdk.Duration.seconds(1),
            retry_attempts=STREAM_RETRY_ATTEMPTS,
            report_batch_item_failures=True,
            on_failure=event_sources.SqsDlq(self.failures),
            filters=stream_filters(mode),
        )
