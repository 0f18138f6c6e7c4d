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

from functions.dal.maintenance import MaintenanceStore
from runly_core.contracts import FailureReason, RunMessage, RunState
from runly_core.records import RunRecord, run_environment
from runly_core.run_store import RunChanged, abandoned_outcome

log = logging.getLogger(__name__)


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # a node got there first
    # Items in a lease partition that are not runs the API created there (written with a node's credentials):
    # never re-queued nor changed; their table keys, for the log.
    refused: list[str] = field(default_factory=list)


def reap(store: MaintenanceStore, *, now_ms: int, grace_seconds: int) -> ReapReport:
    """Re-queue or end every run whose lease expired more than ``grace_seconds`` ago, environment by environment:
    a run goes back to the queue of the environment its key names, and only a run the API created."""
    report = ReapReport()
    for environment in store.environments:
        for entry in store.expired_leases(environment, now_ms - grace_seconds * 1000):
            if entry.record is None:
                log.warning(
                    "lease index entry %.200s is not a run the API created in %s: left alone",
                    entry.partition_key,
                    environment,
                )
                report.refused.append(entry.partition_key)
                continue
            _reap_one(store, entry.record, report)
    return report


def _reap_one(store: MaintenanceStore, record: RunRecord, report: ReapReport) -> None:
    # The same decision as a node's takeover of an expired lease (node_agent.aws claim): one function decides.
    state, reason, message = abandoned_outcome(record)
    try:
        store.runs.end_abandoned(record, state, reason, message)
    except RunChanged:
        report.skipped.append(record.run_id)
        return
    if state is RunState.CANCELLED:
        report.cancelled.append(record.run_id)
    elif state.terminal:
        report.failed.append(record.run_id)
    else:
        # A second message is harmless: a claim is conditional, and a terminal run's message is deleted.
        store.queue.dispatch_run(record.run_id)
        report.requeued.append(record.run_id)


def handle_dead_letter(store: MaintenanceStore, body: str, receive_count: int, *, environment: str) -> str:
    """Mark the run of a message dead-lettered in ``environment``'s DLQ Failed; returns what was done (for the log).

    Only a run of that environment (its id, hence its key, names it) that the API created: a node may send any
    body to its own queue, and what it names in another environment, or forged, is left alone.
    """
    try:
        message = RunMessage.model_validate_json(body)
    except ValidationError:
        log.error("dead letter is not a run message; dropped: %.500s", body)
        return "dropped: not a run message"
    try:
        named = run_environment(message.run_id)
    except ValueError:
        return "dropped: not a run id"
    if named != environment:
        log.warning("dead letter in %s names run %s of %s: dropped", environment, message.run_id, named)
        return f"dropped: a run of environment {named}, not {environment}"
    record = store.runs.get(message.run_id)
    if record is None:
        return "dropped: no run the API created"
    if record.state.terminal:
        return f"ignored: run already {record.state}"
    if record.state in (RunState.RUNNING, RunState.CANCELLING):
        # A live node still owns it; if that node dies, the reaper re-dispatches the run.
        return "ignored: run is leased; the reaper watches its lease"
    reason = f"its message was received {receive_count} times without an outcome and moved to the dead-letter queue"
    try:
        store.runs.end_abandoned(record, RunState.FAILED, FailureReason.DEAD_LETTER, reason)
    except RunChanged:
        return "ignored: run moved on"
    return "failed the run"
