"""DynamoDB access to API keys (items KEY#{key_id} / KEY, listed through the items-by-kind index)."""

from __future__ import annotations

from typing import Any

import boto3
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from runly_core.records import KEY_KIND, KeyRecord, key_key
from runly_core.resources import ITEMS_BY_KIND, PARTITION_KEY


class KeyNotFound(Exception):
    pass


class KeyExists(Exception):
    pass


def _is_conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class KeyStore:
    item_is_new = f"attribute_not_exists({PARTITION_KEY})"
    item_exists = f"attribute_exists({PARTITION_KEY})"

    def __init__(self, table_name: str, *, resource: Any = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)

    def put_new(self, record: KeyRecord) -> None:
        try:
            self._table.put_item(Item=record.to_item(), ConditionExpression=self.item_is_new)
        except ClientError as exc:
            if _is_conditional_failure(exc):
                raise KeyExists(record.key_id) from exc
            raise

    def get(self, key_id: str) -> KeyRecord | None:
        # Consistent: a key revoked a moment ago must not pass on a stale replica.
        item = self._table.get_item(Key=key_key(key_id), ConsistentRead=True).get("Item")
        return KeyRecord.from_item(item) if item else None

    def list(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        records: list[KeyRecord] = []
        query: dict[str, Any] = {
            "IndexName": ITEMS_BY_KIND.name,
            "KeyConditionExpression": Key(ITEMS_BY_KIND.partition_key).eq(KEY_KIND),
        }
        while True:
            page = self._table.query(**query)
            records.extend(KeyRecord.from_item(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return records
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def revoke(self, key_id: str, at: str) -> KeyRecord:
        """Mark the key revoked (the first revocation time is kept); KeyNotFound if there is no such key."""
        try:
            attributes = self._table.update_item(
                Key=key_key(key_id),
                UpdateExpression="SET revoked_at = if_not_exists(revoked_at, :at)",
                ConditionExpression=self.item_exists,
                ExpressionAttributeValues={":at": at},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as exc:
            if _is_conditional_failure(exc):
                raise KeyNotFound(key_id) from exc
            raise
        return KeyRecord.from_item(attributes)
