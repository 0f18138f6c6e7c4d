"""API keys on the table (items KEY#{key_id} / KEY, listed through the items-by-kind index): the one access the
API, the authorizer and the CLI's ``runly keys bootstrap`` (and the embedded stack) share.

The DynamoDB resource is injected (functions.dal.keys.key_store, the CLI's own): this module imports no AWS SDK.
"""

from __future__ import annotations

import builtins
from typing import Any

from runly_core.contracts import Scope
from runly_core.records import KEY_KIND, KeyRecord, key_key
from runly_core.resources import ITEMS_BY_KIND, PARTITION_KEY
from runly_core.table import AlreadyExists, query_items, refused_as


class KeyNotFound(Exception):
    pass


class KeyExists(AlreadyExists):
    pass


class KeyStore:
    item_is_new = f"attribute_not_exists({PARTITION_KEY})"
    item_exists = f"attribute_exists({PARTITION_KEY})"

    def __init__(self, table_name: str, *, resource: Any) -> None:
        """``resource``: a boto3 DynamoDB service resource, with the caller's credentials."""
        self._table = resource.Table(table_name)

    def put_new(self, record: KeyRecord) -> None:
        with refused_as(lambda: KeyExists(record.key_id)):
            self._table.put_item(Item=record.to_item(), ConditionExpression=self.item_is_new)

    def get(self, key_id: str) -> KeyRecord | None:
        # Consistent: a key revoked a moment ago must not pass on a stale replica.
        item = self._table.get_item(Key=key_key(key_id), ConsistentRead=True).get("Item")
        return KeyRecord.from_item(item) if item else None

    def list(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        query: dict[str, Any] = {
            "IndexName": ITEMS_BY_KIND.name,
            "KeyConditionExpression": "#kind = :kind",
            "ExpressionAttributeNames": {"#kind": ITEMS_BY_KIND.partition_key},
            "ExpressionAttributeValues": {":kind": KEY_KIND},
        }
        # The index is KEYS_ONLY: the keys' items are read from the table.
        return [KeyRecord.from_item(item) for item in query_items(self._table, query)]

    def active_admin_keys(self) -> builtins.list[KeyRecord]:
        return [record for record in self.list() if record.scope is Scope.ADMIN and record.active]

    def revoke(self, key_id: str, at: str) -> KeyRecord:
        """Mark the key revoked (the first revocation time is kept); KeyNotFound if there is no such key."""
        with refused_as(lambda: KeyNotFound(key_id)):
            attributes = self._table.update_item(
                Key=key_key(key_id),
                UpdateExpression="SET revoked_at = if_not_exists(revoked_at, :at)",
                ConditionExpression=self.item_exists,
                ExpressionAttributeValues={":at": at},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        return KeyRecord.from_item(attributes)
