"""What DynamoDB and SQS bill for one request, from the request, the item images before and after it and the
table's own definition (pure: no AWS, no processes).

The recording proxy (bench.recorder) calls :func:`dynamodb_charges` and :func:`sqs_requests` for every request
it forwards; ``make capacity`` (bench.capacity) and ``make bench``'s bill (bench.derive) add up what they return.
The rules, from DynamoDB's developer guide ("Read and write operations", "Global secondary indexes: provisioned
throughput considerations") and SQS's pricing page:

- A base-table write costs 1 write unit per 1 KB (rounded up) of the larger of the item before and after it
  (a delete: the item deleted). A conditional write whose condition fails still costs that, with no index write.
  In a transaction every unit is doubled (a ConditionCheck is billed as a write of the item it checks).
- Each global secondary index is written when the item enters it (a put), leaves it (a delete), changes one of
  the index's key values (a delete of the old entry plus a put of the new: two writes), or changes an attribute
  the index projects (an update). An item is in a (sparse) index only while it holds every key attribute of the
  index. An index write costs 1 unit per 1 KB of the projected entry: the table's keys, the index's keys and the
  projected attributes (ALL: the whole item), the larger of before and after for an update.
- Reads: 1 unit per 4 KB strongly consistent, half that eventually consistent (an index is always eventually
  consistent), twice that in a transaction. A Query or Scan rounds the total size of what it read (once per
  request); BatchGetItem rounds each item; a GetItem of nothing costs the minimum (0.5 or 1).
- SQS bills each request per 64 KB chunk of its payload (a batch of 10 small messages is one request).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.counting import item_size

WRITE_BLOCK = 1024
READ_BLOCK = 4096
SQS_CHUNK = 64 * 1024


# ---------------------------------------------------------------- the table's definition


@dataclass(frozen=True)
class IndexDef:
    """A global secondary index as the table defines it (DescribeTable), not as anyone remembers it."""

    name: str
    partition_key: str
    sort_key: str | None
    projection: str  # ALL | KEYS_ONLY | INCLUDE
    non_key_attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableDef:
    name: str
    partition_key: str
    sort_key: str | None
    indexes: tuple[IndexDef, ...] = ()

    @property
    def key_attributes(self) -> tuple[str, ...]:
        return tuple(name for name in (self.partition_key, self.sort_key) if name)

    def index(self, name: str) -> IndexDef | None:
        return next((index for index in self.indexes if index.name == name), None)

    @classmethod
    def from_description(cls, table: Mapping[str, Any]) -> TableDef:
        """From DescribeTable's ``Table``: the keys and each GSI's keys and projection."""

        def keys(schema: Sequence[Mapping[str, str]]) -> tuple[str, str | None]:
            hash_key = next(k["AttributeName"] for k in schema if k["KeyType"] == "HASH")
            range_key = next((k["AttributeName"] for k in schema if k["KeyType"] == "RANGE"), None)
            return hash_key, range_key

        partition, sort = keys(table["KeySchema"])
        indexes = []
        for gsi in table.get("GlobalSecondaryIndexes") or []:
            index_partition, index_sort = keys(gsi["KeySchema"])
            projection = gsi.get("Projection") or {}
            indexes.append(
                IndexDef(
                    name=gsi["IndexName"],
                    partition_key=index_partition,
                    sort_key=index_sort,
                    projection=projection.get("ProjectionType", "ALL"),
                    non_key_attributes=tuple(projection.get("NonKeyAttributes") or ()),
                )
            )
        return cls(name=table["TableName"], partition_key=partition, sort_key=sort, indexes=tuple(indexes))


def projected(table: TableDef, index: IndexDef, item: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The entry ``item`` has in ``index``, or None when it is not in it (a sparse index: a key attribute absent)."""
    if not item:
        return None
    index_keys = [name for name in (index.partition_key, index.sort_key) if name]
    if any(name not in item for name in index_keys):
        return None
    if index.projection == "ALL":
        return dict(item)
    kept = {*table.key_attributes, *index_keys}
    if index.projection == "INCLUDE":
        kept |= set(index.non_key_attributes)
    return {name: value for name, value in item.items() if name in kept}


def key_text(value: Any) -> str:
    """A key attribute's value as text ({"S": "RUN#1"} -> "RUN#1")."""
    if isinstance(value, Mapping) and len(value) == 1:
        inner = next(iter(value.values()))
        return inner if isinstance(inner, str) else str(inner)
    return "" if value is None else str(value)


# ---------------------------------------------------------------- units


def write_units(size: int, *, transactional: bool = False) -> float:
    blocks = max(1, math.ceil(size / WRITE_BLOCK))
    return 2.0 * blocks if transactional else float(blocks)


def read_units(size: int, *, consistent: bool, transactional: bool = False) -> float:
    blocks = max(1, math.ceil(size / READ_BLOCK))
    if transactional:
        return 2.0 * blocks
    return float(blocks) if consistent else blocks / 2


@dataclass(frozen=True)
class Charge:
    """Units one request cost on one partition: of the table (``index`` None) or of one of its indexes."""

    table: str
    index: str | None
    partition_key: str
    action: str  # table write | table read | index put | index delete | index update | index read
    write: float = 0.0
    read: float = 0.0
    size: int = 0  # bytes the units were counted from
    item: str = ""  # the table partition key of the item written or read (an index entry's item; "" for a query)

    @property
    def target(self) -> str:
        return f"{self.table}/{self.index}" if self.index else self.table

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "index": self.index,
            "partition_key": self.partition_key,
            "action": self.action,
            "write": self.write,
            "read": self.read,
            "size": self.size,
            "item": self.item,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Charge:
        return cls(
            table=str(data["table"]),
            index=data.get("index"),
            partition_key=str(data["partition_key"]),
            action=str(data["action"]),
            write=float(data.get("write", 0.0)),
            read=float(data.get("read", 0.0)),
            size=int(data.get("size", 0)),
            item=str(data.get("item", "")),
        )


def write_charges(
    table: TableDef,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    succeeded: bool = True,
    transactional: bool = False,
    attempted: Mapping[str, Any] | None = None,
) -> list[Charge]:
    """What one item write costs: the base table's write and each index's writes.

    ``before``/``after``: the whole item before and after the write (None: absent). A failed conditional write
    (``succeeded`` False) leaves the item as it was and costs the base-table write only, counted by the larger of
    the item there and the item the request tried to put (``attempted``, for a PutItem).
    """
    source = after if succeeded else before
    key_item = source or before or attempted or {}
    partition = key_text(key_item.get(table.partition_key))
    sizes = [item_size(before), item_size(after if succeeded else attempted)]
    size = max(sizes)
    charges = [
        Charge(
            table.name,
            None,
            partition,
            "table write",
            write=write_units(size, transactional=transactional),
            size=size,
            item=partition,
        )
    ]
    if not succeeded:
        return charges
    for index in table.indexes:
        old = projected(table, index, before)
        new = projected(table, index, after)
        if old is None and new is None:
            continue

        def charge(
            action: str, entry: Mapping[str, Any], also: Mapping[str, Any] | None = None, index: IndexDef = index
        ) -> Charge:
            entry_size = max(item_size(entry), item_size(also))
            return Charge(
                table.name,
                index.name,
                key_text(entry.get(index.partition_key)),
                action,
                write=write_units(entry_size, transactional=transactional),
                size=entry_size,
                item=partition,
            )

        if old is None and new is not None:
            charges.append(charge("index put", new))
        elif new is None and old is not None:
            charges.append(charge("index delete", old))
        elif old is not None and new is not None:
            moved = any(old.get(name) != new.get(name) for name in (index.partition_key, index.sort_key) if name)
            if moved:
                charges += [charge("index delete", old), charge("index put", new)]
            elif old != new:
                charges.append(charge("index update", new, old))
    return charges


def read_charge(
    table: str, index: str | None, partition_key: str, size: int, *, consistent: bool, transactional: bool = False
) -> Charge:
    # An index is read eventually consistent whatever the request asks (a GSI refuses ConsistentRead).
    units = read_units(size, consistent=consistent and index is None, transactional=transactional)
    return Charge(
        table,
        index,
        partition_key,
        "index read" if index else "table read",
        read=units,
        size=size,
        item="" if index else partition_key,
    )


# ---------------------------------------------------------------- whole DynamoDB requests


@dataclass
class WriteTarget:
    """One item a write request touches: its table and key, and what the request does to it."""

    table: str
    key: dict[str, Any]
    action: str  # Put | Update | Delete | ConditionCheck
    item: dict[str, Any] | None = None  # a Put's item


def write_targets(operation: str, params: Mapping[str, Any], tables: Mapping[str, TableDef]) -> list[WriteTarget]:
    """The items a write request touches (keys as the wire carries them)."""

    def key_of(table: str, item: Mapping[str, Any]) -> dict[str, Any]:
        definition = tables[table]
        return {name: item[name] for name in definition.key_attributes if name in item}

    if operation == "PutItem":
        table = params["TableName"]
        return [WriteTarget(table, key_of(table, params["Item"]), "Put", dict(params["Item"]))]
    if operation in ("UpdateItem", "DeleteItem"):
        return [WriteTarget(params["TableName"], dict(params["Key"]), operation.removesuffix("Item"))]
    if operation == "BatchWriteItem":
        targets = []
        for table, requests in (params.get("RequestItems") or {}).items():
            for request in requests:
                if "PutRequest" in request:
                    item = request["PutRequest"]["Item"]
                    targets.append(WriteTarget(table, key_of(table, item), "Put", dict(item)))
                else:
                    targets.append(WriteTarget(table, dict(request["DeleteRequest"]["Key"]), "Delete"))
        return targets
    if operation == "TransactWriteItems":
        targets = []
        for entry in params.get("TransactItems") or []:
            for action, body in entry.items():
                table = body["TableName"]
                if action == "Put":
                    targets.append(WriteTarget(table, key_of(table, body["Item"]), "Put", dict(body["Item"])))
                else:
                    targets.append(WriteTarget(table, dict(body["Key"]), action))
        return targets
    return []


WRITE_OPERATIONS = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
READ_OPERATIONS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"})


def failed_targets(
    operation: str, status: int, error: str | None, response: Mapping[str, Any], count: int
) -> list[bool]:
    """Which of a write request's ``count`` targets took effect. A conditional failure still bills its writes;
    a transaction cancelled by one condition writes nothing; BatchWriteItem's unprocessed items are not written
    (they are retried, and billed, by the next request)."""
    if status < 300:
        if operation == "BatchWriteItem" and response.get("UnprocessedItems"):
            unprocessed = sum(len(v) for v in response["UnprocessedItems"].values())
            return [True] * (count - unprocessed) + [False] * unprocessed
        return [True] * count
    return [False] * count


def billed_when_failed(error: str | None) -> bool:
    """Errors DynamoDB still bills the write for: a condition that evaluated false (alone or in a transaction)."""
    return bool(error) and any(name in str(error) for name in ("ConditionalCheckFailed", "TransactionCanceled"))


def dynamodb_write_charges(
    operation: str,
    targets: Sequence[WriteTarget],
    befores: Sequence[Mapping[str, Any] | None],
    afters: Sequence[Mapping[str, Any] | None],
    tables: Mapping[str, TableDef],
    *,
    status: int,
    error: str | None,
    response: Mapping[str, Any] | None = None,
) -> list[Charge]:
    """The charges of a write request from the images of each item it touched, before and after."""
    applied = failed_targets(operation, status, error, response or {}, len(targets))
    if status >= 300 and not billed_when_failed(error):
        return []
    transactional = operation == "TransactWriteItems"
    charges: list[Charge] = []
    for target, before, after, took in zip(targets, befores, afters, applied, strict=True):
        if operation == "BatchWriteItem" and not took:
            continue
        table = tables[target.table]
        if target.action == "ConditionCheck":
            size = item_size(before)
            partition = key_text(target.key.get(table.partition_key))
            charges.append(
                Charge(
                    table.name,
                    None,
                    partition,
                    "table write",
                    write=write_units(size, transactional=True),
                    size=size,
                    item=partition,
                )
            )
            continue
        charges += write_charges(
            table, before, after if took else before, succeeded=took, transactional=transactional, attempted=target.item
        )
    return charges


def _scanned_scale(response: Mapping[str, Any]) -> float:
    # A filter drops items after they were read (and billed); moto returns only what passed. Scale the size of
    # what came back by scanned/returned, the best estimate of what was read (the exact sizes are not returned).
    returned = int(response.get("Count") or 0)
    scanned = int(response.get("ScannedCount") or returned)
    return scanned / returned if returned and scanned > returned else 1.0


def dynamodb_read_charges(
    operation: str,
    params: Mapping[str, Any],
    response: Mapping[str, Any],
    tables: Mapping[str, TableDef],
    *,
    status: int,
) -> list[Charge]:
    """The charges of a read request from its response (what it read, projected as the index stores it)."""
    if status >= 300:
        return []
    if operation == "GetItem":
        table = tables[params["TableName"]]
        item = response.get("Item")
        return [
            read_charge(
                table.name,
                None,
                key_text(params["Key"].get(table.partition_key)),
                item_size(item),
                consistent=bool(params.get("ConsistentRead")),
            )
        ]
    if operation in ("Query", "Scan"):
        table = tables[params["TableName"]]
        index_name = params.get("IndexName")
        index = table.index(index_name) if index_name else None
        items = response.get("Items") or []
        entries = [projected(table, index, item) or {} for item in items] if index else items
        size = int(sum(item_size(entry) for entry in entries) * _scanned_scale(response))
        partition = _queried_partition(params, index.partition_key if index else table.partition_key)
        if operation == "Scan":
            partition = "(scan)"
        return [read_charge(table.name, index_name, partition, size, consistent=bool(params.get("ConsistentRead")))]
    if operation == "BatchGetItem":
        charges = []
        for table_name, spec in (params.get("RequestItems") or {}).items():
            table = tables[table_name]
            found = {
                key_text(item.get(table.partition_key)) + "\0" + key_text(item.get(table.sort_key or "")): item
                for item in (response.get("Responses") or {}).get(table_name, [])
            }
            for key in spec.get("Keys") or []:
                lookup = key_text(key.get(table.partition_key)) + "\0" + key_text(key.get(table.sort_key or ""))
                charges.append(
                    read_charge(
                        table.name,
                        None,
                        key_text(key.get(table.partition_key)),
                        item_size(found.get(lookup)),
                        consistent=bool(spec.get("ConsistentRead")),
                    )
                )
        return charges
    if operation == "TransactGetItems":
        charges = []
        responses = response.get("Responses") or []
        for position, entry in enumerate(params.get("TransactItems") or []):
            body = entry.get("Get") or {}
            table = tables[body["TableName"]]
            item = (responses[position] or {}).get("Item") if position < len(responses) else None
            charges.append(
                read_charge(
                    table.name,
                    None,
                    key_text(body["Key"].get(table.partition_key)),
                    item_size(item),
                    consistent=True,
                    transactional=True,
                )
            )
        return charges
    return []


def _queried_partition(params: Mapping[str, Any], partition_attribute: str) -> str:
    """The partition key value a Query names: ``#pk = :pk`` in its KeyConditionExpression."""
    names = params.get("ExpressionAttributeNames") or {}
    values = params.get("ExpressionAttributeValues") or {}
    expression = str(params.get("KeyConditionExpression") or "")
    for clause in expression.replace("(", " ").replace(")", " ").split(" AND "):
        left, equals, right = clause.partition("=")
        if not equals or left.strip().endswith(("<", ">", "!")):
            continue
        name, value = left.strip(), right.strip()
        if names.get(name, name) == partition_attribute and value in values:
            return key_text(values[value])
        if names.get(value, value) == partition_attribute and name in values:
            return key_text(values[name])
    return "(unknown)"


# ---------------------------------------------------------------- SQS


def _message_bytes(body: Any, attributes: Any) -> int:
    size = len(str(body or "").encode())
    for name, value in (attributes or {}).items():
        size += len(name.encode()) + len(str(value.get("DataType", "")).encode())
        for part in ("StringValue", "BinaryValue"):
            if part in value:
                data = value[part]
                size += (
                    len(base64.b64decode(data))
                    if part == "BinaryValue" and isinstance(data, str)
                    else len(str(data).encode())
                )
    return size


def sqs_payload_bytes(operation: str, params: Mapping[str, Any], response: Mapping[str, Any]) -> int:
    """The payload SQS bills a request's chunks by: the messages sent, or received."""
    if operation == "SendMessage":
        return _message_bytes(params.get("MessageBody"), params.get("MessageAttributes"))
    if operation == "SendMessageBatch":
        entries = params.get("Entries") or []
        return sum(_message_bytes(e.get("MessageBody"), e.get("MessageAttributes")) for e in entries)
    if operation == "ReceiveMessage":
        return sum(_message_bytes(m.get("Body"), m.get("MessageAttributes")) for m in response.get("Messages") or [])
    return 0


def sqs_requests(payload_bytes: int) -> int:
    """Billed requests: one per 64 KB chunk of payload, at least one."""
    return max(1, math.ceil(payload_bytes / SQS_CHUNK))


@dataclass
class Totals:
    """Units and requests added up (over a window, per run, ...)."""

    write: float = 0.0
    read: float = 0.0
    by_partition: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (target, key) -> [w, r]

    def add(self, charges: Iterable[Charge]) -> None:
        for charge in charges:
            self.write += charge.write
            self.read += charge.read
            slot = self.by_partition.setdefault((charge.target, charge.partition_key), [0.0, 0.0])
            slot[0] += charge.write
            slot[1] += charge.read
