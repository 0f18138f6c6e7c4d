"""The agent's AWS adapter: the queue, the run lease protocol in DynamoDB, the feed.

Every write a node makes to a run is conditional on still holding its lease
(``fenced``): the attempt number is the fencing token, so a node that lost its
lease (paused, partitioned, presumed dead) cannot overwrite the attempt that
replaced it. The writes themselves are the run store's transitions
(runly_core.run_store: claim, renew, hand over, checkpoint, end an attempt or
an abandoned run); this adapter decides which to make and measures what they
carry (runly.sizes).

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
from runly_core import backoff
from runly_core.contracts import FailureReason, RunMessage, RunState
from runly_core.records import NodeRecord, RunRecord, iso, node_key
from runly_core.resources import (
    FENCE_MARGIN_MS,
    LEASE_MARGIN_MS,
    SQS_MAX_DELAY_SECONDS,
    SQS_MAX_IN_FLIGHT_SECONDS,
    SSM_GET_PARAMETERS_BATCH,
)
from runly_core.run_objects import OUTPUT_INLINE_BYTES, RunObjects, load_checkpoint
from runly_core.run_store import (
    MESSAGE_HANDOFF,
    RunChanged,
    RunStore,
    abandoned_outcome,
    checkpoint_key,
)
from runly_core.run_store import (
    LeaseLost as LeaseLost,  # the agent's callers catch it from here
)
from runly_core.table import condition_failed

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


# A delayed run's message received this little before its not_before is claimed after waiting the rest, not hidden.
EARLY_WAIT_MS = 1000


class ClaimRefused(Exception):
    """The run cannot be started by this node now."""

    def __init__(
        self, run_id: str, why: str, *, terminal: bool = False, retry_in: int = 0, leased: RunRecord | None = None
    ) -> None:
        super().__init__(f"{run_id}: {why}")
        self.terminal = terminal
        self.retry_in = retry_in
        self.leased = leased  # the run as a live lease holder has it: the message may be handed to that node


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
    # The lease expiry the lease index now holds for the run (the next renewal's ``indexed_until_ms``).
    indexed_until_ms: int = 0


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


DELETE_BATCH_SIZE = 10  # SQS's largest batch
VISIBILITY_BATCH_SIZE = 10
DELETE_BATCH_DELAY = 0.5  # seconds a terminal run's message may wait for others to share its request
DELETE_ATTEMPTS = 5
DELETE_RETRY_BASE_SECONDS = 0.2


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
            time.sleep(backoff.delay(max(tries for _, tries in batch), base=DELETE_RETRY_BASE_SECONDS, cap=5.0))
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
        # Every write to a run item is one of the run store's transitions (runly_core.run_store).
        self.runs = RunStore(self._table)
        self._dynamodb = self._table.meta.client  # the client every table call goes through

    @property
    def _s3(self) -> Any:
        with self._s3_lock:  # a session may not build clients on two threads at once
            if self._s3_client is None:
                self._s3_client = self._session.client("s3", config=BOTO_CONFIG)
            return self._s3_client

    @property
    def run_objects(self) -> RunObjects:
        """The run's values beyond the run item's inline sizes, in the feed bucket under ``runs/{env}/``."""
        return RunObjects(self._s3, self.bucket)

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
    def get_run(self, run_id: str) -> RunRecord | None:
        """The run, if the API created it (runly_core.run_store.api_run): an item under its key that is not
        marked API_CREATED, or does not validate, was written by a node's credentials: no run to execute."""
        return self.runs.get(run_id)

    def get_checkpoint(self, run_id: str) -> Checkpoint | None:
        """The run's last checkpoint, its state read back from S3 if it is stored there (runly_core.run_objects:
        RunObjectUnreadable if that object is missing or not the bytes written)."""
        item = self._table.get_item(Key=checkpoint_key(run_id), ConsistentRead=True).get("Item")
        if not item or "checkpoint_json" not in item:
            return None
        return load_checkpoint(run_id, item["checkpoint_json"], lambda: self.run_objects)

    def write_checkpoint(self, record: RunRecord, node_id: str, checkpoint: Checkpoint, sequence: int = 0) -> None:
        """Store the checkpoint only if this attempt still holds the lease, in one transaction (LeaseLost if not).

        ``sequence``: how many checkpoints this attempt wrote before; a state stored in S3 goes to its slot
        (``sequence % 2``), never to the one the last acknowledged checkpoint names."""
        # Measured before any write (raises runly.sizes.CheckpointTooLarge or NotJson): never refused by DynamoDB.
        measured = sizes.checkpoint_json(checkpoint)
        # A state over the inline size is put first: the fenced write then names an object that is there.
        stored = self.run_objects.store_checkpoint(record.run_id, record.attempt, checkpoint, measured, sequence)
        self.runs.write_checkpoint(record, node_id, stored)

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
        if record.state is RunState.QUEUED and record.attempt == 0 and record.not_before is not None:
            # A delayed run (functions.logic.delays) never starts early. Its SQS delay is whole seconds rounded down,
            # so its message comes up to a second early: that fraction is waited here (the lease still counts from
            # the receipt, so it only gets shorter). Earlier (clocks apart, a timer that fired early): hidden again
            # until then, not dropped.
            early_ms = int(datetime.fromisoformat(record.not_before).timestamp() * 1000) - now_ms
            if 0 < early_ms <= EARLY_WAIT_MS:
                time.sleep(early_ms / 1000)
            elif early_ms > 0:
                raise ClaimRefused(run_id, f"delayed until {record.not_before}", retry_in=-(-early_ms // 1000))
        if record.state is RunState.QUEUED and record.retry_at is not None:
            # A retry delay longer than one message could be hidden for (SQS's cap, or its 15-minute delay on a
            # fresh message) is carried by the run: a message that comes back early is hidden again until then.
            wait_ms = int(datetime.fromisoformat(record.retry_at).timestamp() * 1000) - now_ms
            if wait_ms >= 1000:
                raise ClaimRefused(run_id, f"waiting for its retry at {record.retry_at}", retry_in=wait_ms // 1000 + 1)

        if leased:
            # Its node was lost: as the reaper would (runly_core.run_store.abandoned_outcome), a cancel wins and a run
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
            return self.runs.claim(record, node_id, until)
        except RunChanged as changed:
            raise ClaimRefused(run_id, "another node claimed it first", retry_in=lease_seconds) from changed

    def _close_abandoned(self, record: RunRecord, state: RunState, reason: FailureReason, message: str) -> None:
        """End a run whose lease expired (or that ran out of attempts), unless it moved since it was read: then
        the claim is refused all the same, and whoever moved it decides."""
        try:
            self.runs.end_abandoned(record, state, reason, message)
        except RunChanged:
            log.info("run %s moved while its claim closed it; left to whoever moved it", record.run_id)

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
        indexed_until_ms: int | None = None,
    ) -> LeaseRenewal:
        """extend_lease, also answering with a message of the run handed over to this attempt (hand_over);
        ``drop_handoff`` clears the one the last renewal answered with, now that it is kept. ``indexed_until_ms``:
        the lease expiry the lease index holds (RunStore.renew); the answer says what it holds now."""
        renewal = self.runs.renew(
            record,
            node_id,
            until_ms,
            progress_json=_progress_json(record, progress),
            drop_handoff=drop_handoff,
            indexed_until_ms=indexed_until_ms,
        )
        if renewal.item is None:
            return LeaseRenewal(RunState.RUNNING, indexed_until_ms=renewal.indexed_until_ms)
        attributes = renewal.item
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
        return LeaseRenewal(
            state if state is RunState.CANCELLING else RunState.RUNNING, delivery, renewal.indexed_until_ms
        )

    def hand_over(self, leased: RunRecord, delivery: Delivery) -> bool:
        """Offer ``delivery``, a message of a run that a live attempt holds, to that attempt through the run
        item; its node keeps it on its next heartbeat (renew_lease) and deletes the message it had, so the run
        keeps one message, received afresh (this is how a replacement sent before SQS's in-flight cap reaches
        the run's holder). False: the holder changed, or an offer for this attempt is already waiting."""
        return self.runs.hand_over(
            leased,
            {
                "receipt_handle": delivery.receipt_handle,
                "message_id": delivery.message_id,
                "received_ms": int(delivery.received_at * 1000),
                "receive_count": delivery.receive_count,
            },
        )

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
        # First, before anything is written: an output over its limit (or not JSON) raises here, and the caller
        # ends the run for that instead (runly.sizes.OutputTooLarge, NotJson).
        output_json = sizes.output_json(output) if state.terminal else None
        output_ref = None
        if output_json is not None and len(output_json.encode()) > OUTPUT_INLINE_BYTES:
            # Out of the run item (runly_core.run_objects): stored, checksummed, before the fenced write that names
            # it; a lost lease leaves an object nothing names (its key is its sha256: a rerun writes the same one).
            output_ref = self.run_objects.put_output(record.run_id, output_json)
            output_json = None
        if error is not None:
            error = bounded_error(error)
        self.runs.end_attempt(
            record,
            node_id,
            state=state,
            reason=reason,
            attempt_error=sizes.truncate_utf8(error["message"], MAX_ATTEMPT_ERROR_BYTES) if error is not None else None,
            error_json=sizes.stored_json(error) if error is not None else None,
            output_json=output_json,
            output_ref=output_ref,
            progress_json=_progress_json(record, progress),
            retry_at=iso(retry_at) if retry_at is not None else None,
        )

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
            if not condition_failed(exc):
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
