"""DynamoDB access for the API: runs and packages. boto3 lives here, not in logic."""

from __future__ import annotations

from typing import Any

import boto3
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from runly.records import PackageRecord, RunRecord, package_partition, run_key
from runly.resources import PARTITION_KEY


class AlreadyExists(Exception):
    pass


def _is_conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class Store:
    item_is_new = f"attribute_not_exists({PARTITION_KEY})"

    def __init__(self, table_name: str, *, resource: Any = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)

    # runs
    def put_new_run(self, record: RunRecord) -> None:
        try:
            self._table.put_item(Item=record.to_item(), ConditionExpression=self.item_is_new)
        except ClientError as exc:
            if _is_conditional_failure(exc):
                raise AlreadyExists(record.run_id) from exc
            raise

    def delete_run(self, run_id: str) -> None:
        self._table.delete_item(Key=run_key(run_id))

    def get_run(self, run_id: str) -> RunRecord | None:
        item = self._table.get_item(Key=run_key(run_id), ConsistentRead=True).get("Item")
        return RunRecord.from_item(item) if item else None

    # packages
    def put_new_package(self, record: PackageRecord) -> None:
        try:
            self._table.put_item(Item=record.to_item(), ConditionExpression=self.item_is_new)
        except ClientError as exc:
            if _is_conditional_failure(exc):
                raise AlreadyExists(f"{record.name} {record.version}") from exc
            raise

    def package_versions(self, name: str) -> list[PackageRecord]:
        records: list[PackageRecord] = []
        query: dict[str, Any] = {"KeyConditionExpression": Key(PARTITION_KEY).eq(package_partition(name))}
        while True:
            page = self._table.query(**query)
            records.extend(PackageRecord.from_item(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return records
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
