"""Counting AWS API calls: what the botocore hook writes (one JSON line per call) and how it is read.

``bench/hooks/sitecustomize.py`` is on the PYTHONPATH of the embedded stack's gateway (API function and
authorizer) and agents. It registers botocore event handlers on every session and, for each API call,
writes one line to ``$BENCH_COUNT_DIR/{role}-{pid}.jsonl``::

    {"t0": 1700000000.1, "t1": 1700000000.2, "svc": "dynamodb", "op": "GetItem", "attempts": 1,
     "status": 200, "kind": "RUN/RUN", "consistent": true, "size": 812}

Everything in this module is pure (no AWS, no processes): the hook calls :func:`describe_call` and
:func:`describe_result`; the bench calls :func:`read_calls`, :func:`count` and :func:`capacity_units`.
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

COUNT_DIR_ENV = "BENCH_COUNT_DIR"
ROLES = ("gateway", "agent")
_TYPE_KEYS = frozenset({"S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"})


# ---------------------------------------------------------------- DynamoDB item sizes


def _is_typed(value: Any) -> bool:
    """A wire-format AttributeValue ({"S": "x"}) rather than a plain Python value."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _TYPE_KEYS


def _number_size(text: str) -> int:
    """DynamoDB: about one byte per two significant digits, plus one; leading and trailing zeros do not count."""
    mantissa = text.strip().lstrip("+-").lower().split("e")[0]
    digits = mantissa.replace(".", "").strip("0") if "." in mantissa else mantissa.lstrip("0").rstrip("0")
    return math.ceil(len(digits or "0") / 2) + 1


def value_size(value: Any) -> int:
    """Bytes a value takes in a DynamoDB item, by the rules DynamoDB bills with.

    Strings and binaries: their length in bytes; numbers: about one byte per two significant digits,
    plus one; null and booleans: 1; lists and maps: 3 bytes plus 1 per element, plus the elements
    (and, for a map, its keys). Takes wire-format (``{"S": "x"}``) or plain Python values.
    """
    if _is_typed(value):
        kind, inner = next(iter(value.items()))
        if kind == "S":
            return len(str(inner).encode())
        if kind == "N":
            return _number_size(str(inner))
        if kind == "B":
            # On the wire a binary is base64 text; DynamoDB counts the bytes it decodes to.
            return len(inner) if isinstance(inner, bytes | bytearray) else len(base64.b64decode(str(inner)))
        if kind in ("NULL", "BOOL"):
            return 1
        if kind == "L":
            return 3 + sum(1 + value_size(element) for element in inner)
        if kind == "M":
            return 3 + sum(1 + len(str(name).encode()) + value_size(element) for name, element in inner.items())
        return sum(value_size({kind[0]: element}) for element in inner)  # SS, NS, BS
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, int | float | Decimal):
        return _number_size(str(value))
    if isinstance(value, Mapping):
        return 3 + sum(1 + len(str(name).encode()) + value_size(element) for name, element in value.items())
    if isinstance(value, list | tuple):
        return 3 + sum(1 + value_size(element) for element in value)
    if isinstance(value, set | frozenset):
        return sum(value_size(element) for element in value)
    return len(str(value).encode())


def item_size(item: Mapping[str, Any] | None) -> int:
    """Bytes of a whole item: each attribute's name plus its value."""
    if not item:
        return 0
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def _plain_string(value: Any) -> str | None:
    if _is_typed(value):
        value = value.get("S")
    return value if isinstance(value, str) else None


def key_kind(key: Mapping[str, Any] | None) -> str | None:
    """What kind of item a key names, from its key prefixes: {"pk": "RUN#r1", "sk": "RUN"} -> "RUN/RUN"; an
    environment's items (``ENV#{environment}#RUN#...``, runly_core.records) by what follows the environment, so one kind
    counts every environment's: {"pk": "ENV#default#RUN#r1", "sk": "RUN"} -> "RUN/RUN"."""
    if not key:
        return None
    parts = []
    for name in ("pk", "sk"):
        text = _plain_string(key.get(name))
        if text is not None:
            if name == "pk" and text.startswith("ENV#") and text.count("#") >= 2:
                text = text.split("#", 2)[2]
            parts.append(text.split("#", 1)[0])
    return "/".join(parts) or None


def _query_kind(params: Mapping[str, Any]) -> str | None:
    for value in (params.get("ExpressionAttributeValues") or {}).values():
        text = _plain_string(value)
        if text and "#" in text:
            return text.split("#", 1)[0]
    return None


# ---------------------------------------------------------------- what the hook records


def describe_call(service: str, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What a call's parameters tell about its cost (DynamoDB only: item kinds, sizes, read consistency)."""
    if service != "dynamodb":
        return {}
    detail: dict[str, Any] = {}
    if operation in ("GetItem", "UpdateItem", "DeleteItem"):
        detail["kind"] = key_kind(params.get("Key"))
    if operation == "PutItem":
        detail["kind"] = key_kind(params.get("Item"))
        detail["size"] = item_size(params.get("Item"))
    if operation in ("GetItem", "Query", "Scan"):
        detail["consistent"] = bool(params.get("ConsistentRead", False))
    if operation == "Query":
        # A query of an index is named by the index (its key values are not item kinds); of the table, by the
        # prefix of the partition it reads ("PKG" for PKG#name).
        detail["kind"] = f"index {params['IndexName']}" if params.get("IndexName") else _query_kind(params)
    if operation == "TransactWriteItems":
        items = []
        for entry in params.get("TransactItems") or []:
            for action, body in entry.items():
                item = body.get("Item")
                items.append(
                    {
                        "action": action,
                        "kind": key_kind(item if item is not None else body.get("Key")),
                        "size": item_size(item) if item is not None else None,
                    }
                )
        detail["items"] = items
    if operation == "BatchWriteItem":
        writes = []
        for requests in (params.get("RequestItems") or {}).values():
            for request in requests:
                put = (request.get("PutRequest") or {}).get("Item")
                key = put if put is not None else (request.get("DeleteRequest") or {}).get("Key")
                writes.append({"kind": key_kind(key), "size": item_size(put) if put is not None else None})
        detail["writes"] = writes
        kinds = {write["kind"] for write in writes}
        if len(kinds) == 1:
            detail["kind"] = kinds.pop()
    if operation == "BatchGetItem":
        detail["gets"] = [
            {"kind": key_kind(key), "consistent": bool(spec.get("ConsistentRead", False))}
            for spec in (params.get("RequestItems") or {}).values()
            for key in spec.get("Keys") or []
        ]
    return detail


def describe_result(service: str, operation: str, parsed: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a response tells: how many messages a receive got, the sizes of the items read or returned."""
    if not parsed:
        return {}
    status = (parsed.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    detail: dict[str, Any] = {"status": status} if status is not None else {}
    if "Error" in parsed:
        detail["error"] = (parsed.get("Error") or {}).get("Code")
    if service == "sqs" and operation == "ReceiveMessage":
        detail["messages"] = len(parsed.get("Messages") or [])
    if service != "dynamodb":
        return detail
    if operation == "GetItem":
        detail["size"] = item_size(parsed.get("Item"))
    elif operation in ("UpdateItem", "DeleteItem") and parsed.get("Attributes"):
        detail["size"] = item_size(parsed.get("Attributes"))
    elif operation in ("Query", "Scan"):
        detail["size"] = sum(item_size(item) for item in parsed.get("Items") or [])
        detail["count"] = len(parsed.get("Items") or [])
    elif operation == "BatchGetItem":
        detail["sizes"] = [item_size(item) for items in (parsed.get("Responses") or {}).values() for item in items]
    return detail


# ---------------------------------------------------------------- reading what was recorded


@dataclass(frozen=True)
class Call:
    role: str
    pid: int
    t0: float
    t1: float
    service: str
    operation: str
    attempts: int = 1
    detail: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def kind(self) -> str | None:
        kind = self.detail.get("kind")
        return kind if isinstance(kind, str) else None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.role, self.service, self.operation)


def parse_line(line: str, *, role: str, pid: int) -> Call | None:
    """One recorded call, or None for a line that is not one (e.g. cut short by a killed process)."""
    try:
        record = json.loads(line)
        return Call(
            role=role,
            pid=pid,
            t0=float(record.pop("t0")),
            t1=float(record.pop("t1")),
            service=str(record.pop("svc")),
            operation=str(record.pop("op")),
            attempts=int(record.pop("attempts", 1)),
            detail=record,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def parse_file_name(name: str) -> tuple[str, int] | None:
    """``agent-1234.jsonl`` -> ("agent", 1234)."""
    stem, dot, suffix = name.rpartition(".")
    role, dash, pid = stem.rpartition("-")
    if not dot or suffix != "jsonl" or not dash or not pid.isdigit() or not role:
        return None
    return role, int(pid)


def read_calls(directory: Path, *, pids: Iterable[int] | None = None) -> list[Call]:
    """Every call recorded in ``directory`` (of the given processes only, if ``pids``), by start time."""
    wanted = set(pids) if pids is not None else None
    calls: list[Call] = []
    if not directory.exists():
        return calls
    for path in directory.iterdir():
        parsed = parse_file_name(path.name)
        if parsed is None or (wanted is not None and parsed[1] not in wanted):
            continue
        role, pid = parsed
        for line in path.read_text(errors="replace").splitlines():
            call = parse_line(line, role=role, pid=pid)
            if call is not None:
                calls.append(call)
    return sorted(calls, key=lambda call: call.t0)


def between(calls: Iterable[Call], start: float, end: float) -> Iterator[Call]:
    """Calls that started in [start, end)."""
    return (call for call in calls if start <= call.t0 < end)


def count(calls: Iterable[Call]) -> Counter[tuple[str, str, str]]:
    """Calls by (role, service, operation)."""
    return Counter(call.key for call in calls)


def per_minute(calls: Sequence[Call], seconds: float) -> float:
    return len(calls) * 60.0 / seconds if seconds > 0 else 0.0


def marginal_per_run(
    window: Mapping[Any, float], idle_per_second: Mapping[Any, float], window_seconds: float, runs: int
) -> dict[Any, float]:
    """What ``runs`` runs added to a window's counts: (counted - idle rate x window) / runs, never below 0.

    An agent polls and heartbeats whether or not it has work; those calls are the node's idle cost
    (figure 6), not the runs'.
    """
    if runs <= 0:
        raise ValueError("runs must be positive")
    return {
        key: max(0.0, (value - idle_per_second.get(key, 0.0) * window_seconds) / runs) for key, value in window.items()
    }


# ---------------------------------------------------------------- DynamoDB capacity units


@dataclass(frozen=True)
class Units:
    read: float = 0.0  # read request units (RRU)
    write: float = 0.0  # write request units (WRU)

    def __add__(self, other: Units) -> Units:
        return Units(self.read + other.read, self.write + other.write)


def _read_units(size: int, *, consistent: bool, transactional: bool = False) -> float:
    blocks = max(1, math.ceil(size / 4096))
    if transactional:
        return 2.0 * blocks
    return float(blocks) if consistent else blocks / 2


def _write_units(size: int, *, transactional: bool = False) -> float:
    blocks = max(1, math.ceil(size / 1024))
    return 2.0 * blocks if transactional else float(blocks)


def typical_sizes(calls: Iterable[Call]) -> dict[str, int]:
    """The largest size seen of each kind of item: what a write of that kind whose size the call
    does not show (an UpdateItem returning nothing) is billed at."""
    sizes: dict[str, int] = {}
    for call in calls:
        size = call.detail.get("size")
        kind = call.kind
        if kind and isinstance(size, int) and call.operation in ("GetItem", "PutItem", "UpdateItem", "DeleteItem"):
            sizes[kind] = max(sizes.get(kind, 0), size)
        for item in [*(call.detail.get("items") or []), *(call.detail.get("writes") or [])]:
            if item.get("kind") and isinstance(item.get("size"), int):
                sizes[item["kind"]] = max(sizes.get(item["kind"], 0), item["size"])
    return sizes


def capacity_units(call: Call, typical: Mapping[str, int]) -> Units:
    """DynamoDB on-demand request units of one call.

    Reads: 1 RRU per 4 KB strongly consistent, half that eventually consistent, twice that in a
    transaction. Writes: 1 WRU per 1 KB of the larger of the item before and after (we know the item
    after, or else take the largest of its kind), twice that in a transaction. A ConditionCheck in a transaction
    is billed here as a transactional write of the item it checks (the conservative reading).
    """
    if call.service != "dynamodb":
        return Units()
    detail = call.detail
    operation = call.operation

    def size_of(kind: str | None, known: Any) -> int:
        # A run's items only grow while it runs, so the size after a write is the larger one.
        return known if isinstance(known, int) else typical.get(kind or "", 1024)

    if operation in ("GetItem", "Query", "Scan"):
        return Units(read=_read_units(int(detail.get("size") or 0), consistent=bool(detail.get("consistent"))))
    if operation == "BatchGetItem":
        gets = detail.get("gets") or []
        sizes = list(detail.get("sizes") or [])
        total = 0.0
        for index, get in enumerate(gets):
            size = sizes[index] if index < len(sizes) else 0
            total += _read_units(size, consistent=bool(get.get("consistent")))
        return Units(read=total)
    if operation in ("PutItem", "UpdateItem", "DeleteItem"):
        return Units(write=_write_units(size_of(call.kind, detail.get("size"))))
    if operation == "BatchWriteItem":  # each item of the batch is billed as its own write
        return Units(
            write=sum(_write_units(size_of(item.get("kind"), item.get("size"))) for item in detail.get("writes") or [])
        )
    if operation == "TransactWriteItems":
        return Units(
            write=sum(
                _write_units(size_of(item.get("kind"), item.get("size")), transactional=True)
                for item in detail.get("items") or []
            )
        )
    if operation == "TransactGetItems":
        return Units(read=sum(_read_units(0, consistent=True, transactional=True) for _ in detail.get("items") or []))
    return Units()
