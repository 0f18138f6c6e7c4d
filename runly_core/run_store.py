"""The run's state machine on the table: every write to a run item, as named transitions with named conditions.

A run moves Queued -> Running -> (Cancelling) -> Succeeded | Failed | Cancelled | TimedOut, and back to Queued
for a retry. Each move is one transition below, written once, conditional on what its writer knows:

- ``create`` (API; a requeue creates a run with a copied checkpoint): ``IS_NEW``;
- ``cancel_queued``, ``request_cancel`` (API): ``IN_STATE``, the state it read;
- ``claim`` (node: a first attempt, a retry, a takeover): ``AS_READ``, and ``LEASE_AS_READ`` on a takeover;
- ``end_abandoned`` (a claim that finds the run's node lost, the reaper, a dead letter): ``AS_READ`` and
  ``LEASE_AS_READ``;
- ``renew`` (node heartbeat: lease, progress, keeping a handed-over message): ``HOLDS_LEASE``, with
  ``STILL_RUNNING`` and ``NO_HANDOFF`` on the common beat;
- ``hand_over`` (node): ``HOLDS_LEASE`` and ``NO_HANDOFF``;
- ``write_checkpoint`` (node): ``HOLDS_LEASE``, a ConditionCheck beside the checkpoint item's Update;
- ``end_attempt`` (node: terminal, or Queued for a retry): ``HOLDS_LEASE``.

A failed condition becomes a domain exception ``from`` the ClientError: ``RunChanged`` (the run moved since it was
read), ``LeaseLost`` (a fenced write of an attempt that no longer holds the lease), ``StateChanged`` (the API's
read is stale), ``AlreadyExists``. The attempt number is the fencing token (docs/agent.md).

A node's credentials bound what it may write (functions.nodes.policy, docs/store.md): its transitions are
UpdateItem (a ConditionCheck and an Update in the checkpoint's transaction) naming only the lease attributes, with
ReturnValues NONE; what an ALL_NEW would have told it is read from a failed condition instead (``renew``).

The run item's layout, its keys and index attributes, is here too (``run_key``, ``run_item``,
``lease_index_attributes``, ``index_shard``): sharded index partitions, written by this module alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from runly_core.contracts import AttemptView, FailureReason, RunState
from runly_core.records import (
    ObjectRef,
    RunRecord,
    environment_of_partition,
    environment_prefix,
    is_run_id,
    iso,
    run_environment,
    utcnow,
)
from runly_core.resources import PARTITION_KEY, RUNS_BY_ENVIRONMENT, RUNS_BY_LEASE, SORT_KEY
from runly_core.table import AlreadyExists, batch_get, batch_write, condition_failed, refused_as

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the run item's layout (docs/store.md)
RUN_PARTITION = "RUN#"
RUN_SORT_KEY = "RUN"
CHECKPOINT_SORT_KEY = "CHECKPOINT"
# The run's config (up to 64 KB): its own item, written once with the run, so the hot run item keeps its size only.
CONFIG_SORT_KEY = "CONFIG"
CONFIG_ATTRIBUTE = "config_json"
# Index partitions of an environment's runs, each with a shard suffix "#{shard:02d}" (docs/store.md, "The indexes").
RUNS_INDEX_PARTITION = "RUNS"
LEASE_INDEX_PARTITION = "LEASED"
# Written by the API on every run item it creates and never by a node (the node's policy cannot name it): the
# reaper and the dead-letter handler act only on runs that carry it.
API_CREATED = "api_created"
# The run's tags as "key=value" strings (a string set, only on a run with tags): what a search's tag filter reads
# (DynamoDB's contains() on a set; a map's keys could not be named in a filter without escaping every one).
TAG_SET = "tag_set"
# Written by a node that received a message of a run another attempt holds: the holder keeps that message (agent).
MESSAGE_HANDOFF = "message_handoff"
# What names a lease's owner and puts the run in the lease index, and a message offered to the attempt holding it:
# all go when the lease ends.
LEASE_ATTRIBUTES = (
    "lease_owner",
    "lease_until_ms",
    RUNS_BY_LEASE.partition_key,
    RUNS_BY_LEASE.sort_key,
    MESSAGE_HANDOFF,
)
LEASE_REMOVE = "REMOVE " + ", ".join(LEASE_ATTRIBUTES)
# A new run is this many transaction actions (its item and its CONFIG item); a transaction takes at most 100.
RUN_ACTIONS = 2
TRANSACTION_ACTIONS = 100


# Index partitions of an environment's runs are spread over this many shards (docs/store.md, "The indexes"): a
# partition key takes at most 1,000 write units/s, so one environment's runs may be created at up to
# 0.5 * 1,000 * RUN_INDEX_SHARDS / (index writes per run) a second with every shard under half its limit.
# Changing it re-keys every run index entry: it is part of the table's key design, not a setting.
RUN_INDEX_SHARDS = 16
# A renewal moves the run's lease index entry (its sort key, the lease expiry as last indexed) only when the lease it
# writes ends at least this long after the indexed one: with a 15 s heartbeat, one beat in 16 writes an index item.
# The indexed expiry is never later than the real lease (both only grow within an attempt, and the index is moved
# to the lease being written), so the reaper, which looks for entries older than its grace, misses no expired lease;
# an entry that looks expired while its lease is live is read from the table and left alone (docs/agent.md).
LEASE_INDEX_REFRESH_MS = 4 * 60 * 1000


def index_shard(run_id: str) -> int:
    """The index shard of a run, from its id alone: every writer (the API creating it, the node claiming it, the
    timer releasing it) computes the same one without a read. A stable hash (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(run_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % RUN_INDEX_SHARDS


def run_partition(run_id: str) -> str:
    return f"{environment_prefix(run_environment(run_id))}{RUN_PARTITION}{run_id}"


def run_id_of_partition(partition: str) -> str | None:
    """The run id of a run's partition key, if it is one and its environment agrees with the id's."""
    environment = environment_of_partition(partition)
    if environment is None:
        return None
    run_id = partition.removeprefix(f"{environment_prefix(environment)}{RUN_PARTITION}")
    if run_id == partition or not is_run_id(run_id) or run_environment(run_id) != environment:
        return None
    return run_id


def run_key(run_id: str) -> dict[str, str]:
    return {PARTITION_KEY: run_partition(run_id), SORT_KEY: RUN_SORT_KEY}


def checkpoint_key(run_id: str) -> dict[str, str]:
    """The run's last checkpoint: its own item, so the run item stays small; written only by the lease holder."""
    return {PARTITION_KEY: run_partition(run_id), SORT_KEY: CHECKPOINT_SORT_KEY}


def config_key(run_id: str) -> dict[str, str]:
    """The run's config: written by the API in the same transaction (or before, in a batch) as the run item, never
    changed; read by the claim after its fenced write and by the API beside the run (docs/store.md)."""
    return {PARTITION_KEY: run_partition(run_id), SORT_KEY: CONFIG_SORT_KEY}


def runs_index_partition(environment: str, shard: int) -> str:
    """A runs-by-environment index partition of an environment's runs (``gsi1pk``): ``ENV#{env}#RUNS#{shard:02d}``."""
    return f"{environment_prefix(environment)}{RUNS_INDEX_PARTITION}#{shard:02d}"


def lease_index_partition(environment: str, shard: int) -> str:
    """A runs-by-lease index partition of an environment's leased runs (``gsi2pk``):
    ``ENV#{env}#LEASED#{shard:02d}``."""
    return f"{environment_prefix(environment)}{LEASE_INDEX_PARTITION}#{shard:02d}"


def lease_sort_key(lease_until_ms: int) -> str:
    # Zero-padded so that string order is time order in the lease index.
    return f"{lease_until_ms:015d}"


def search_index_attributes(record: RunRecord) -> dict[str, str]:
    """The run's place in the runs-by-environment index: written once, when it is created."""
    return {
        RUNS_BY_ENVIRONMENT.partition_key: runs_index_partition(record.environment, index_shard(record.run_id)),
        RUNS_BY_ENVIRONMENT.sort_key: search_sort_key(record.created_at, record.run_id),
    }


def search_sort_key(created_at: str, run_id: str) -> str:
    return f"{created_at}#{run_id}"


def run_id_of_search_sort_key(sort_key: str) -> str:
    return sort_key.split("#", 1)[1]


def lease_index_attributes(run_id: str, lease_until_ms: int) -> dict[str, str]:
    """The run's place in the runs-by-lease index while a lease until ``lease_until_ms`` is held."""
    return {
        RUNS_BY_LEASE.partition_key: lease_index_partition(run_environment(run_id), index_shard(run_id)),
        RUNS_BY_LEASE.sort_key: lease_sort_key(lease_until_ms),
    }


def run_item(record: RunRecord, *, api_created: bool = True) -> dict[str, Any]:
    """The whole item of a run: its fields, its keys, its index attributes, and (as the API writes it) the
    API_CREATED mark. ``api_created=False`` is an item no run may be taken from (tests write it as a forgery)."""
    item = record.model_dump(mode="json", exclude_none=True, exclude={CONFIG_ATTRIBUTE})
    item["config_bytes"] = len(record.required_config_json.encode())
    item.update(run_key(record.run_id))
    item.update(search_index_attributes(record))
    if record.lease_until_ms is not None and not record.state.terminal:
        item.update(lease_index_attributes(record.run_id, record.lease_until_ms))
    if record.tags:
        item[TAG_SET] = set(tag_set_members(record.tags))
    if api_created:
        item[API_CREATED] = True
    return item


def tag_set_members(tags: dict[str, str]) -> list[str]:
    """The members of a run's tag set: a key holds no '=', so ``key=value`` names one tag unambiguously."""
    return [f"{key}={value}" for key, value in sorted(tags.items())]


def config_item(record: RunRecord) -> dict[str, Any]:
    """The run's CONFIG item: its config as JSON text, marked API_CREATED like the run (a node cannot write either)."""
    return {**config_key(record.run_id), CONFIG_ATTRIBUTE: record.required_config_json, API_CREATED: True}


def with_config(record: RunRecord, item: dict[str, Any] | None) -> RunRecord:
    """``record`` with its config from its CONFIG item. The API writes both in one transaction (or the config
    first), so a run without its config is a broken store: said so, never served as an empty config."""
    if not item or item.get(API_CREATED) is not True or not isinstance(item.get(CONFIG_ATTRIBUTE), str):
        raise MissingConfig(record.run_id)
    return record.model_copy(update={"config_json": item[CONFIG_ATTRIBUTE]})


def api_run(item: dict[str, Any] | None) -> RunRecord | None:
    """The run an item holds, if the API created it: marked API_CREATED, under the partition its id names, and a
    valid record. Any other item under a run's key (one a node could have written with its own credentials) is no
    run; nor is one whose attributes a node made invalid (it is logged)."""
    if not item or item.get(API_CREATED) is not True:
        return None
    try:
        record = RunRecord.from_item(item)
    except ValidationError:
        log.error("the item under %.200s is not a run record; ignored", item.get(PARTITION_KEY))
        return None
    if run_id_of_partition(str(item[PARTITION_KEY])) != record.run_id or run_environment(record.run_id) != (
        record.environment
    ):
        return None
    return record


# ---------------------------------------------------------------- what a run whose node was lost becomes
def abandoned_outcome(record: RunRecord) -> tuple[RunState, FailureReason, str]:
    """Where a run whose node was lost (its lease expired) goes: Cancelled if a cancel was asked, Failed as
    node_lost when the lost attempt was its last (``max_attempts``), else Queued for another attempt. The reaper
    and a node taking the lease over both decide by it, so a run never gets more attempts than it allows."""
    if record.state is RunState.CANCELLING:
        return RunState.CANCELLED, FailureReason.CANCELLED, "cancelled; its node was lost"
    if record.attempt >= record.max_attempts:
        message = f"its node was lost during attempt {record.attempt} of {record.max_attempts}"
        return RunState.FAILED, FailureReason.NODE_LOST, message
    return RunState.QUEUED, FailureReason.NODE_LOST, "lease expired"


# ---------------------------------------------------------------- domain exceptions
class RunChanged(Exception):
    """A transition conditional on the run as read found it moved (a node renewed, claimed or finished it)."""


class MissingConfig(Exception):
    """A run's CONFIG item is missing or not the API's: never expected (it is written with the run)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id}: its CONFIG item is missing")
        self.run_id = run_id


class LeaseLost(Exception):
    """A fenced write failed: another attempt owns the run, or it was finished."""


class StateChanged(Exception):
    """A conditional state change found the run in another state than the one it was read in."""


class CompanionsRefused(Exception):
    """Items written in one transaction with new runs (their Idempotency-Keys) failed their own conditions;
    ``positions``: which, by the position of their run in the request."""

    def __init__(self, positions: list[int]) -> None:
        super().__init__(f"companion items refused at positions {positions}")
        self.positions = positions


@dataclass(frozen=True)
class Renewal:
    """What ``RunStore.renew`` learned: None for the common beat (still Running, nothing handed over), else the
    run item it read once the plain fenced renewal was written; and the lease expiry the lease index now holds for
    the run (the renewer passes it to the next renewal)."""

    item: dict[str, Any] | None
    indexed_until_ms: int = 0


_FENCE_NAMES = {"#attempt": "attempt", "#owner": "lease_owner", "#state": "state"}
_AS_READ_NAMES = {"#attempt": "attempt", "#state": "state"}


class RunStore:
    """Every write to a run item (and its checkpoint item) on ``table`` (a boto3 DynamoDB ``Table`` resource,
    injected: the API's, the maintenance functions' or a node's, each with its own credentials)."""

    # ------------------------------------------------------------ named conditions
    # No item under the key: a new run (its id is new by construction; this makes a collision loud).
    IS_NEW = f"attribute_not_exists({PARTITION_KEY})"
    # The run is in the state the API read: a node's write in between wins and the API reads again.
    IN_STATE = "#state = :expected"
    # Nothing moved the run since it was read: its attempt number (the fencing token) and its state.
    AS_READ = "#attempt = :prev_attempt AND #state = :prev_state"
    # The lease is the one read (judged expired): a renewal since then told its job a later deadline.
    LEASE_AS_READ = "lease_until_ms = :prev_until"
    NEVER_LEASED = "attribute_not_exists(lease_until_ms)"
    # This attempt, on this node, holds the lease of a live run.
    HOLDS_LEASE = "#attempt = :attempt AND #owner = :node AND #state IN (:running, :cancelling)"
    # No cancel asked (a heartbeat that finds one reads the run to learn it).
    STILL_RUNNING = "#state = :running"
    # No message of the run is waiting for this attempt (hand_over writes one).
    NO_HANDOFF = f"(attribute_not_exists({MESSAGE_HANDOFF}) OR {MESSAGE_HANDOFF}.attempt <> :attempt)"

    def __init__(self, table: Any, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._table = table
        # The resource's client takes plain Python values, as the Table does (transactions, batch writes).
        self._client = table.meta.client
        self._sleep = sleep

    @property
    def table_name(self) -> str:
        return str(self._table.name)

    # ------------------------------------------------------------ reads
    def read_item(self, run_id: str) -> dict[str, Any] | None:
        """The run's item as stored, strongly consistent (None: none under its key)."""
        item = self._table.get_item(Key=run_key(run_id), ConsistentRead=True).get("Item")
        return dict(item) if item else None

    def get(self, run_id: str) -> RunRecord | None:
        """The run the API created under this id (``api_run``), or None."""
        if not is_run_id(run_id):
            return None
        return api_run(self.read_item(run_id))

    def read_config(self, record: RunRecord) -> RunRecord:
        """``record`` with its config (one strongly consistent GetItem of its CONFIG item); MissingConfig if none."""
        item = self._table.get_item(Key=config_key(record.run_id), ConsistentRead=True).get("Item")
        return with_config(record, dict(item) if item else None)

    def get_with_config(self, run_id: str) -> RunRecord | None:
        """The run the API created, with its config: its RUN and CONFIG items in one BatchGetItem."""
        found = self.get_items(run_id, (RUN_SORT_KEY, CONFIG_SORT_KEY))
        record = api_run(found.get(RUN_SORT_KEY))
        return None if record is None else with_config(record, found.get(CONFIG_SORT_KEY))

    def get_items(self, run_id: str, sort_keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Items of the run's partition by sort key, strongly consistent, in one BatchGetItem (UnprocessedKeys
        retried until none is left: runly_core.table.batch_get); an id no run can have has none."""
        if not is_run_id(run_id):
            return {}
        partition = run_partition(run_id)
        keys = [{PARTITION_KEY: partition, SORT_KEY: sort_key} for sort_key in sort_keys]
        found = batch_get(self._client, self.table_name, keys, sleep=self._sleep)
        return {str(item[SORT_KEY]): dict(item) for item in found if item.get(PARTITION_KEY) == partition}

    def configs(self, records: Sequence[RunRecord]) -> list[RunRecord]:
        """``records`` with their configs, read in BatchGetItems of 100 (a page of search results)."""
        found = batch_get(self._client, self.table_name, [config_key(r.run_id) for r in records], sleep=self._sleep)
        by_partition = {str(item[PARTITION_KEY]): dict(item) for item in found}
        return [with_config(r, by_partition.get(run_partition(r.run_id))) for r in records]

    # ------------------------------------------------------------ create (the API)
    def _put_new(self, record: RunRecord) -> list[dict[str, Any]]:
        """The Puts of a new run: its item and its CONFIG item, each IS_NEW (``RUN_ACTIONS`` of them)."""
        return [
            {"Put": {"TableName": self.table_name, "Item": item, "ConditionExpression": self.IS_NEW}}
            for item in (run_item(record), config_item(record))
        ]

    def create(
        self,
        record: RunRecord,
        *,
        companions: Sequence[dict[str, Any]] = (),
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        """Record a new run, with ``companions`` (transaction actions of other items: its Idempotency-Key) and a
        copied checkpoint (a resumed requeue), all or nothing. AlreadyExists if the run id is taken;
        CompanionsRefused([0]) if a companion's own condition failed.

        No run exists without its config: alone, the CONFIG item is put first and the run item after it, each
        IS_NEW (two standard writes: a transaction bills each item twice, DynamoDB's pricing of transactional
        writes); with companions or a checkpoint, all are one transaction. A run put that fails after its config
        leaves that CONFIG item without a run: nothing reads it (every reader starts from the run item), and it is
        never deleted here, since a put whose answer was lost may have written the run."""
        if not companions and checkpoint is None:
            with refused_as(lambda: AlreadyExists(record.run_id)):
                self._table.put_item(Item=config_item(record), ConditionExpression=self.IS_NEW)
            with refused_as(lambda: AlreadyExists(record.run_id)):
                self._table.put_item(Item=run_item(record), ConditionExpression=self.IS_NEW)
            return
        items = [*self._put_new(record), *companions]
        if checkpoint is not None:
            items.append(
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": {**checkpoint, **checkpoint_key(record.run_id)},
                        "ConditionExpression": self.IS_NEW,
                    }
                }
            )
        try:
            self._client.transact_write_items(TransactItems=items)
        except Exception as exc:
            first = RUN_ACTIONS
            if any(condition_failed(exc, position) for position in range(first, first + len(companions))):
                raise CompanionsRefused([0]) from exc
            if condition_failed(exc, 0) or condition_failed(exc, 1):
                raise AlreadyExists(record.run_id) from exc
            raise

    def create_many(self, records: Sequence[RunRecord]) -> None:
        """Record new runs that have no companion, 25 per call. Unconditional, unlike ``create``: a run id is new
        by construction (time + 48 random bits), and BatchWriteItem takes no condition. Raises
        ``runly_core.table.Unwritten`` if some stay unprocessed after every retry. Every CONFIG item is written
        before any run item (batch_write writes its calls in order and stops at one left unprocessed), so no run
        exists without its config."""
        requests = [{"PutRequest": {"Item": config_item(record)}} for record in records]
        requests += [{"PutRequest": {"Item": run_item(record)}} for record in records]
        batch_write(self._client, self.table_name, requests, sleep=self._sleep)

    def create_many_with(self, pairs: Sequence[tuple[RunRecord, dict[str, Any]]]) -> None:
        """Record runs each with one companion (its Idempotency-Key's Put), in transactions of up to 50 pairs.
        If a companion's condition fails, that transaction writes nothing and CompanionsRefused names the
        positions (in ``pairs``) of such companions; the transactions before it stay written."""
        per_pair = RUN_ACTIONS + 1
        per_transaction = TRANSACTION_ACTIONS // per_pair  # TransactWriteItems takes 100 actions: 33 pairs
        for start in range(0, len(pairs), per_transaction):
            chunk = pairs[start : start + per_transaction]
            items: list[dict[str, Any]] = []
            for record, companion in chunk:
                items += [*self._put_new(record), companion]
            try:
                self._client.transact_write_items(TransactItems=items)
            except Exception as exc:
                refused = [
                    start + index
                    for index in range(len(chunk))
                    if condition_failed(exc, per_pair * index + RUN_ACTIONS)
                ]
                if refused:
                    raise CompanionsRefused(refused) from exc
                raise

    def discard(self, run_id: str) -> None:
        """Take back a run that was never dispatched, with its checkpoint copy; its config last (a run item
        left by a failure here still has its config)."""
        self._table.delete_item(Key=run_key(run_id))
        self._table.delete_item(Key=checkpoint_key(run_id))
        self._table.delete_item(Key=config_key(run_id))

    def discard_many(self, run_ids: Sequence[str]) -> None:
        """``discard`` for runs a batch recorded but did not dispatch (they have no checkpoint copy)."""
        requests = [{"DeleteRequest": {"Key": run_key(run_id)}} for run_id in run_ids]
        requests += [{"DeleteRequest": {"Key": config_key(run_id)}} for run_id in run_ids]
        batch_write(self._client, self.table_name, requests, sleep=self._sleep)

    # ------------------------------------------------------------ cancel (the API)
    def _change_state(self, run_id: str, *, expected: RunState, update: str, values: dict[str, Any]) -> RunRecord:
        with refused_as(lambda: StateChanged(run_id)):
            result = self._table.update_item(
                Key=run_key(run_id),
                UpdateExpression=update,
                ConditionExpression=self.IN_STATE,
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":expected": expected.value, **values},
                ReturnValues="ALL_NEW",  # the API's credentials: no attribute bound
            )
        return RunRecord.from_item(result["Attributes"])

    def cancel_queued(self, run_id: str, *, now: str, error: dict[str, Any]) -> RunRecord:
        """Queued -> Cancelled, only if still Queued: an agent that claims it later sees a terminal run."""
        return self._change_state(
            run_id,
            expected=RunState.QUEUED,
            update="SET #state = :cancelled, finished_at = :now, error_json = :error",
            values={":cancelled": RunState.CANCELLED.value, ":now": now, ":error": json.dumps(error)},
        )

    def request_cancel(self, run_id: str, *, now: str, requested_by: str) -> RunRecord:
        """Running -> Cancelling, only if still Running; the lease holder sees it on its next heartbeat."""
        return self._change_state(
            run_id,
            expected=RunState.RUNNING,
            update="SET #state = :cancelling, cancel_requested_at = :now, cancel_requested_by = :by",
            values={":cancelling": RunState.CANCELLING.value, ":now": now, ":by": requested_by},
        )

    # ------------------------------------------------------------ claim, and closing an abandoned run
    def _as_read(self, record: RunRecord, *, lease: bool) -> tuple[str, dict[str, Any]]:
        """AS_READ (and, with ``lease``, LEASE_AS_READ or NEVER_LEASED) for ``record``, with its values."""
        condition = self.AS_READ
        values: dict[str, Any] = {":prev_attempt": record.attempt, ":prev_state": record.state.value}
        if lease:
            if record.lease_until_ms is None:
                condition += f" AND {self.NEVER_LEASED}"
            else:
                condition += f" AND {self.LEASE_AS_READ}"
                values[":prev_until"] = record.lease_until_ms
        return condition, values

    def claim(self, previous: RunRecord, node_id: str, until_ms: int) -> RunRecord:
        """Take the run's lease as attempt ``previous.attempt + 1``, conditional on the run being ``previous``
        (AS_READ; a takeover of a lease, LEASE_AS_READ too); returns the run as the write left it (the write asks
        for nothing back), with its config, read from its CONFIG item once the lease is ours (a lost claim reads
        none of it). RunChanged if the run moved since it was read."""
        number = previous.attempt + 1
        moment = utcnow()
        attempts = list(previous.attempts)
        last = attempts[-1] if attempts else None
        if previous.state is RunState.RUNNING and last is not None and last.ended_at is None:
            # The previous owner's lease ran out: that attempt ended because its node was lost.
            attempts[-1] = last.model_copy(update={"ended_at": moment, "reason": FailureReason.NODE_LOST})
        attempts.append(AttemptView(number=number, node_id=node_id, started_at=moment))
        started_at = previous.started_at or iso(moment)
        lease_index = lease_index_attributes(previous.run_id, until_ms)
        takeover = previous.state in (RunState.RUNNING, RunState.CANCELLING)
        condition, values = self._as_read(previous, lease=takeover)
        values.update(
            {
                ":running": RunState.RUNNING.value,
                ":number": number,
                ":node": node_id,
                ":until": until_ms,
                ":started": started_at,
                # The whole list, as the read saw it, changed: the condition makes that read the current one.
                ":attempts": [attempt.model_dump(mode="json", exclude_none=True) for attempt in attempts],
                **{f":{name}": value for name, value in lease_index.items()},
            }
        )
        sets = [
            "#state = :running",
            "#attempt = :number",
            "lease_owner = :node",
            "lease_until_ms = :until",
            "started_at = :started",
            "#attempts = :attempts",
            *(f"{name} = :{name}" for name in lease_index),
        ]
        with refused_as(lambda: RunChanged(previous.run_id)):
            self._table.update_item(
                Key=run_key(previous.run_id),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=condition,
                ExpressionAttributeNames={**_AS_READ_NAMES, "#attempts": "attempts"},
                ExpressionAttributeValues=values,
            )
        claimed = previous.model_copy(
            update={
                "state": RunState.RUNNING,
                "attempt": number,
                "lease_owner": node_id,
                "lease_until_ms": until_ms,
                "started_at": started_at,
                "attempts": attempts,
            }
        )
        return claimed if claimed.config_json is not None else self.read_config(claimed)

    def end_abandoned(self, record: RunRecord, state: RunState, reason: FailureReason, message: str) -> None:
        """Move a run nobody holds to ``state`` (Queued for another attempt, or terminal with ``reason`` and
        ``message`` as its error): its open attempt ends as node_lost and its lease goes. Conditional on the run
        and its lease being as read (AS_READ and LEASE_AS_READ): a live node always wins. Used by a claim that
        finds its node lost (abandoned_outcome), the reaper, and the dead-letter handler. RunChanged if it moved."""
        now = iso(utcnow())
        sets = ["#state = :new_state"]
        names = dict(_AS_READ_NAMES)
        condition, values = self._as_read(record, lease=True)
        values[":new_state"] = state.value
        index = len(record.attempts) - 1
        if index >= 0 and record.attempts[index].ended_at is None:
            sets += [f"#attempts[{index}].ended_at = :now", f"#attempts[{index}].reason = :node_lost"]
            names["#attempts"] = "attempts"
            values.update({":now": now, ":node_lost": FailureReason.NODE_LOST.value})
        if state.terminal:
            sets += ["finished_at = :now", "error_json = :error"]
            values.update({":now": now, ":error": json.dumps({"reason": reason.value, "message": message})})
        with refused_as(lambda: RunChanged(record.run_id)):
            self._table.update_item(
                Key=run_key(record.run_id),
                UpdateExpression="SET " + ", ".join(sets) + " " + LEASE_REMOVE,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )

    # ------------------------------------------------------------ the lease holder's writes (fenced)
    def _fence(self, record: RunRecord, node_id: str) -> dict[str, Any]:
        return {
            ":attempt": record.attempt,
            ":node": node_id,
            ":running": RunState.RUNNING.value,
            ":cancelling": RunState.CANCELLING.value,
        }

    def _lost(self, record: RunRecord) -> LeaseLost:
        return LeaseLost(f"{record.run_id}: attempt {record.attempt} no longer holds the lease")

    def _fenced_update(
        self, record: RunRecord, node_id: str, update: str, values: dict[str, Any], names: dict[str, str], also: str
    ) -> bool:
        """An update conditional on HOLDS_LEASE (and ``also``); whether the condition held."""
        try:
            self._table.update_item(
                Key=run_key(record.run_id),
                UpdateExpression=update,
                ConditionExpression=f"{self.HOLDS_LEASE} AND {also}" if also else self.HOLDS_LEASE,
                ExpressionAttributeNames={**_FENCE_NAMES, **names},
                ExpressionAttributeValues={**self._fence(record, node_id), **values},
            )
        except Exception as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def _fenced(
        self, record: RunRecord, node_id: str, update: str, values: dict[str, Any], names: dict[str, str]
    ) -> None:
        if not self._fenced_update(record, node_id, update, values, names, ""):
            raise self._lost(record)

    def renew(
        self,
        record: RunRecord,
        node_id: str,
        until_ms: int,
        *,
        progress_json: str | None = None,
        drop_handoff: bool = False,
        indexed_until_ms: int | None = None,
    ) -> Renewal:
        """Extend the lease to ``until_ms`` (and write the newest progress, if any); ``drop_handoff`` clears the
        message handed over to this attempt, now kept. The common beat (STILL_RUNNING and, unless dropping,
        NO_HANDOFF) returns nothing; anything else shows as that condition failing, and the run is read to see
        which (a cancel, a handoff, a lost lease) and renewed with the plain fence. LeaseLost if not ours.

        ``indexed_until_ms``: the lease expiry the lease index holds for this attempt (the claim's, or what the last
        renewal answered); the index entry moves to ``until_ms`` only once that is LEASE_INDEX_REFRESH_MS later,
        so most beats write the run item alone. None: not known, the entry moves."""
        update = "SET lease_until_ms = :until"
        values: dict[str, Any] = {":until": until_ms}
        if indexed_until_ms is None or until_ms >= indexed_until_ms + LEASE_INDEX_REFRESH_MS:
            sort_key = RUNS_BY_LEASE.sort_key
            update += f", {sort_key} = :{sort_key}"
            values[f":{sort_key}"] = lease_sort_key(until_ms)
            indexed_until_ms = until_ms
        if progress_json is not None:
            update += ", progress_json = :progress"
            values[":progress"] = progress_json
        if drop_handoff:
            # Unconditional: a handoff written since the last answer goes too, unseen. Its message is hidden for
            # the rest of the lease by the node that received it; it comes back and is handed over again.
            update += f" REMOVE {MESSAGE_HANDOFF}"
        expected = self.STILL_RUNNING if drop_handoff else f"{self.STILL_RUNNING} AND {self.NO_HANDOFF}"
        if self._fenced_update(record, node_id, update, values, {}, expected):
            return Renewal(None, indexed_until_ms)
        item = self.read_item(record.run_id) or {}
        self._fenced(record, node_id, update, values, {})
        return Renewal(item, indexed_until_ms)

    def hand_over(self, leased: RunRecord, handoff: dict[str, Any]) -> bool:
        """Offer ``handoff`` (a message of the run, received by another node) to the attempt holding ``leased``;
        False: the holder changed, or an offer for this attempt is already waiting (HOLDS_LEASE, NO_HANDOFF)."""
        if leased.lease_owner is None:
            return False
        return self._fenced_update(
            leased,
            leased.lease_owner,
            f"SET {MESSAGE_HANDOFF} = :handoff",
            {":handoff": {**handoff, "attempt": leased.attempt}},
            {},
            self.NO_HANDOFF,
        )

    def write_checkpoint(self, record: RunRecord, node_id: str, checkpoint_json: str) -> None:
        """Store the checkpoint only if this attempt still holds the lease, in one transaction; LeaseLost if not."""
        with refused_as(lambda: self._lost(record)):
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "ConditionCheck": {
                            "TableName": self.table_name,
                            "Key": run_key(record.run_id),
                            "ConditionExpression": self.HOLDS_LEASE,
                            "ExpressionAttributeNames": dict(_FENCE_NAMES),
                            "ExpressionAttributeValues": self._fence(record, node_id),
                        }
                    },
                    {
                        # An update, not a put: the node's policy allows no PutItem (a put replaces every
                        # attribute of an item, those it may not write included).
                        "Update": {
                            "TableName": self.table_name,
                            "Key": checkpoint_key(record.run_id),
                            "UpdateExpression": "SET checkpoint_json = :checkpoint",
                            "ExpressionAttributeValues": {":checkpoint": checkpoint_json},
                        }
                    },
                ]
            )

    def end_attempt(
        self,
        record: RunRecord,
        node_id: str,
        *,
        state: RunState,
        reason: FailureReason | None = None,
        attempt_error: str | None = None,
        error_json: str | None = None,
        output_json: str | None = None,
        output_ref: ObjectRef | None = None,
        progress_json: str | None = None,
        retry_at: str | None = None,
    ) -> None:
        """Close this attempt and give up the lease (HOLDS_LEASE): to a terminal state (with ``output_json``, or
        ``output_ref`` for an output stored in S3 by runly_core.run_objects, and ``error_json``), or back to
        Queued for a retry (``retry_at``). Values come measured and bounded (the
        agent's runly.sizes checks): LeaseLost if this attempt no longer holds the lease."""
        index = len(record.attempts) - 1
        now = iso(utcnow())
        sets = [
            "#state = :new_state",
            f"#attempts[{index}].ended_at = :now",
            f"#attempts[{index}].outcome = :new_state",
        ]
        values: dict[str, Any] = {":new_state": state.value, ":now": now}
        names = {"#attempts": "attempts"}
        if reason is not None:
            sets.append(f"#attempts[{index}].reason = :reason")
            values[":reason"] = reason.value
        if attempt_error is not None:
            sets.append(f"#attempts[{index}].#error = :error_message")
            values[":error_message"] = attempt_error
            names["#error"] = "error"
        if retry_at is not None:
            # Shown as the run's queued reason: "waiting for retry ... until T".
            sets.append("retry_at = :retry_at")
            values[":retry_at"] = retry_at
        if progress_json is not None:
            sets.append("progress_json = :progress")
            values[":progress"] = progress_json
        if state.terminal and output_ref is not None:
            sets += ["finished_at = :now", "output_ref = :output_ref"]
            values[":output_ref"] = output_ref.model_dump()
        elif state.terminal:
            sets += ["finished_at = :now", "output_json = :output"]
            values[":output"] = output_json if output_json is not None else "null"
            if error_json is not None:
                sets.append("error_json = :error_json")
                values[":error_json"] = error_json
        self._fenced(record, node_id, "SET " + ", ".join(sets) + " " + LEASE_REMOVE, values, names)
