"""DynamoDB access to node registrations (items NODE#{node_id} / NODE, written by the agents).

The agent owns its item and refreshes it on every heartbeat; the API only reads it and sets
``drain_requested`` with an update, never a put, so it cannot undo a heartbeat.
"""

from __future__ import annotations

from typing import Any

import boto3
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from runly.records import NODE_KIND, NodeRecord, node_key, node_kind_sort_key
from runly.resources import ITEMS_BY_KIND, PARTITION_KEY

_NODE_PREFIX = "NODE#"


class NodeNotFound(Exception):
    pass


def _record(item: dict[str, Any]) -> NodeRecord:
    # The agent's update does not repeat the node id as an attribute: it is the partition key.
    return NodeRecord.model_validate({**item, "node_id": str(item[PARTITION_KEY]).removeprefix(_NODE_PREFIX)})


class NodeStore:
    def __init__(self, table_name: str, *, resource: Any = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)

    def list(self, environment: str | None = None) -> list[NodeRecord]:
        """The registered nodes (of one environment, when given), by environment then id."""
        condition = Key(ITEMS_BY_KIND.partition_key).eq(NODE_KIND)
        if environment is not None:
            condition &= Key(ITEMS_BY_KIND.sort_key).begins_with(node_kind_sort_key(environment, ""))
        records: list[NodeRecord] = []
        query: dict[str, Any] = {"IndexName": ITEMS_BY_KIND.name, "KeyConditionExpression": condition}
        while True:
            page = self._table.query(**query)
            records.extend(_record(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return records
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def request_drain(self, node_id: str) -> NodeRecord:
        """Set ``drain_requested`` on an existing node's item and nothing else; NodeNotFound if it has none."""
        try:
            attributes = self._table.update_item(
                Key=node_key(node_id),
                UpdateExpression="SET drain_requested = :yes",
                ConditionExpression=f"attribute_exists({PARTITION_KEY})",
                ExpressionAttributeValues={":yes": True},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise NodeNotFound(node_id) from exc
            raise
        return _record(attributes)
