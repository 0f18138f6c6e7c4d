"""Nothing lost, nothing stuck: the reaper and the dead-letter handler.

A node normally loses a run only to another node: its message reappears after
the lease and the next claim takes over. These use cases cover what that cannot:
a run whose message is gone (dead-lettered, or never redelivered) while its
lease expired long ago, and a message that went to the dead-letter queue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pydantic import ValidationError

from functions.dal.maintenance import MaintenanceStore, RunMoved
from runly.contracts import FailureReason, RunMessage, RunState
from runly.records import abandoned_outcome

log = logging.getLogger(__name__)


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # a node got there first


def reap(store: MaintenanceStore, *, now_ms: int, grace_seconds: int) -> ReapReport:
    """Re-queue or end every run whose lease expired more than ``grace_seconds`` ago."""
    report = ReapReport()
    for record in store.expired_leases(now_ms - grace_seconds * 1000):
        # The same decision as a node's takeover of an expired lease (node_agent.aws claim): one function decides.
        state, reason, message = abandoned_outcome(record)
        try:
            store.end_abandoned(record, state, reason, message)
            if state is RunState.CANCELLED:
                report.cancelled.append(record.run_id)
            elif state.terminal:
                report.failed.append(record.run_id)
            else:
                # A second message is harmless: a claim is conditional, and a terminal run's message is deleted.
                store.dispatch(record)
                report.requeued.append(record.run_id)
        except RunMoved:
            report.skipped.append(record.run_id)
    return report


def handle_dead_letter(store: MaintenanceStore, body: str, receive_count: int) -> str:
    """Mark the run of a dead-lettered message Failed; returns what was done (for the log)."""
    try:
        message = RunMessage.model_validate_json(body)
    except ValidationError:
        log.error("dead letter is not a run message; dropped: %.500s", body)
        return "dropped: not a run message"
    record = store.get_run(message.run_id)
    if record is None:
        return "dropped: no such run"
    if record.state.terminal:
        return f"ignored: run already {record.state}"
    if record.state in (RunState.RUNNING, RunState.CANCELLING):
        # A live node still owns it; if that node dies, the reaper re-dispatches the run.
        return "ignored: run is leased; the reaper watches its lease"
    reason = f"its message was received {receive_count} times without an outcome and moved to the dead-letter queue"
    try:
        store.end_abandoned(record, RunState.FAILED, FailureReason.DEAD_LETTER, reason)
    except RunMoved:
        return "ignored: run moved on"
    return "failed the run"
