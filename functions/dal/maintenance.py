"""DynamoDB and SQS access for the maintenance functions: runs whose lease expired, dead letters.

Which environment a run belongs to is read from its table key (``ENV#{environment}#RUN#{run_id}``, which no node
of another environment can write under), never from an attribute or an index key a node can write; and only runs
the API created (runly_core.run_store.API_CREATED, which no node can write) are acted on (docs/store.md). The
writes are the run store's ``end_abandoned`` (runly_core.run_store); a re-queued run's message goes through the
API's queue access (``RunQueue.dispatch_run``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import boto3
from boto3.dynamodb.conditions import Key
from pydantic import BaseModel

from functions.dal.queue import RunQueue
from runly_core.records import RunRecord, iso, utcnow
from runly_core.resources import PARTITION_KEY, RUNS_BY_LEASE, SORT_KEY
from runly_core.run_store import RUN_SORT_KEY, RunStore, api_run, lease_index_partition, lease_sort_key
from runly_core.table import batch_get

# Where a reaper that stopped at its bound continues (one item; only the reaper writes it).
REAPER_POSITION_KEY = {PARTITION_KEY: "MAINTENANCE#REAPER", SORT_KEY: "POSITION"}


@dataclass(frozen=True)
class LeaseEntry:
    """A lease index entry read back from the table: the run (None: the item is not a run the API created, or
    no item is left under the key) and its table key, for the log."""

    record: RunRecord | None
    partition_key: str
    found: bool = True  # False: no item under the entry's table key (the index lags a deletion)


@dataclass(frozen=True)
class LeasePage:
    """One page of a lease partition's entries whose indexed expiry is before the bound, read from the table, and
    where the partition continues (None: read to its end)."""

    entries: list[LeaseEntry]
    last_evaluated: dict[str, str] | None


class ReaperPosition(BaseModel):
    """Where the next reaper continues: a lease partition (environment and shard) and the index key to start
    after in it (None: from its start)."""

    environment: str
    shard: int
    after: dict[str, str] | None = None


class MaintenanceStore:
    def __init__(self, table_name: str, queue_urls: dict[str, str], *, resource: Any = None, sqs: Any = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)
        self._client = self._table.meta.client
        # The transitions of abandoned runs (reap, dead letter): AS_READ and LEASE_AS_READ, so a live node wins.
        self.runs = RunStore(self._table)
        self.queue = RunQueue(queue_urls, client=sqs)

    @property
    def environments(self) -> tuple[str, ...]:
        return self.queue.environments

    def expired_leases(
        self, environment: str, shard: int, before_ms: int, *, start_after: dict[str, str] | None, limit: int
    ) -> LeasePage:
        """Up to ``limit`` entries of one lease partition whose indexed lease expiry is before ``before_ms``, each
        read from the table (strongly consistent, BatchGetItem) and judged by what the table holds.

        The index is KEYS_ONLY and its expiry is the one last indexed, never later than the run's real lease
        (runly_core.run_store.LEASE_INDEX_REFRESH_MS): an entry is only a candidate. A node writes the lease index's
        keys (a claim puts its run there), so a candidate is a run only if the API created it (API_CREATED, under
        the table key its id names), and it belongs to the environment its table key names, whichever lease
        partition it was found in (``RunQueue.dispatch_run``).
        """
        query: dict[str, Any] = {
            "IndexName": RUNS_BY_LEASE.name,
            "KeyConditionExpression": Key(RUNS_BY_LEASE.partition_key).eq(lease_index_partition(environment, shard))
            & Key(RUNS_BY_LEASE.sort_key).lt(lease_sort_key(before_ms)),
            "Limit": limit,
        }
        if start_after is not None:
            query["ExclusiveStartKey"] = start_after
        page = self._table.query(**query)
        keys = [
            {PARTITION_KEY: str(item[PARTITION_KEY]), SORT_KEY: str(item[SORT_KEY])} for item in page.get("Items", [])
        ]
        last = page.get("LastEvaluatedKey")
        return LeasePage(self._read(keys), {name: str(value) for name, value in last.items()} if last else None)

    def _read(self, keys: Sequence[dict[str, str]]) -> list[LeaseEntry]:
        runs = [key for key in keys if key[SORT_KEY] == RUN_SORT_KEY]
        found = {
            (str(item[PARTITION_KEY]), str(item[SORT_KEY])): item
            for item in batch_get(self._client, self._table.name, runs)
        }
        entries = []
        for key in keys:
            item = found.get((key[PARTITION_KEY], key[SORT_KEY]))
            if key[SORT_KEY] != RUN_SORT_KEY:
                entries.append(LeaseEntry(None, key[PARTITION_KEY]))
            else:
                entries.append(LeaseEntry(api_run(item), key[PARTITION_KEY], found=item is not None))
        return entries

    # ------------------------------------------------------------ the reaper's position
    def reaper_position(self) -> ReaperPosition | None:
        item = self._table.get_item(Key=REAPER_POSITION_KEY, ConsistentRead=True).get("Item")
        if not item or "next" not in item:
            return None
        return ReaperPosition.model_validate(item["next"])

    def save_reaper_position(self, position: ReaperPosition | None) -> None:
        """Remember where the next reaper continues; None: it starts over (the item stays, without a position)."""
        if position is None:
            self._table.update_item(
                Key=REAPER_POSITION_KEY,
                UpdateExpression="SET updated_at = :now REMOVE #next",
                ExpressionAttributeNames={"#next": "next"},
                ExpressionAttributeValues={":now": iso(utcnow())},
            )
            return
        self._table.update_item(
            Key=REAPER_POSITION_KEY,
            UpdateExpression="SET #next = :next, updated_at = :now",
            ExpressionAttributeNames={"#next": "next"},
            ExpressionAttributeValues={":next": position.model_dump(mode="json"), ":now": iso(utcnow())},
        )
