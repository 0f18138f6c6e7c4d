"""DynamoDB and SQS access for the maintenance functions: runs whose lease expired, dead letters.

Which environment a run belongs to is read from its table key (``ENV#{environment}#RUN#{run_id}``, which no node
of another environment can write under), never from an attribute or an index key a node can write; and only runs
the API created (runly_core.run_store.API_CREATED, which no node can write) are acted on (docs/store.md). The
writes are the run store's ``end_abandoned`` (runly_core.run_store); a re-queued run's message goes through the
API's queue access (``RunQueue.dispatch_run``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from boto3.dynamodb.conditions import Key

from functions.dal.queue import RunQueue
from runly_core.records import RunRecord
from runly_core.resources import PARTITION_KEY, RUNS_BY_LEASE, SORT_KEY
from runly_core.run_store import RUN_SORT_KEY, RunStore, api_run, lease_index_partition, lease_sort_key


@dataclass(frozen=True)
class LeaseEntry:
    """What the lease index holds for one item: the run (None: the item is not a run the API created) and its
    table key, for the log."""

    record: RunRecord | None
    partition_key: str


class MaintenanceStore:
    def __init__(self, table_name: str, queue_urls: dict[str, str], *, resource: Any = None, sqs: Any = None) -> None:
        self._table = (resource or boto3.resource("dynamodb")).Table(table_name)
        # The transitions of abandoned runs (reap, dead letter): AS_READ and LEASE_AS_READ, so a live node wins.
        self.runs = RunStore(self._table)
        self.queue = RunQueue(queue_urls, client=sqs)

    @property
    def environments(self) -> tuple[str, ...]:
        return self.queue.environments

    def expired_leases(self, environment: str, before_ms: int) -> Iterator[LeaseEntry]:
        """The items of ``environment``'s lease partition whose lease ended before ``before_ms``.

        A node writes the lease index's keys (a claim puts its run there), so an entry is only a candidate: it is a
        run only if the API created it (API_CREATED, under the table key its id names), and it belongs to the
        environment its table key names, whichever lease partition it was found in (``RunQueue.dispatch_run``).
        The index projects the whole item today; once it projects less (docs/store.md), the candidate is read from
        the table.
        """
        query: dict[str, Any] = {
            "IndexName": RUNS_BY_LEASE.name,
            "KeyConditionExpression": Key(RUNS_BY_LEASE.partition_key).eq(lease_index_partition(environment))
            & Key(RUNS_BY_LEASE.sort_key).lt(lease_sort_key(before_ms)),
        }
        while True:
            page = self._table.query(**query)
            for item in page.get("Items", []):
                partition = str(item.get(PARTITION_KEY, ""))
                yield LeaseEntry(api_run(item) if item.get(SORT_KEY) == RUN_SORT_KEY else None, partition)
            if "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
