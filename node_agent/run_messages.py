"""Keeping a running run's SQS message for as long as the run lives, within SQS's in-flight cap.

SQS keeps a message in flight at most 12 hours in total from its receipt and refuses a visibility change past
that, while a run may live up to its timeout (7 days). So the holder of a run replaces its message before the
cap: when a full lease no longer fits before the message's limit (``max_in_flight_seconds`` from its receipt),
the agent sends a fresh message for the run (the same body) and keeps the old one hidden up to its limit.
Sending gives no receipt handle, so the fresh message reaches the holder through the lease protocol: whichever
node receives it (this one or another) finds the run leased by a live attempt, hides the message for the rest
of that lease (as it always did) and hands it over in the run item (``AgentAws.hand_over``); the holder's next
heartbeat answers with it, the holder keeps it, deletes the old one and heartbeats the new receipt. The lease
and its fencing token never change, so the fresh message cannot start a second attempt while the lease lives.

What else can happen, and why nothing is lost, run twice or stuck:

- The holder dies between sending and deleting: the run has two messages. Its lease runs out; the first
  message received after that is claimed as the next attempt (from the checkpoint); the other one, received
  while that attempt holds the lease, is handed to it and deleted, or, received once the run is terminal, is
  deleted by the claim that finds it so. Completion is fenced by the attempt number: one outcome.
- Nobody receives the replacement before the old message's limit (every node is full): the old message is
  no longer extended and becomes visible; the lease is still extended, since the run has a message in the
  queue either way, and whichever of the two is received first is handed over.
- A message received again (SQS delivers at least once) is handed over too; the holder keeps the newer
  receipt of the same message and deletes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from node_agent.aws import AgentAws, Delivery
from runly_core.resources import SQS_MAX_DELAY_SECONDS

log = logging.getLogger(__name__)


class HoldsMessage(Protocol):
    """A supervised run, as the heartbeat sees it: its id and the message it holds (replaced on a handoff)."""

    delivery: Delivery

    @property
    def run_id(self) -> str: ...


def _run_of(delivery: Delivery) -> str:
    return delivery.message.run_id if delivery.message is not None else "?"


def hold_message(
    aws: AgentAws, delivery: Delivery, seconds: int, *, limit_seconds: int, now: float | None = None
) -> None:
    """Hide a run's message for ``seconds`` (a retry delay, a back-off), or, when that would keep it past its
    limit, send a fresh message for the run delayed by as much as SQS allows (15 minutes) and delete this one.

    A longer wait is carried by the run's ``retry_at``: the node that receives the fresh message early is
    refused its claim until then and hides that message (whose own limit starts afresh) for the rest, again
    in steps when needed. Raises only before anything changed (the caller may retry it): a deletion that fails
    after the send leaves two messages, and the second is absorbed as above.
    """
    now = time.time() if now is None else now
    if now + seconds <= delivery.received_at + limit_seconds:
        aws.set_visibility(delivery, seconds)
        return
    if seconds <= 0:
        return  # handed back past its limit: it is visible already (it was never hidden beyond it)
    aws.send_replacement(delivery, delay_seconds=min(seconds, SQS_MAX_DELAY_SECONDS))
    try:
        aws.delete(delivery)
    except Exception:  # the old message comes back to a claim that hides it again or finds the run done
        log.exception("run %s: deleting the message that was replaced failed", _run_of(delivery))


class MessageKeeper:
    """The heartbeat's part for messages: one ChangeMessageVisibilityBatch per 10 runs, replacements before
    each message's limit, and the handoffs the lease renewals answer with."""

    def __init__(self, aws: AgentAws, *, lease_seconds: int, limit_seconds: int, now: Callable[[], float]) -> None:
        self._aws = aws
        self._lease_seconds = lease_seconds
        self._limit_seconds = limit_seconds
        self._now = now
        self._lock = threading.Lock()
        self._replaced: dict[str, str] = {}  # run -> the message (id) a replacement was sent for
        self._to_drop: set[str] = set()  # runs whose kept handoff the next lease renewal clears from the item

    def limit_of(self, delivery: Delivery) -> float:
        """When ``delivery`` can no longer be kept hidden (wall-clock seconds)."""
        return delivery.received_at + self._limit_seconds

    def beat(self, runs: Sequence[HoldsMessage]) -> set[str]:
        """Keep every run's message hidden for the lease (never past its limit), replacing those whose limit
        is less than a lease away; returns the runs whose lease may be extended: those whose message is kept,
        or which have another message in the queue (past its limit, or replaced). A failed change of any other
        run is a failed beat for that run alone (logged; retried on the next beat; the lease outlives several).
        """
        now = self._now()
        changes: list[tuple[HoldsMessage, Delivery, int]] = []
        kept: set[str] = set()
        for run in runs:
            delivery = run.delivery
            left = int(self.limit_of(delivery) - now)
            if left < self._lease_seconds:
                self._replace(run.run_id, delivery)
            if left <= 0:
                # Not extended again (SQS would refuse): it is visible, or will be within the lease, and
                # comes back here through a handoff, as its replacement does.
                kept.add(run.run_id)
                continue
            changes.append((run, delivery, min(self._lease_seconds, left)))
        results = self._aws.set_visibilities([(delivery, seconds) for _, delivery, seconds in changes])
        for (run, delivery, _), error in zip(changes, results, strict=True):
            if error is None or self._is_replaced(run.run_id, delivery):
                kept.add(run.run_id)
            else:
                log.warning("heartbeat for run %s failed: its message was not kept hidden (%s)", run.run_id, error)
        return kept

    def _is_replaced(self, run_id: str, delivery: Delivery) -> bool:
        with self._lock:
            return self._replaced.get(run_id) == delivery.message_id

    def _replace(self, run_id: str, delivery: Delivery) -> None:
        if self._is_replaced(run_id, delivery):
            return
        try:
            message_id = self._aws.send_replacement(delivery)
        except Exception:  # tried again on the next beat; the old message is kept until its limit meanwhile
            log.exception("run %s: sending the replacement of its message failed", run_id)
            return
        with self._lock:
            self._replaced[run_id] = delivery.message_id
        log.info(
            "run %s: its message reaches its in-flight limit in %d s; sent replacement %s",
            run_id, self.limit_of(delivery) - self._now(), message_id,
        )  # fmt: skip

    def adopt(self, run: HoldsMessage, handoff: Delivery) -> None:
        """Keep ``handoff``, a message of this run received afresh, and delete the one held until now
        (unless it is the same message received again: its older receipt must not delete it)."""
        with self._lock:
            self._to_drop.add(run.run_id)
        current = run.delivery
        if handoff.receipt_handle == current.receipt_handle:
            return
        run.delivery = handoff
        if handoff.message_id != current.message_id:
            self._aws.delete_soon(current)
        log.info(
            "run %s: now holds message %s (received %.0f s ago); %s",
            run.run_id, handoff.message_id, self._now() - handoff.received_at,
            "the same message received again" if handoff.message_id == current.message_id
            else f"deleting {current.message_id}",
        )  # fmt: skip

    def handoff_to_drop(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._to_drop

    def handoff_dropped(self, run_id: str) -> None:
        with self._lock:
            self._to_drop.discard(run_id)

    def forget(self, run_id: str) -> None:
        """The run left this node."""
        with self._lock:
            self._replaced.pop(run_id, None)
            self._to_drop.discard(run_id)
