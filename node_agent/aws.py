"""The agent's AWS adapter: the queue, the run lease protocol in DynamoDB, the feed.

Every write a node makes to a run is conditional on still holding its lease
(``fenced``): the attempt number is the fencing token, so a node that lost its
lease (paused, partitioned, presumed dead) cannot overwrite the attempt that
replaced it.

Its writes name only the attributes its policy lets it write (functions.nodes.policy) and ask for no values back
(ReturnValues NONE): IAM's attribute-level conditions require that, so what a write would have returned is read
from its condition instead (renew_lease, put_node), or known from the read the claim starts with.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import ValidationError

from runly import sizes
from runly.limits import (
    MAX_ATTEMPT_ERROR_BYTES,
    MAX_ERROR_DETAIL_BYTES,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_ERROR_TYPE_BYTES,
    MAX_RECORDED_ATTEMPTS,
)
from runly.wire import Checkpoint, Progress
from runly_core.contracts import AttemptView, FailureReason, RunMessage, RunState
from runly_core.records import (
    API_CREATED,
    LEASE_REMOVE,
    MESSAGE_HANDOFF,
    NodeRecord,
    RunRecord,
    abandoned_outcome,
    abandoned_run_update,
    checkpoint_key,
    is_run_id,
    iso,
    lease_index_partition,
    lease_sort_key,
    node_key,
    run_environment,
    run_key,
    utcnow,
)
from runly_core.resources import (
    FENCE_MARGIN_MS,
    LEASE_MARGIN_MS,
    RUNS_BY_LEASE,
    SQS_MAX_DELAY_SECONDS,
    SQS_MAX_IN_FLIGHT_SECONDS,
    SSM_GET_PARAMETERS_BATCH,
)

log = logging.getLogger(__name__)

# Adaptive retries back off (with jitter) on throttling and 5xx before an error reaches the agent.
BOTO_CONFIG = Config(retries={"max_attempts": 8, "mode": "adaptive"}, connect_timeout=5, read_timeout=30)


def lease_until(now_ms: int, lease_seconds: int) -> int:
    return now_ms + lease_seconds * 1000 - LEASE_MARGIN_MS


def may_have_checkpoint(record: RunRecord) -> bool:
    """Whether a claimed run can have a checkpoint, from the claim's own answer.

    Only two writers make one: an attempt that holds the lease (``write_checkpoint``, fenced on its number,
    so the next claim is attempt 2 or later), and a resumed requeue, which copies the original's checkpoint
    to the new run, marked ``requeued_from``, before its message is sent. A first attempt of any other run
    has none: not reading it saves a round trip on most claims.
    """
    return record.attempt > 1 or record.requeued_from is not None


class ClaimRefused(Exception):
    """The run cannot be started by this node now."""

    def __init__(
        self, run_id: str, why: str, *, terminal: bool = False, retry_in: int = 0, leased: RunRecord | None = None
    ) -> None:
        super().__init__(f"{run_id}: {why}")
        self.terminal = terminal
        self.retry_in = retry_in
        self.leased = leased  # the run as a live lease holder has it: the message may be handed to that node


class LeaseLost(Exception):
    """A fenced write failed: another attempt owns the run, or it was finished."""


@dataclass(frozen=True)
class Delivery:
    receipt_handle: str
    message: RunMessage | None  # None: a body that is not a run message (poison)
    receive_count: int
    message_id: str = ""
    # Wall-clock seconds, read before the receive call: SQS's 12-hour in-flight cap counts from the receipt.
    received_at: float = 0.0


@dataclass(frozen=True)
class LeaseRenewal:
    """The answer to a heartbeat's lease extension."""

    state: RunState  # Cancelling: a cancel was asked
    # A newer message of this run that another node (or this one) received while this attempt held the lease,
    # handed over through the run item (AgentAws.hand_over); the holder keeps it and deletes its older one.
    handoff: Delivery | None = None


def bounded_error(error: dict[str, Any]) -> dict[str, Any]:
    """A run's error as stored: each part cut to its limit (runly_core.resources), so that no job's failure can make
    the run item too large, or hold what a reader of it cannot decode (a lone surrogate)."""
    limits = {"message": MAX_ERROR_MESSAGE_BYTES, "traceback": MAX_ERROR_DETAIL_BYTES, "type": MAX_ERROR_TYPE_BYTES}
    bounded: dict[str, Any] = {}
    for key, value in error.items():
        if key in limits and isinstance(value, str):
            bounded[key] = sizes.truncate_json_string(value, limits[key], both_ends=key == "traceback")
        elif key == "reason" and isinstance(value, str):
            bounded[key] = value
    return bounded


def _progress_json(record: RunRecord, progress: Progress | None) -> str | None:
    """The progress as stored, or None (not written) when there is none or it cannot be: a write never fails on
    it. The channel already refuses progress over its limit, so this only guards other callers."""
    if progress is None:
        return None
    try:
        return sizes.progress_json(progress)
    except (sizes.ValueTooLarge, sizes.NotJson) as exc:
        log.error("run %s: progress not written: %s", record.run_id, exc)
        return None


def _conditional_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class _RunChanged(Exception):
    """A claim's condition failed: the run moved since the claim read it."""


DELETE_BATCH_SIZE = 10  # SQS's largest batch
VISIBILITY_BATCH_SIZE = 10
DELETE_BATCH_DELAY = 0.5  # seconds a terminal run's message may wait for others to share its request
DELETE_ATTEMPTS = 5


def _run_of(delivery: Delivery) -> str:
    return delivery.message.run_id if delivery.message is not None else "?"


class DeleteBatcher:
    """Deletes messages in batches of up to 10, from a thread of its own: a batch goes when it is full
    or DELETE_BATCH_DELAY after its first message, whichever comes first. Failed deletions are retried
    with the next batch, up to DELETE_ATTEMPTS times each; then the message is left to come back (see
    AgentAws.delete_soon)."""

    def __init__(self, delete_batch: Callable[[list[Delivery]], list[Delivery]]) -> None:
        self._delete_batch = delete_batch
        self._pending: list[tuple[Delivery, int]] = []
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="deletes", daemon=True)
        self._thread.start()

    def add(self, delivery: Delivery) -> None:
        with self._lock:
            self._pending.append((delivery, 0))
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if not self._pending:
                    return  # closed, nothing left
                deadline = time.monotonic() + DELETE_BATCH_DELAY
                while len(self._pending) < DELETE_BATCH_SIZE and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
                batch, self._pending = self._pending[:DELETE_BATCH_SIZE], self._pending[DELETE_BATCH_SIZE:]
            self._send(batch)

    def _send(self, batch: list[tuple[Delivery, int]]) -> None:
        deliveries = [delivery for delivery, _ in batch]
        try:
            failed_ids = {id(d) for d in self._delete_batch(deliveries)}
        except Exception as exc:  # noqa: BLE001 - the whole call failed (network, throttling): all are tried again
            log.warning("deleting %d message(s) failed (%s); trying again", len(batch), exc)
            failed_ids = {id(d) for d in deliveries}
            time.sleep(min(5.0, 0.2 * 2 ** max(tries for _, tries in batch)))
        again = []
        for delivery, tries in batch:
            if id(delivery) not in failed_ids:
                continue
            if tries + 1 < DELETE_ATTEMPTS:
                again.append((delivery, tries + 1))
            else:
                log.error("giving up deleting the message of run %s; it comes back to a claim", _run_of(delivery))
        if again:
            with self._lock:
                self._pending[:0] = again


_FENCE = "#attempt = :attempt AND #owner = :node AND #state IN (:running, :cancelling)"
_FENCE_NAMES = {"#attempt": "attempt", "#owner": "lease_owner", "#state": "state"}
# No message of the run is waiting for this attempt (AgentAws.hand_over writes one).
_NO_HANDOFF = f"(attribute_not_exists({MESSAGE_HANDOFF}) OR {MESSAGE_HANDOFF}.attempt <> :attempt)"


class _Unexpected(Exception):
    """A fenced write's extra condition failed: the caller reads the item to see why."""


class AgentAws:
    def __init__(
        self,
        *,
        queue_url: str,
        table_name: str,
        bucket: str,
        session: boto3.session.Session | None = None,
    ) -> None:
        session = session or boto3.session.Session()
        self.queue_url = queue_url
        self.bucket = bucket
        self._session = session
        self._sqs = session.client("sqs", config=BOTO_CONFIG)
        # Built on first use (an idle node downloads nothing and ships no log): it is the largest client.
        self._s3_client: Any = None
        self._s3_lock = threading.Lock()
        self._ssm_client: Any = None  # built on the first run that declares variables or secrets
        self._deletes: DeleteBatcher | None = None  # started on the first delete_soon
        self._deletes_lock = threading.Lock()
        self._table = session.resource("dynamodb", config=BOTO_CONFIG).Table(table_name)
        # The resource's client takes plain Python values (it serializes them itself).
        self._dynamodb = self._table.meta.client

    @property
    def _s3(self) -> Any:
        with self._s3_lock:  # a session may not build clients on two threads at once
            if self._s3_client is None:
                self._s3_client = self._session.client("s3", config=BOTO_CONFIG)
            return self._s3_client

    # ------------------------------------------------------------ queue
    def receive(self, max_messages: int, wait_seconds: int, visibility_seconds: int) -> list[Delivery]:
        asked_at = time.time()  # no later than SQS's receipt: the in-flight cap is counted from here, early
        response = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(max_messages, 10)),
            WaitTimeSeconds=wait_seconds,
            # Hidden until the first heartbeat extends it (the agent asks for two heartbeats, at most the lease),
            # and the claim's lease ends before then: if this node dies first, the message is back soon after.
            VisibilityTimeout=visibility_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        deliveries = []
        for raw in response.get("Messages", []):
            try:
                message: RunMessage | None = RunMessage.model_validate_json(raw["Body"])
            except ValidationError:
                message = None
            count = int(raw.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            deliveries.append(Delivery(raw["ReceiptHandle"], message, count, raw.get("MessageId", ""), asked_at))
        return deliveries

    def delete(self, delivery: Delivery) -> None:
        self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=delivery.receipt_handle)

    def delete_soon(self, delivery: Delivery) -> None:
        """Delete the message of a run that is terminal, batched with others ending within
        DELETE_BATCH_DELAY seconds (SQS bills a batch of up to 10 as one request). A message that
        is never deleted (this node dies first) only comes back to a claim that finds its run
        terminal and deletes it then."""
        with self._deletes_lock:
            if self._deletes is None:
                self._deletes = DeleteBatcher(self._delete_batch)
            deletes = self._deletes
        deletes.add(delivery)

    def flush_deletes(self) -> None:
        """Delete every pending message now (the agent calls this as it stops)."""
        with self._deletes_lock:
            deletes, self._deletes = self._deletes, None
        if deletes is not None:
            deletes.close()

    def _delete_batch(self, deliveries: list[Delivery]) -> list[Delivery]:
        """DeleteMessageBatch; returns the deliveries whose deletion failed and is worth another try."""
        response = self._sqs.delete_message_batch(
            QueueUrl=self.queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": d.receipt_handle} for i, d in enumerate(deliveries)],
        )
        retry_again = []
        for failure in response.get("Failed", []):
            delivery = deliveries[int(failure["Id"])]
            if failure.get("SenderFault"):
                # A stale receipt handle (the message was received again elsewhere): that receiver deletes it.
                log.warning("message of run %s not deleted: %s", _run_of(delivery), failure.get("Code"))
            else:
                retry_again.append(delivery)
        return retry_again

    def set_visibility(self, delivery: Delivery, seconds: int) -> None:
        self._sqs.change_message_visibility(
            QueueUrl=self.queue_url,
            ReceiptHandle=delivery.receipt_handle,
            VisibilityTimeout=max(0, min(seconds, SQS_MAX_IN_FLIGHT_SECONDS)),
        )

    def set_visibilities(self, changes: Sequence[tuple[Delivery, int]]) -> list[str | None]:
        """ChangeMessageVisibilityBatch, 10 changes a request; per change, None or why it failed.

        Entries fail alone (a stale receipt, a message past SQS's cap), and so does a request (the network,
        throttling past the client's retries): neither touches the changes of another entry or request.
        """
        results: list[str | None] = [None] * len(changes)
        for start in range(0, len(changes), VISIBILITY_BATCH_SIZE):
            chunk = range(start, min(start + VISIBILITY_BATCH_SIZE, len(changes)))
            entries = [
                {
                    "Id": str(i),
                    "ReceiptHandle": changes[i][0].receipt_handle,
                    "VisibilityTimeout": max(0, min(changes[i][1], SQS_MAX_IN_FLIGHT_SECONDS)),
                }
                for i in chunk
            ]
            try:
                response = self._sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
            except Exception as exc:  # noqa: BLE001 - reported per change: each run's beat decides what it means
                for i in chunk:
                    results[i] = f"{type(exc).__name__}: {exc}"
                continue
            for failure in response.get("Failed", []):
                results[int(failure["Id"])] = f"{failure.get('Code')}: {failure.get('Message', '')}"
        return results

    def send_replacement(self, delivery: Delivery, delay_seconds: int = 0) -> str:
        """Send a fresh message for the run of ``delivery`` (the same body), visible after ``delay_seconds``
        (at most SQS's 15 minutes); returns its message id."""
        if delivery.message is None:
            raise ValueError("only a run's message is replaced")
        response = self._sqs.send_message(
            QueueUrl=self.queue_url,
            MessageBody=delivery.message.model_dump_json(),
            DelaySeconds=max(0, min(delay_seconds, SQS_MAX_DELAY_SECONDS)),
        )
        return str(response["MessageId"])

    # ------------------------------------------------------------ runs: the lease protocol
    def _read_run_item(self, run_id: str) -> dict[str, Any] | None:
        item = self._table.get_item(Key=run_key(run_id), ConsistentRead=True).get("Item")
        return dict(item) if item else None

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run, if the API created it (an item under its key that is not marked API_CREATED, or does not
        validate, was written by a node's credentials: no run to execute)."""
        if not is_run_id(run_id):
            return None
        item = self._read_run_item(run_id)
        if item is None or item.get(API_CREATED) is not True:
            return None
        try:
            return RunRecord.from_item(item)
        except ValidationError:
            log.error("run %s: its item is not a run record; ignored", run_id)
            return None

    def get_checkpoint(self, run_id: str) -> Checkpoint | None:
        item = self._table.get_item(Key=checkpoint_key(run_id), ConsistentRead=True).get("Item")
        return Checkpoint.model_validate_json(item["checkpoint_json"]) if item else None

    def write_checkpoint(self, record: RunRecord, node_id: str, checkpoint: Checkpoint) -> None:
        """Store the checkpoint only if this attempt still holds the lease, in one transaction."""
        fence_values = {
            ":attempt": record.attempt,
            ":node": node_id,
            ":running": RunState.RUNNING.value,
            ":cancelling": RunState.CANCELLING.value,
        }
        # Measured before any write (raises runly.sizes.CheckpointTooLarge or NotJson): never refused by DynamoDB.
        state = sizes.checkpoint_json(checkpoint)
        try:
            self._dynamodb.transact_write_items(
                TransactItems=[
                    {
                        "ConditionCheck": {
                            "TableName": self._table.name,
                            "Key": run_key(record.run_id),
                            "ConditionExpression": _FENCE,
                            "ExpressionAttributeNames": dict(_FENCE_NAMES),
                            "ExpressionAttributeValues": fence_values,
                        }
                    },
                    {
                        # An update, not a put: the node's policy allows no PutItem (a put replaces every
                        # attribute of an item, those it may not write included).
                        "Update": {
                            "TableName": self._table.name,
                            "Key": checkpoint_key(record.run_id),
                            "UpdateExpression": "SET checkpoint_json = :checkpoint",
                            "ExpressionAttributeValues": {":checkpoint": state},
                        }
                    },
                ]
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
                if "ConditionalCheckFailed" in reasons or not reasons:
                    raise LeaseLost(f"{record.run_id}: attempt {record.attempt} no longer holds the lease") from exc
            raise

    def checkpoint_for(self, record: RunRecord) -> Checkpoint | None:
        """The checkpoint a claimed attempt resumes from; read only when there can be one."""
        return self.get_checkpoint(record.run_id) if may_have_checkpoint(record) else None

    def claim(self, run_id: str, node_id: str, lease_seconds: int, now_ms: int) -> RunRecord:
        """Take the run's lease as a new attempt, or say why not.

        One strongly consistent read, then one write conditional on the run being as read (its attempt and
        state): a run queued for an attempt is taken, an expired lease taken over, a live lease, a terminal run
        or a lost cancel refused. The write asks for nothing back (the node's policy allows ReturnValues NONE
        only: functions.nodes.policy), so the claimed record is the read one with the claim's changes.
        """
        until = lease_until(now_ms, lease_seconds)
        record = self.get_run(run_id)
        if record is None:
            raise ClaimRefused(run_id, "no such run", terminal=True)
        if record.state.terminal:
            raise ClaimRefused(run_id, f"already {record.state}", terminal=True)
        leased = record.state in (RunState.RUNNING, RunState.CANCELLING)
        # Self-fencing: the old attempt's job stops FENCE_MARGIN_MS before its lease ends by its own node's clock;
        # nothing of the run starts (nor ends it) before the lease ended FENCE_MARGIN_MS ago by this node's.
        if leased and record.lease_until_ms is not None and record.lease_until_ms + FENCE_MARGIN_MS > now_ms:
            raise ClaimRefused(
                run_id,
                f"leased by {record.lease_owner}",
                retry_in=(record.lease_until_ms + FENCE_MARGIN_MS - now_ms) // 1000 + 1,
                leased=record,
            )
        if record.state is RunState.QUEUED and record.retry_at is not None:
            # A retry delay longer than one message could be hidden for (SQS's cap, or its 15-minute delay on a
            # fresh message) is carried by the run: a message that comes back early is hidden again until then.
            wait_ms = int(datetime.fromisoformat(record.retry_at).timestamp() * 1000) - now_ms
            if wait_ms >= 1000:
                raise ClaimRefused(run_id, f"waiting for its retry at {record.retry_at}", retry_in=wait_ms // 1000 + 1)

        if leased:
            # Its node was lost: as the reaper would (runly_core.records.abandoned_outcome), a cancel wins and a run
            # out of attempts fails; only a run with attempts left is taken over, as its next attempt.
            state, reason, message = abandoned_outcome(record)
            if state.terminal:
                self._close_abandoned(record, state, reason, message)
                raise ClaimRefused(run_id, f"{state}: {message}", terminal=True)
        elif record.attempt >= MAX_RECORDED_ATTEMPTS:
            # Re-queued by node shutdowns (which do not count against max_attempts) this often: the run item holds
            # no more attempts.
            message = f"{record.attempt} attempts without an outcome"
            self._close_abandoned(record, RunState.FAILED, FailureReason.DEAD_LETTER, message)
            raise ClaimRefused(run_id, message, terminal=True)
        try:
            return self._take_lease(run_id, node_id, until, previous=record)
        except _RunChanged as changed:
            raise ClaimRefused(run_id, "another node claimed it first", retry_in=lease_seconds) from changed

    def _take_lease(self, run_id: str, node_id: str, until: int, *, previous: RunRecord) -> RunRecord:
        """The claim's write, conditional on the run being ``previous`` (its attempt and state); returns the run
        as the write left it. Raises _RunChanged if the run moved since it was read."""
        number = previous.attempt + 1
        moment = utcnow()
        attempts = list(previous.attempts)
        last = attempts[-1] if attempts else None
        if previous.state is RunState.RUNNING and last is not None and last.ended_at is None:
            # The previous owner's lease ran out: that attempt ended because its node was lost.
            attempts[-1] = last.model_copy(update={"ended_at": moment, "reason": FailureReason.NODE_LOST})
        attempts.append(AttemptView(number=number, node_id=node_id, started_at=moment))
        started_at = previous.started_at or iso(moment)
        values: dict[str, Any] = {
            ":prev_attempt": previous.attempt,
            ":prev_state": previous.state.value,
            ":running": RunState.RUNNING.value,
            ":number": number,
            ":node": node_id,
            ":until": until,
            ":leased": lease_index_partition(run_environment(run_id)),
            ":until_key": lease_sort_key(until),
            ":started": started_at,
            # The whole list, as the read saw it, changed: the condition makes that read the current one.
            ":attempts": [attempt.model_dump(mode="json", exclude_none=True) for attempt in attempts],
        }
        sets = [
            "#state = :running",
            "#attempt = :number",
            "lease_owner = :node",
            "lease_until_ms = :until",
            f"{RUNS_BY_LEASE.partition_key} = :leased",
            f"{RUNS_BY_LEASE.sort_key} = :until_key",
            "started_at = :started",
            "#attempts = :attempts",
        ]
        condition = "#attempt = :prev_attempt AND #state = :prev_state"
        if previous.state in (RunState.RUNNING, RunState.CANCELLING):
            # A takeover: the lease must still be the one judged expired. A renewal written since (a slow but live
            # holder) told its job a later deadline, and that job would run beside ours.
            if previous.lease_until_ms is None:
                condition += " AND attribute_not_exists(lease_until_ms)"
            else:
                condition += " AND lease_until_ms = :prev_until"
                values[":prev_until"] = previous.lease_until_ms
        try:
            self._table.update_item(
                Key=run_key(run_id),
                UpdateExpression="SET " + ", ".join(sets),
                # Nothing else may have moved the run since: the attempt number is the fencing token.
                ConditionExpression=condition,
                ExpressionAttributeNames={"#state": "state", "#attempt": "attempt", "#attempts": "attempts"},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                raise _RunChanged() from exc
            raise
        return previous.model_copy(
            update={
                "state": RunState.RUNNING,
                "attempt": number,
                "lease_owner": node_id,
                "lease_until_ms": until,
                "started_at": started_at,
                "attempts": attempts,
            }
        )

    def _close_abandoned(self, record: RunRecord, state: RunState, reason: FailureReason, message: str) -> None:
        """End a run whose lease expired, conditional on nobody having moved it since it was read."""
        update, names, values = abandoned_run_update(record, state, reason, message)
        names["#attempt"] = "attempt"
        values.update({":prev_attempt": record.attempt, ":prev_state": record.state.value})
        try:
            self._table.update_item(
                Key=run_key(record.run_id),
                UpdateExpression=update,
                ConditionExpression="#attempt = :prev_attempt AND #state = :prev_state",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise

    def _fenced_update(
        self,
        record: RunRecord,
        node_id: str,
        update: str,
        values: dict[str, Any],
        names: dict[str, str],
        *,
        also: str = "",
    ) -> None:
        """A write conditional on this attempt holding the lease (and on ``also``, if given); LeaseLost if the
        condition failed (with ``also``: _Unexpected, the caller reads why)."""
        try:
            self._table.update_item(
                Key=run_key(record.run_id),
                UpdateExpression=update,
                ConditionExpression=f"{_FENCE} AND {also}" if also else _FENCE,
                ExpressionAttributeNames={**_FENCE_NAMES, **names},
                ExpressionAttributeValues={
                    ":attempt": record.attempt,
                    ":node": node_id,
                    ":running": RunState.RUNNING.value,
                    ":cancelling": RunState.CANCELLING.value,
                    **values,
                },
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                if also:
                    raise _Unexpected() from exc
                raise LeaseLost(f"{record.run_id}: attempt {record.attempt} no longer holds the lease") from exc
            raise

    def extend_lease(
        self, record: RunRecord, node_id: str, until_ms: int, progress: Progress | None = None
    ) -> RunState:
        """Extend the lease (and write the newest progress, if any, in the same write); returns the
        run's state, so a requested cancel (Cancelling) is seen on the next heartbeat."""
        return self.renew_lease(record, node_id, until_ms, progress).state

    def renew_lease(
        self,
        record: RunRecord,
        node_id: str,
        until_ms: int,
        progress: Progress | None = None,
        *,
        drop_handoff: bool = False,
    ) -> LeaseRenewal:
        """extend_lease, also answering with a message of the run handed over to this attempt (hand_over);
        ``drop_handoff`` clears the one the last renewal answered with, now that it is kept."""
        update = f"SET lease_until_ms = :until, {RUNS_BY_LEASE.sort_key} = :until_key"
        values: dict[str, Any] = {":until": until_ms, ":until_key": lease_sort_key(until_ms)}
        progress_json = _progress_json(record, progress)
        if progress_json is not None:
            update += ", progress_json = :progress"
            values[":progress"] = progress_json
        if drop_handoff:
            # Unconditional: a handoff written since the last answer goes too, unseen. Its message is hidden for
            # the rest of the lease by the node that received it; it comes back and is handed over again.
            update += f" REMOVE {MESSAGE_HANDOFF}"
        # The common beat: still Running, no message handed over to this attempt. The write returns nothing (the
        # node's policy allows no ReturnValues that would), so anything else shows as a failed condition, and the
        # run is read to see which: a cancel (Cancelling), a handoff, or a lost lease.
        expected = "#state = :running" if drop_handoff else f"#state = :running AND {_NO_HANDOFF}"
        try:
            self._fenced_update(record, node_id, update, values, {}, also=expected)
            return LeaseRenewal(RunState.RUNNING)
        except _Unexpected:
            pass
        attributes = self._read_run_item(record.run_id) or {}
        self._fenced_update(record, node_id, update, values, {})  # LeaseLost if it is not ours any more
        handoff = None if drop_handoff else attributes.get(MESSAGE_HANDOFF)
        delivery = None
        if handoff is not None and int(handoff.get("attempt", -1)) == record.attempt:
            delivery = Delivery(
                receipt_handle=str(handoff["receipt_handle"]),
                message=RunMessage(run_id=record.run_id, environment=record.environment),
                receive_count=int(handoff.get("receive_count", 1)),
                message_id=str(handoff.get("message_id", "")),
                received_at=int(handoff["received_ms"]) / 1000,
            )
        state = RunState(attributes.get("state", RunState.RUNNING.value))
        return LeaseRenewal(state if state is RunState.CANCELLING else RunState.RUNNING, delivery)

    def hand_over(self, leased: RunRecord, delivery: Delivery) -> bool:
        """Offer ``delivery``, a message of a run that a live attempt holds, to that attempt through the run
        item; its node keeps it on its next heartbeat (renew_lease) and deletes the message it had, so the run
        keeps one message, received afresh (this is how a replacement sent before SQS's in-flight cap reaches
        the run's holder). False: the holder changed, or an offer for this attempt is already waiting."""
        if leased.lease_owner is None:
            return False
        handoff = {
            "attempt": leased.attempt,
            "receipt_handle": delivery.receipt_handle,
            "message_id": delivery.message_id,
            "received_ms": int(delivery.received_at * 1000),
            "receive_count": delivery.receive_count,
        }
        try:
            self._table.update_item(
                Key=run_key(leased.run_id),
                UpdateExpression=f"SET {MESSAGE_HANDOFF} = :handoff",
                ConditionExpression=f"{_FENCE} AND {_NO_HANDOFF}",
                ExpressionAttributeNames=dict(_FENCE_NAMES),
                ExpressionAttributeValues={
                    ":attempt": leased.attempt,
                    ":node": leased.lease_owner,
                    ":running": RunState.RUNNING.value,
                    ":cancelling": RunState.CANCELLING.value,
                    ":handoff": handoff,
                },
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    def end_attempt(
        self,
        record: RunRecord,
        node_id: str,
        *,
        state: RunState,
        reason: FailureReason | None = None,
        error: dict[str, Any] | None = None,
        output: Any = None,
        progress: Progress | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        """Close this attempt and give up the lease: to a terminal state, or back to Queued for a retry."""
        index = len(record.attempts) - 1
        now = iso(utcnow())
        sets = [
            "#state = :new_state",
            f"#attempts[{index}].ended_at = :now",
            f"#attempts[{index}].outcome = :new_state",
        ]
        values: dict[str, Any] = {":new_state": state.value, ":now": now}
        if state.terminal:
            # First, before anything is written: an output over its limit (or not JSON) raises here, and the caller
            # ends the run for that instead (runly.sizes.OutputTooLarge, NotJson).
            values[":output"] = sizes.output_json(output)
        if error is not None:
            error = bounded_error(error)
        if reason is not None:
            sets.append(f"#attempts[{index}].reason = :reason")
            values[":reason"] = reason.value
        if error is not None:
            sets.append(f"#attempts[{index}].#error = :error_message")
            values[":error_message"] = sizes.truncate_utf8(error["message"], MAX_ATTEMPT_ERROR_BYTES)
        if retry_at is not None:
            # Shown as the run's queued reason: "waiting for retry ... until T".
            sets.append("retry_at = :retry_at")
            values[":retry_at"] = iso(retry_at)
        progress_json = _progress_json(record, progress)
        if progress_json is not None:
            sets.append("progress_json = :progress")
            values[":progress"] = progress_json
        if state.terminal:
            sets += ["finished_at = :now", "output_json = :output"]
            if error is not None:
                sets.append("error_json = :error_json")
                values[":error_json"] = sizes.stored_json(error)
        update = "SET " + ", ".join(sets) + " " + LEASE_REMOVE
        names = {"#attempts": "attempts", **({"#error": "error"} if error is not None else {})}
        self._fenced_update(record, node_id, update, values, names)

    # ------------------------------------------------------------ nodes
    def put_node(self, node: NodeRecord) -> bool:
        """Register or refresh this node; returns whether a drain was requested (by the API).

        An update, not a put: ``drain_requested`` belongs to the API and must survive heartbeats.
        """
        # Its id and environment are its key (the API reads them there); drain_requested is the API's.
        fields = node.model_dump(mode="json", exclude={"node_id", "environment", "drain_requested"})
        key = node_key(node.environment, node.node_id)
        update = "SET " + ", ".join(f"#{name} = :{name}" for name in fields)
        names = {f"#{name}": name for name in fields}
        values = {f":{name}": value for name, value in fields.items()}
        # Asks for nothing back (the node's policy allows no ReturnValues that would): a drain shows as the
        # condition failing, and the same update is made without it.
        try:
            self._table.update_item(
                Key=key,
                UpdateExpression=update,
                ConditionExpression="attribute_not_exists(#drain) OR #drain = :no",
                ExpressionAttributeNames={**names, "#drain": "drain_requested"},
                ExpressionAttributeValues={**values, ":no": False},
            )
            return False
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise
        self._table.update_item(
            Key=key, UpdateExpression=update, ExpressionAttributeNames=names, ExpressionAttributeValues=values
        )
        return True

    def delete_node(self, environment: str, node_id: str) -> None:
        self._table.delete_item(Key=node_key(environment, node_id))

    # ------------------------------------------------------------ variables and secrets
    def get_parameters(self, names: Sequence[str]) -> tuple[dict[str, tuple[str, int]], list[str]]:
        """SSM parameters by name (or ``name:version``), secrets decrypted: ({name as asked: (value, version)},
        the names SSM does not have). GetParameters takes 10 names a call; one call per 10."""
        with self._s3_lock:
            if self._ssm_client is None:
                self._ssm_client = self._session.client("ssm", config=BOTO_CONFIG)
            ssm = self._ssm_client
        found: dict[str, tuple[str, int]] = {}
        invalid: list[str] = []
        for start in range(0, len(names), SSM_GET_PARAMETERS_BATCH):
            batch = list(names[start : start + SSM_GET_PARAMETERS_BATCH])
            answer = ssm.get_parameters(Names=batch, WithDecryption=True)
            for parameter in answer.get("Parameters", []):
                # Named as asked: "name:version" comes back with its Selector (":version"; moto gives none), the
                # name alone without one. The agent never asks for both forms of one name in a call.
                name, version = str(parameter["Name"]), int(parameter["Version"])
                selector = parameter.get("Selector")
                if selector:
                    asked = f"{name}{selector}"
                elif name not in batch and f"{name}:{version}" in batch:
                    asked = f"{name}:{version}"
                else:
                    asked = name
                found[asked] = (str(parameter["Value"]), version)
            invalid += [str(name) for name in answer.get("InvalidParameters", [])]
        return found, invalid

    # ------------------------------------------------------------ feed
    def download(self, key: str, destination: Path) -> None:
        self._s3.download_file(self.bucket, key, str(destination))

    def put_log_chunk(self, key: str, data: bytes) -> None:
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        self._s3.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType="text/plain; charset=utf-8", ChecksumSHA256=digest
        )
