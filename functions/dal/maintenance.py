"""DynamoDB and SQS access for the maintenance functions: runs whose lease expired, dead letters.

Which environment a run belongs to is read from its table key (``ENV#{environment}#RUN#{run_id}``, which no node
of another environment can write under), never from an attribute or an index key a node can write; and only runs
the API created (runly_core.records.API_CREATED, which no node can write) are acted on (docs/store.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from functions.dal.store import api_run
from runly_core.contracts import FailureReason, RunMessage, RunState
from runly_core.records import (
    RunRecord,
    abandoned_run_update,
    is_run_id,
    lease_index_partition,
    lease_sort_key,
    run_environment,
    run_key,
)
from runly_core.resources import PARTITION_KEY, RUNS_BY_LEASE, SORT_KEY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseEntry:
    """What the lease index holds for one item: the run (None: the item is not a run the API created) and its
    table key, for the log."""

    record: RunRecord | None
    partition_key: str


class RunMoved(Exception):
    """The run changed since it was read (a node renewed or finished it): leave it alone."""


class MaintenanceStore:
    # Only if nobody touched the run since we read it: a live node always wins.
    unchanged = "#attempt = :attempt AND #state = :state AND lease_until_ms = :lease_until"

    def __init__(self, table_name: str, queue_urls: dict[str, str], *, resource: Any = None, sqs: Any = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)
        self._sqs = sqs or boto3.client("sqs")
        self._queue_urls = queue_urls

    @property
    def environments(self) -> list[str]:
        return sorted(self._queue_urls)

    def expired_leases(self, environment: str, before_ms: int) -> Iterator[LeaseEntry]:
        """The items of ``environment``'s lease partition whose lease ended before ``before_ms``.

        A node writes the lease index's keys (a claim puts its run there), so an entry is only a candidate: it is a
        run only if the API created it (API_CREATED, under the table key its id names), and it belongs to the
        environment its table key names, whichever lease partition it was found in (``dispatch``). The index
        projects the whole item today; once it projects less (docs/store.md), the candidate is read from the table.
        """
        query: dict[str, Any] = {
            "IndexName": RUNS_BY_LEASE.name,
            "KeyConditionExpression": Key(RUNS_BY_LEASE.partition_key).eq(lease_index_partition(environment))
            & Key(RUNS_BY_LEASE.sort_key).lt(lease_sort_key(before_ms)),
        }
        while True:
            page = self._table.query(**query)
            for item in page.get("Items", []):
                partition = str(item.get(PARTITION_KEY, ""))
                yield LeaseEntry(api_run(item) if item.get(SORT_KEY) == "RUN" else None, partition)
            if "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run the API created under this id, or None."""
        if not is_run_id(run_id):
            return None
        return api_run(self._table.get_item(Key=run_key(run_id), ConsistentRead=True).get("Item"))

    def end_abandoned(self, record: RunRecord, state: RunState, reason: FailureReason, message: str) -> None:
        """Close the abandoned attempt (node lost) and move the run to ``state``: Queued for another
        attempt, or a terminal state."""
        update, names, values = abandoned_run_update(record, state, reason, message)
        names["#attempt"] = "attempt"
        values.update({":attempt": record.attempt, ":state": record.state.value})
        if record.lease_until_ms is None:
            condition = "#attempt = :attempt AND #state = :state AND attribute_not_exists(lease_until_ms)"
        else:
            condition = self.unchanged
            values[":lease_until"] = record.lease_until_ms
        try:
            self._table.update_item(
                Key=run_key(record.run_id),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise RunMoved(record.run_id) from exc
            raise

    def dispatch(self, record: RunRecord) -> None:
        """Send the run's message to the queue of the environment its key names (the id names it: run_key)."""
        environment = run_environment(record.run_id)
        message = RunMessage(run_id=record.run_id, environment=environment)
        self._sqs.send_message(QueueUrl=self._queue_urls[environment], MessageBody=message.model_dump_json())
