"""DynamoDB access for the API: runs, packages, pins, idempotency keys. boto3 lives here, not in logic.

The store owns the protocol (conditions, states); logic decides what to ask for. Every
write to a run is a transition of the run store (runly_core.run_store), which the agent
and the maintenance functions use too: each state change the API makes is conditional on
the state it read, so it cannot overwrite what an agent wrote in between; a lost race
surfaces as ``StateChanged`` and logic reads again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import boto3
from boto3.dynamodb.conditions import Attr, ConditionBase, Key
from botocore.exceptions import ClientError

from runly_core.records import (
    PACKAGE_INDEX_PARTITION,
    IdempotencyRecord,
    PackageIndexRecord,
    PackageRecord,
    PinRecord,
    RunRecord,
    environment_partition,
    idempotency_key,
    is_run_id,
    package_index_key,
    package_key,
    package_partition,
    pin_key,
)
from runly_core.resources import PARTITION_KEY, RUNS_BY_ENVIRONMENT, SORT_KEY, TTL_ATTRIBUTE
from runly_core.run_store import (
    CHECKPOINT_SORT_KEY,
    CONFIG_SORT_KEY,
    RUN_SORT_KEY,
    TAG_SET,
    CompanionsRefused,
    RunStore,
    StateChanged,
    api_run,
    checkpoint_key,
    run_id_of_partition,
    run_id_of_search_sort_key,
    run_key,
    runs_index_partition,
    tag_set_members,
    with_config,
)
from runly_core.table import AlreadyExists, Unwritten, batch_get, batch_write, condition_failed, error_code, refused_as


class IdempotencyKeyTaken(Exception):
    """Another request stored this Idempotency-Key first; read it and answer with its run."""


class IdempotencyKeysTaken(Exception):
    """Other requests stored some of a batch's Idempotency-Keys first (``positions``: in the pairs given)."""

    def __init__(self, positions: list[int]) -> None:
        super().__init__(f"idempotency keys taken at positions {positions}")
        self.positions = positions


class InvalidStartKey(Exception):
    """DynamoDB refused a query's start position (a cursor that does not fit the query)."""


# Re-exported: logic catches them from the API's store.
__all__ = ["AlreadyExists", "StateChanged", "Unwritten"]
# Version items a Store keeps in memory (least recently used dropped first): see ``Store.get_package``.
PACKAGE_CACHE_SIZE = 256


@dataclass(frozen=True)
class PinAndPackage:
    """What ``Store.get_pin_and_package`` read: the pin (None: unpinned), the version asked for (None: not asked
    for, or no such item) and the package's index entry (None: not asked for, or no such package)."""

    pin: PinRecord | None
    version: PackageRecord | None = None
    index: PackageIndexRecord | None = None


@dataclass(frozen=True)
class RunIndexEntry:
    """A run as the runs-by-environment index holds it: its id and its index sort key (what the search merges
    by); the run itself is read from the table (``get_runs``)."""

    run_id: str
    sort_key: str


@dataclass(frozen=True)
class RunQueryPage:
    """Matching index entries of one Query page of one shard, newest first, and where the next page starts (None:
    exhausted)."""

    entries: list[RunIndexEntry]
    last_evaluated: str | None  # the index sort key of the last entry DynamoDB read, matching or not
    evaluated: int  # entries DynamoDB read (what the query cost), not only those that matched


def _start_key(environment: str, shard: int, sort_key: str) -> dict[str, str]:
    # The index sort key is "{created_at}#{run_id}" (runly_core.run_store.search_sort_key); a start key names both
    # the index's keys and the table's keys of the item to start after.
    run_id = run_id_of_search_sort_key(sort_key)
    return {
        RUNS_BY_ENVIRONMENT.partition_key: runs_index_partition(environment, shard),
        RUNS_BY_ENVIRONMENT.sort_key: sort_key,
        **run_key(run_id),
    }


class Store:
    item_is_new = f"attribute_not_exists({PARTITION_KEY})"

    def __init__(self, table_name: str, *, resource: Any = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)
        # The resource's client takes plain Python values, as the Table does (transactions, batch reads).
        self._client = self._table.meta.client
        self.runs = RunStore(self._table)  # every write to a run item
        # Version items read, by (name, version): a version item is written once, conditionally on being new
        # (``put_new_package``), and never changed nor deleted, so a copy read once stays true for the process.
        # Only items found are kept (a version may be registered after a miss). Pins and the index never are.
        self._packages: OrderedDict[tuple[str, str], PackageRecord] = OrderedDict()
        self._packages_lock = threading.Lock()  # the local stack's gateway serves requests on threads

    # ------------------------------------------------------------ runs
    def put_new_run(self, record: RunRecord) -> None:
        self.runs.create(record)

    def create_run(
        self,
        record: RunRecord,
        *,
        idempotency: IdempotencyRecord | None = None,
        checkpoint: dict[str, Any] | None = None,
        now_epoch: int | None = None,
    ) -> None:
        """Record a new run, with its Idempotency-Key and a copied checkpoint, all or nothing.

        The key's condition lets an expired item (TTL deletion lags) be taken over; a live one
        raises ``IdempotencyKeyTaken``: two concurrent requests with one key make one run.
        """
        companions = []
        if idempotency is not None:
            companions.append(self._new_key_put(idempotency, int(time.time()) if now_epoch is None else now_epoch))
        try:
            self.runs.create(record, companions=companions, checkpoint=checkpoint)
        except CompanionsRefused as exc:
            raise IdempotencyKeyTaken(idempotency.key if idempotency is not None else "") from exc

    def discard_run(self, run_id: str, *, idempotency: IdempotencyRecord | None = None) -> None:
        """Take back a run that was never dispatched, with its checkpoint copy and its Idempotency-Key."""
        self.runs.discard(run_id)
        if idempotency is not None:
            self._delete_own_key(idempotency)

    # ------------------------------------------------------------ runs, many at a time (POST /runs/batch)
    def put_new_runs(self, records: Sequence[RunRecord]) -> None:
        """Record new runs that have no Idempotency-Key (``RunStore.create_many``); ``Unwritten`` if some stay
        unprocessed after every retry."""
        self.runs.create_many(records)

    def create_runs_with_keys(self, pairs: Sequence[tuple[RunRecord, IdempotencyRecord]], *, now_epoch: int) -> None:
        """Record runs with their Idempotency-Keys, each run with its key, in transactions of up to 50 pairs.

        The key's condition is ``create_run``'s. If a key is live (a concurrent request took it since it was
        read), that transaction writes nothing and ``IdempotencyKeysTaken`` names the positions of such keys;
        the transactions before it stay written (the caller takes them back).
        """
        try:
            self.runs.create_many_with([(record, self._new_key_put(key, now_epoch)) for record, key in pairs])
        except CompanionsRefused as exc:
            raise IdempotencyKeysTaken(exc.positions) from exc

    def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        """The runs that exist among ``run_ids``, with their configs, strongly consistent, 100 per call; ``Unread``
        (503) if DynamoDB kept some keys unprocessed through every retry."""
        items = self._batch_get([run_key(run_id) for run_id in dict.fromkeys(run_ids) if is_run_id(run_id)])
        records = [record for record in map(api_run, items) if record is not None]
        return {record.run_id: record for record in self.with_configs(records)}

    def with_configs(self, records: Sequence[RunRecord]) -> list[RunRecord]:
        """``records`` (read from their run items) with their configs, from their CONFIG items, 100 per call."""
        return self.runs.configs(records) if records else []

    def get_idempotency_many(self, owner: str, keys: Sequence[str]) -> dict[str, IdempotencyRecord]:
        """The stored Idempotency-Keys among ``keys`` of one API key (expired ones included), 100 per call."""
        items = self._batch_get([idempotency_key(owner, key) for key in keys])
        return {record.key: record for record in (IdempotencyRecord.from_item(item) for item in items)}

    def mark_dispatched_many(self, records: Sequence[IdempotencyRecord]) -> None:
        """``mark_dispatched`` for many keys, 25 per call: each key item written again with ``dispatched``.

        Unconditional, unlike ``mark_dispatched``: these keys were written by this request moments ago and stay
        live for 24 h, so no other request can have taken them over.
        """
        batch_write(
            self._client,
            self._table.name,
            [{"PutRequest": {"Item": record.model_copy(update={"dispatched": True}).to_item()}} for record in records],
        )

    def discard_runs(self, records: Sequence[RunRecord], keys: Sequence[IdempotencyRecord] = ()) -> None:
        """``discard_run`` for runs a batch recorded but did not dispatch (they have no checkpoint copy)."""
        self.runs.discard_many([record.run_id for record in records])
        for key in keys:
            self._delete_own_key(key)

    def _new_key_put(self, idempotency: IdempotencyRecord, now_epoch: int) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._table.name,
                "Item": idempotency.to_item(),
                # An expired item (TTL deletion lags) may be taken over; a live one may not.
                "ConditionExpression": f"{self.item_is_new} OR #expires <= :now",
                "ExpressionAttributeNames": {"#expires": TTL_ATTRIBUTE},
                "ExpressionAttributeValues": {":now": now_epoch},
            }
        }

    def _delete_own_key(self, idempotency: IdempotencyRecord) -> None:
        try:
            # Only our own key item: if it already names another run, it is not ours to delete.
            self._table.delete_item(
                Key=idempotency_key(idempotency.owner, idempotency.key),
                ConditionExpression="run_id = :run_id",
                ExpressionAttributeValues={":run_id": idempotency.run_id},
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise

    def _batch_get(self, keys: list[dict[str, str]]) -> list[dict[str, Any]]:
        return batch_get(self._client, self._table.name, keys)

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run with its config (its RUN and CONFIG items, one BatchGetItem), or None: no such run, an id no
        run can have, or an item the API did not create."""
        return self.runs.get_with_config(run_id)

    def get_run_and_checkpoint(self, run_id: str) -> tuple[RunRecord | None, str | None]:
        """The run (with its config) and its last checkpoint as stored (``checkpoint_json``: its state inline, or a
        ``state_ref`` into S3, read by runly_core.run_objects.load_checkpoint) in one strongly consistent call.

        A batch read of the three keys (RUN, CONFIG, CHECKPOINT) rather than a Query of the run's partition: it
        reads exactly these items, whatever else a run's partition may come to hold.
        """
        found = self.runs.get_items(run_id, (RUN_SORT_KEY, CONFIG_SORT_KEY, CHECKPOINT_SORT_KEY))
        record = api_run(found.get(RUN_SORT_KEY))
        if record is None:
            return None, None
        checkpoint = found.get(CHECKPOINT_SORT_KEY)
        return (
            with_config(record, found.get(CONFIG_SORT_KEY)),
            checkpoint["checkpoint_json"] if checkpoint and "checkpoint_json" in checkpoint else None,
        )

    def get_checkpoint_item(self, run_id: str) -> dict[str, Any] | None:
        """The raw checkpoint item (without its keys): what a resumed requeue copies."""
        item = self._table.get_item(Key=checkpoint_key(run_id), ConsistentRead=True).get("Item")
        if not item:
            return None
        return {name: value for name, value in item.items() if name not in (PARTITION_KEY, SORT_KEY)}

    def cancel_queued(self, run_id: str, *, now: str, error: dict[str, Any]) -> RunRecord:
        """Queued -> Cancelled, only if still Queued (``RunStore.cancel_queued``); StateChanged if not."""
        return self.runs.cancel_queued(run_id, now=now, error=error)

    def request_cancel(self, run_id: str, *, now: str, requested_by: str) -> RunRecord:
        """Running -> Cancelling, only if still Running (``RunStore.request_cancel``); StateChanged if not."""
        return self.runs.request_cancel(run_id, now=now, requested_by=requested_by)

    def query_runs(
        self,
        environment: str,
        shard: int,
        *,
        created_from: str | None,
        created_before: str | None,
        filters: dict[str, str],
        start_after: str | None,
        page_size: int,
        start_at: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> RunQueryPage:
        """One page of one shard of an environment's runs, newest first, from the runs-by-environment index.

        The time range is the key condition (``created_from`` inclusive, ``created_before``
        exclusive, both ``runly_core.records.iso`` strings); the other filters are a filter
        expression on the attributes the index projects (runly_core.resources.RUN_SEARCH_ATTRIBUTES), so a page
        may hold fewer matches than ``page_size`` without being the last. The index is eventually consistent: a
        reader checks the filters again on the runs it reads from the table. ``start_at``: an index sort key to
        start at (inclusive; ``start_after`` starts after one).
        """
        unprojected = set(filters) - set(RUNS_BY_ENVIRONMENT.non_key_attributes)
        if unprojected:
            raise ValueError(f"the runs index does not project {sorted(unprojected)}")
        key: ConditionBase = Key(RUNS_BY_ENVIRONMENT.partition_key).eq(runs_index_partition(environment, shard))
        sort = Key(RUNS_BY_ENVIRONMENT.sort_key)
        # "{created_at}#{run_id}" sorts after "{created_at}" and before any later time: the bounds need no run id.
        # BETWEEN is inclusive at both ends: created_before is exclusive, but no sort key equals a bare time.
        upper = start_at if start_at is not None else created_before
        if created_from is not None and upper is not None:
            key = key & sort.between(created_from, upper)
        elif created_from is not None:
            key = key & sort.gte(created_from)
        elif start_at is not None:
            key = key & sort.lte(start_at)
        elif created_before is not None:
            key = key & sort.lt(created_before)
        query: dict[str, Any] = {
            "IndexName": RUNS_BY_ENVIRONMENT.name,
            "KeyConditionExpression": key,
            "ScanIndexForward": False,
            "Limit": page_size,
        }
        condition: ConditionBase | None = None
        for name, value in sorted(filters.items()):
            clause = Attr(name).eq(value)
            condition = clause if condition is None else condition & clause
        for member in tag_set_members(tags or {}):
            clause = Attr(TAG_SET).contains(member)
            condition = clause if condition is None else condition & clause
        if condition is not None:
            query["FilterExpression"] = condition
        if start_after is not None:
            query["ExclusiveStartKey"] = _start_key(environment, shard, start_after)
        try:
            page = self._table.query(**query)
        except ClientError as exc:
            if error_code(exc) == "ValidationException" and start_after is not None:
                raise InvalidStartKey(str(exc)) from exc
            raise
        last = page.get("LastEvaluatedKey")
        entries = []
        for item in page.get("Items", []):
            sort_key = str(item[RUNS_BY_ENVIRONMENT.sort_key])
            run_id = run_id_of_partition(str(item[PARTITION_KEY]))
            # The table key names the run (a node cannot write under another's); an entry whose index sort key
            # names another run is no run's entry.
            if run_id is not None and run_id_of_search_sort_key(sort_key) == run_id:
                entries.append(RunIndexEntry(run_id=run_id, sort_key=sort_key))
        return RunQueryPage(
            entries=entries,
            last_evaluated=str(last[RUNS_BY_ENVIRONMENT.sort_key]) if last else None,
            evaluated=int(page.get("ScannedCount", 0)),
        )

    # ------------------------------------------------------------ idempotency keys
    def get_idempotency(self, owner: str, key: str) -> IdempotencyRecord | None:
        item = self._table.get_item(Key=idempotency_key(owner, key), ConsistentRead=True).get("Item")
        return IdempotencyRecord.from_item(item) if item else None

    def mark_dispatched(self, record: IdempotencyRecord) -> None:
        self._table.update_item(
            Key=idempotency_key(record.owner, record.key),
            UpdateExpression="SET dispatched = :yes",
            ConditionExpression="run_id = :run_id",
            ExpressionAttributeValues={":yes": True, ":run_id": record.run_id},
        )

    # ------------------------------------------------------------ packages
    def put_new_package(self, record: PackageRecord) -> None:
        """Register a version and add it to its package's index entry, in one transaction."""
        with refused_as(lambda: AlreadyExists(f"{record.name} {record.version}"), item=0):
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self._table.name,
                            "Item": record.to_item(),
                            "ConditionExpression": self.item_is_new,
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table.name,
                            "Key": package_index_key(record.name),
                            # ADD to a string set commutes: concurrent registrations of one package both land.
                            "UpdateExpression": "SET #name = :name, updated_at = :now ADD versions :version",
                            "ExpressionAttributeNames": {"#name": "name"},
                            "ExpressionAttributeValues": {
                                ":name": record.name,
                                ":now": record.created_at,
                                ":version": {record.version},
                            },
                        }
                    },
                ]
            )

    def get_package(self, name: str, version: str) -> PackageRecord | None:
        """One version, with its jobs' schemas; ``version`` as registered (PEP 440 normal form). From memory if
        this Store read it before (version items never change), else read and kept."""
        cached = self._cached_package(name, version)
        if cached is not None:
            return cached
        item = self._table.get_item(Key=package_key(name, version), ConsistentRead=True).get("Item")
        return self._keep_package(PackageRecord.from_item(item)) if item else None

    def get_pin_and_package(
        self, environment: str, name: str, *, version: str | None = None, index: bool = False
    ) -> PinAndPackage:
        """The environment's pin of a package, with one of its versions (``version``, as registered) and/or its
        index entry (``index``), in one strongly consistent round trip: a BatchGetItem, or a GetItem of the pin
        alone when the version is in memory (``get_package``) and the index is not asked for."""
        wanted = {"pin": pin_key(environment, name)}
        record = self._cached_package(name, version) if version is not None else None
        if version is not None and record is None:
            wanted["version"] = package_key(name, version)
        if index:
            wanted["index"] = package_index_key(name)
        if len(wanted) == 1:
            item = self._table.get_item(Key=wanted["pin"], ConsistentRead=True).get("Item")
            return PinAndPackage(pin=PinRecord.from_item(item) if item else None, version=record)
        found = {(item[PARTITION_KEY], item[SORT_KEY]): item for item in self._batch_get(list(wanted.values()))}
        items = {what: found.get((key[PARTITION_KEY], key[SORT_KEY])) for what, key in wanted.items()}
        pin, version_item, index_item = items["pin"], items.get("version"), items.get("index")
        if version_item:
            record = self._keep_package(PackageRecord.from_item(version_item))
        return PinAndPackage(
            pin=PinRecord.from_item(pin) if pin else None,
            version=record,
            index=PackageIndexRecord.from_item(index_item) if index_item else None,
        )

    def _cached_package(self, name: str, version: str) -> PackageRecord | None:
        with self._packages_lock:
            record = self._packages.get((name, version))
            if record is None:
                return None
            self._packages.move_to_end((name, version))
        return record.model_copy()  # a copy: what a caller does to it stays out of the cache

    def _keep_package(self, record: PackageRecord) -> PackageRecord:
        with self._packages_lock:
            self._packages[(record.name, record.version)] = record.model_copy()
            self._packages.move_to_end((record.name, record.version))
            while len(self._packages) > PACKAGE_CACHE_SIZE:
                self._packages.popitem(last=False)
        return record

    def get_package_index(self, name: str) -> PackageIndexRecord | None:
        """A package's index entry: its versions, without reading any version item (nor its schemas)."""
        item = self._table.get_item(Key=package_index_key(name), ConsistentRead=True).get("Item")
        return PackageIndexRecord.from_item(item) if item else None

    def package_versions(self, name: str) -> list[PackageRecord]:
        query: dict[str, Any] = {"KeyConditionExpression": Key(PARTITION_KEY).eq(package_partition(name))}
        return [PackageRecord.from_item(item) for item in self._query_all(query)]

    def package_index(self) -> list[PackageIndexRecord]:
        query: dict[str, Any] = {"KeyConditionExpression": Key(PARTITION_KEY).eq(PACKAGE_INDEX_PARTITION)}
        return [PackageIndexRecord.from_item(item) for item in self._query_all(query)]

    # ------------------------------------------------------------ pins
    def put_pin(self, record: PinRecord) -> None:
        self._table.put_item(Item=record.to_item())

    def get_pin(self, environment: str, package: str) -> PinRecord | None:
        item = self._table.get_item(Key=pin_key(environment, package), ConsistentRead=True).get("Item")
        return PinRecord.from_item(item) if item else None

    def delete_pin(self, environment: str, package: str) -> bool:
        """Whether there was a pin to delete."""
        try:
            self._table.delete_item(
                Key=pin_key(environment, package), ConditionExpression=f"attribute_exists({PARTITION_KEY})"
            )
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def pins(self, environment: str) -> list[PinRecord]:
        query: dict[str, Any] = {
            "KeyConditionExpression": Key(PARTITION_KEY).eq(environment_partition(environment))
            & Key(SORT_KEY).begins_with("PIN#"),
            "ConsistentRead": True,
        }
        return [PinRecord.from_item(item) for item in self._query_all(query)]

    # ------------------------------------------------------------ helpers
    def _query_all(self, query: dict[str, Any]) -> Sequence[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self._table.query(**query)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
