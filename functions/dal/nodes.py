"""DynamoDB access to node registrations (items ``ENV#{environment}#NODE#{node_id}`` / NODE, written by the agents).

The agent owns its item and refreshes it on every heartbeat; the API only reads it and sets
``drain_requested`` with an update, never a put, so it cannot undo a heartbeat. A node writes its item's
items-by-kind keys too, so a node's environment is read from its table key, which IAM bounds to the node's own
environment, never from what it wrote.
"""

from __future__ import annotations

from typing import Any

import boto3
from boto3.dynamodb.conditions import Key

from runly_core.records import NODE_KIND, NodeRecord, node_key, node_kind_sort_key, node_of_partition
from runly_core.resources import ITEMS_BY_KIND, PARTITION_KEY
from runly_core.table import query_items, refused_as

# BatchGetItem takes 100 keys: a node id is looked up in up to this many environments at once.
_BATCH_GET_SIZE = 100


class NodeNotFound(Exception):
    pass


class NodeAmbiguous(Exception):
    """Nodes of several environments have this id."""

    def __init__(self, node_id: str, environments: list[str]) -> None:
        super().__init__(f"node {node_id!r} is registered in {', '.join(environments)}")
        self.environments = environments


def _record(item: dict[str, Any]) -> NodeRecord | None:
    """The node an item registers, its id and environment from its table key (None: not a node's key)."""
    found = node_of_partition(str(item.get(PARTITION_KEY, "")))
    if found is None:
        return None
    environment, node_id = found
    return NodeRecord.model_validate({**item, "node_id": node_id, "environment": environment})


class NodeStore:
    def __init__(self, table_name: str, *, environments: list[str] | None = None, resource: Any = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)
        self._environments = list(environments or [])

    def list(self, environment: str | None = None) -> list[NodeRecord]:
        """The registered nodes (of one environment, when given), by environment then id. An index entry whose
        sort key names another environment than its table key is not listed there (a node wrote it)."""
        condition = Key(ITEMS_BY_KIND.partition_key).eq(NODE_KIND)
        if environment is not None:
            condition &= Key(ITEMS_BY_KIND.sort_key).begins_with(node_kind_sort_key(environment, ""))
        records: list[NodeRecord] = []
        query: dict[str, Any] = {"IndexName": ITEMS_BY_KIND.name, "KeyConditionExpression": condition}
        # The index is KEYS_ONLY (a node's heartbeat rewrites its record, never its index entry): the nodes' items
        # are read from the table.
        for item in query_items(self._table, query):
            record = _record(item)
            if record is not None and item.get(ITEMS_BY_KIND.sort_key) == node_kind_sort_key(
                record.environment, record.node_id
            ):
                records.append(record)
        return records

    def find(self, node_id: str, environment: str | None = None) -> str:
        """The environment of the node registered as ``node_id`` (in ``environment``, when given): one batch read
        of its key in each of the deployment's environments. NodeNotFound, or NodeAmbiguous if several."""
        candidates = [environment] if environment is not None else self._environments
        client = self._table.meta.client
        found: list[str] = []
        for start in range(0, len(candidates), _BATCH_GET_SIZE):
            keys = [node_key(name, node_id) for name in candidates[start : start + _BATCH_GET_SIZE]]
            while keys:
                response = client.batch_get_item(
                    RequestItems={self._table.name: {"Keys": keys, "ProjectionExpression": PARTITION_KEY}}
                )
                for item in response.get("Responses", {}).get(self._table.name, []):
                    parsed = node_of_partition(str(item[PARTITION_KEY]))
                    if parsed is not None:
                        found.append(parsed[0])
                keys = response.get("UnprocessedKeys", {}).get(self._table.name, {}).get("Keys", [])
        if not found:
            raise NodeNotFound(node_id)
        if len(found) > 1:
            raise NodeAmbiguous(node_id, sorted(found))
        return found[0]

    def request_drain(self, node_id: str, environment: str | None = None) -> NodeRecord:
        """Set ``drain_requested`` on an existing node's item and nothing else; NodeNotFound if it has none,
        NodeAmbiguous if nodes of several environments have this id and ``environment`` does not say which."""
        environment = self.find(node_id, environment)
        with refused_as(lambda: NodeNotFound(node_id)):
            attributes = self._table.update_item(
                Key=node_key(environment, node_id),
                UpdateExpression="SET drain_requested = :yes",
                ConditionExpression=f"attribute_exists({PARTITION_KEY})",
                ExpressionAttributeValues={":yes": True},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        record = _record(attributes)
        if record is None:  # cannot be: the key is a node's
            raise NodeNotFound(node_id)
        return record
