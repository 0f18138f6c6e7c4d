"""Consumes an environment's dead-letter queue: the runs of poison messages are marked Failed with the reason."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.dal.maintenance import MaintenanceStore
from functions.logic.maintenance import handle_dead_letter
from functions.maintenance.settings import get_dead_letter_settings

logger = Logger(service="runly-dlq")
processor = BatchProcessor(event_type=EventType.SQS)


@lru_cache(maxsize=1)
def _store() -> MaintenanceStore:
    settings = get_dead_letter_settings()
    return MaintenanceStore(settings.table_name, settings.queue_urls)


def _record_handler(record: SQSRecord) -> None:
    count = int(record.attributes.approximate_receive_count or 0)
    store = _store()  # validates the settings: without RUNLY_DEAD_LETTER_ENVIRONMENT, no run is touched
    environment = get_dead_letter_settings().dead_letter_environment
    outcome = handle_dead_letter(store, record.body, count, environment=environment)
    logger.info("dead letter handled", extra={"message_id": record.message_id, "outcome": outcome})


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # A record whose handling raised (e.g. throttling) is reported back and retried; the others are deleted.
    return dict(
        process_partial_response(event=event, record_handler=_record_handler, processor=processor, context=context)
    )
