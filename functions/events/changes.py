"""Which stream records are run state changes, and publishing them (the publisher's use case).

A run item is ``ENV#{environment}#RUN#{id}`` / ``RUN``, created by the API (``api_created``); it changes state when
its ``state`` attribute differs between the old and the new image, or when it is created. Every other write
(heartbeats, progress, checkpoints, nodes, packages, an item a node wrote under a run's key) publishes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
    DynamoDBRecordEventName,
)
from pydantic import ValidationError

from functions.events.bus import MAX_ENTRIES_PER_CALL, BusEntry, BusUnavailable, EventBus
from functions.events.metrics import SERVICE
from runly_core import backoff
from runly_core.contracts import RUN_EVENT_SOURCE, RUN_STATE_CHANGED, RunState, RunStateChanged
from runly_core.records import ENVIRONMENT_PREFIX
from runly_core.resources import PARTITION_KEY, SORT_KEY
from runly_core.run_store import API_CREATED, RUN_SORT_KEY, run_id_of_partition

logger = Logger(service=SERVICE)

# Calls per chunk of entries, the first included; the waits between them stay well inside the function's timeout.
PUT_ATTEMPTS = 3
RETRY_BASE_SECONDS = 0.2
RETRY_CAP_SECONDS = 2.0


def stream_filter(states: Iterable[RunState]) -> dict[str, Any]:
    """The stream event source mapping's filter pattern (Lambda event filtering) that lets through only the
    records of run items entering one of ``states``: a subset of what ``state_change`` accepts (run items,
    INSERT or MODIFY), so the publisher sees fewer records and decides the same way on those it sees. A write
    that keeps a run in such a state (e.g. a late update of a finished run) passes the filter and is dropped by
    ``state_change``, as without the filter."""
    return {
        "eventName": [DynamoDBRecordEventName.INSERT.name, DynamoDBRecordEventName.MODIFY.name],
        "dynamodb": {
            "Keys": {
                PARTITION_KEY: {"S": [{"prefix": ENVIRONMENT_PREFIX}]},
                SORT_KEY: {"S": [RUN_SORT_KEY]},
            },
            "NewImage": {"state": {"S": sorted(state.value for state in states)}},
        },
    }


def sequence_number(record: DynamoDBRecord) -> str:
    stream = record.dynamodb
    if stream is None or stream.sequence_number is None:
        raise ValueError("a DynamoDB stream record without a sequence number")
    return stream.sequence_number


def state_change(record: DynamoDBRecord) -> RunStateChanged | None:
    """The run state change this record carries, or None. Raises ValidationError for a run item that lacks
    what an event needs (a defect of the writer: the record is reported as failed, not skipped)."""
    stream = record.dynamodb
    if stream is None or record.event_name not in (DynamoDBRecordEventName.INSERT, DynamoDBRecordEventName.MODIFY):
        return None
    keys = stream.keys
    is_run = run_id_of_partition(str(keys.get(PARTITION_KEY, ""))) is not None and keys.get(SORT_KEY) == RUN_SORT_KEY
    new = stream.new_image
    if not is_run or new.get(API_CREATED) is not True:
        # Not a run, or not one the API created (a node's credentials can write under a run's key): no event,
        # and not a failed record either, which would hold the stream back.
        return None
    previous = stream.old_image.get("state") if record.event_name is DynamoDBRecordEventName.MODIFY else None
    if record.event_name is DynamoDBRecordEventName.MODIFY and previous == new.get("state"):
        return None
    written = stream.approximate_creation_date_time
    return RunStateChanged.model_validate(
        {
            "run_id": new.get("run_id"),
            "environment": new.get("environment"),
            "package": new.get("package"),
            "version": new.get("version"),
            "job": new.get("job"),
            "previous_state": previous,
            "state": new.get("state"),
            "attempt": new.get("attempt", 0),
            "occurred_at": datetime.fromtimestamp(written, UTC) if written is not None else datetime.now(UTC),
        }
    )


@dataclass
class PublishReport:
    published: list[RunStateChanged] = field(default_factory=list)
    unpublished: set[str] = field(default_factory=set)  # sequence numbers of the records to report as failed


def _entry(change: RunStateChanged) -> BusEntry:
    return BusEntry(
        source=RUN_EVENT_SOURCE,
        detail_type=RUN_STATE_CHANGED,
        detail_json=change.model_dump_json(),
        time=change.occurred_at,
    )


def _put_chunk(
    bus: EventBus, chunk: Sequence[tuple[str, RunStateChanged]], sleep: Callable[[float], None]
) -> list[tuple[str, RunStateChanged]]:
    """Put one chunk, retrying what EventBridge refused with capped exponential backoff and jitter; returns
    what is still unpublished."""
    remaining = list(chunk)
    for attempt in range(PUT_ATTEMPTS):
        if attempt:
            sleep(backoff.delay(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
        try:
            refused = bus.put([_entry(change) for _, change in remaining])
        except BusUnavailable:
            logger.warning("PutEvents failed", attempt=attempt + 1, entries=len(remaining))
            continue
        remaining = [remaining[position] for position in refused]
        if not remaining:
            break
    return remaining


def publish_changes(
    records: Iterable[DynamoDBRecord], bus: EventBus, *, sleep: Callable[[float], None] = time.sleep
) -> PublishReport:
    """Publish the run state changes among ``records`` (in stream order, 10 entries per call)."""
    report = PublishReport()
    pending: list[tuple[str, RunStateChanged]] = []
    for record in records:
        sequence = sequence_number(record)
        try:
            change = state_change(record)
        except ValidationError:
            logger.exception("run item without what a run event needs", sequence_number=sequence)
            report.unpublished.add(sequence)
            continue
        if change is not None:
            pending.append((sequence, change))

    for start in range(0, len(pending), MAX_ENTRIES_PER_CALL):
        chunk = pending[start : start + MAX_ENTRIES_PER_CALL]
        left = _put_chunk(bus, chunk, sleep)
        left_sequences = {sequence for sequence, _ in left}
        report.unpublished |= left_sequences
        report.published += [change for sequence, change in chunk if sequence not in left_sequences]
        for sequence, change in left:
            logger.error("run event not published", sequence_number=sequence, run_id=change.run_id)
    return report
