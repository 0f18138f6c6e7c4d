"""Lambda: the table's stream -> one ``Run State Changed`` event per state a run enters, on the runly bus.

Records whose event could not be published are reported back (batch item failures), so Lambda retries from
the first of them; a record retried this way may publish its event twice (delivery is at least once).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord, DynamoDBStreamEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from functions.events.bus import EventBus
from functions.events.changes import publish_changes, sequence_number
from functions.events.metrics import NAMESPACE, RUN_STATE_METRICS, SERVICE, UNPUBLISHED_METRIC
from functions.settings import EnvSettings

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


class EventsSettings(EnvSettings):
    """The publisher's environment, validated at cold start."""

    event_bus_name: str = Field(min_length=1, description="the custom bus run events are put on")


@lru_cache(maxsize=1)
def get_settings() -> EventsSettings:
    return EventsSettings.from_environ()


@lru_cache(maxsize=1)
def event_bus() -> EventBus:
    return EventBus(get_settings().event_bus_name)


class EventNotPublished(Exception):
    pass


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = publish_changes(DynamoDBStreamEvent(event).records, event_bus())
    for change in report.published:
        if change.state in RUN_STATE_METRICS:
            metrics.add_metric(name=RUN_STATE_METRICS[change.state], unit=MetricUnit.Count, value=1)
    if report.unpublished:
        metrics.add_metric(name=UNPUBLISHED_METRIC, unit=MetricUnit.Count, value=len(report.unpublished))

    def confirm(record: DynamoDBRecord) -> None:
        if sequence_number(record) in report.unpublished:
            raise EventNotPublished(sequence_number(record))

    # Powertools turns the records confirm() refused into batchItemFailures (and raises if all of them failed).
    return dict(process_partial_response(event=event, record_handler=confirm, processor=processor, context=context))
