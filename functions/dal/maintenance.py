"""DynamoDB and SQS access for the maintenance functions: runs whose lease expired, dead letters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from runly.contracts import FailureReason, RunMessage, RunState
from runly.records import LEASED, RunRecord, abandoned_run_update, lease_sort_key, run_key
from runly.resources import RUNS_BY_LEASE


class RunMoved(Exception):
    """The run changed since it was read (a node renewed or finished it): leave it alone."""


class MaintenanceStore:
    # Only if nobody touched the run since we read it: a live node always wins.
    unchanged = "#attempt = :attempt AND #state = :state AND lease_until_ms = :lease_until"

    def __init__(self, table_name: str, queue_urls: dict[str, str], *, resource: Any = None, sqs: Any = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)
        self._sqs = sqs or boto3.client("sqs")
        self._queue_urls = queue_urls

    def expired_leases(self, before_ms: int) -> Iterator[RunRecord]:
        query: dict[str, Any] = {
            "IndexName": RUNS_BY_LEASE.name,
            "KeyConditionExpression": Key(RUNS_BY_LEASE.partition_key).eq(LEASED)
            & Key(RUNS_BY_LEASE.sort_key).lt(lease_sort_key(before_ms)),
        }
        while True:
            page = self._table.query(**query)
            for item in page.get("Items", []):
                yield RunRecord.from_item(item)
            if "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get_run(self, run_id: str) -> RunRecord | None:
        item = self._table.get_item(Key=run_key(run_id), ConsistentRead=True).get("Item")
        return RunRecord.from_item(item) if item else None

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
        message = RunMessage(run_id=record.run_id, environment=record.environment)
        self._sqs.send_message(QueueUrl=self._queue_urls[record.environment], MessageBody=message.model_dump_json())
