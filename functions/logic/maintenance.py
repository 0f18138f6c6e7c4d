"""Nothing lost, nothing stuck: the reaper and the dead-letter handler.

A node normally loses a run only to another node: its message reappears after
the lease and the next claim takes over. These use cases cover what that cannot:
a run whose message is gone (dead-lettered, or never redelivered) while its
lease expired long ago, and a message that went to the dead-letter queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from functions.dal.maintenance import LeaseEntry, MaintenanceStore, ReaperPosition
from runly_core.contracts import FailureReason, RunMessage, RunState
from runly_core.records import RunRecord, run_environment
from runly_core.run_store import RUN_INDEX_SHARDS, RunChanged, abandoned_outcome, lease_index_partition

log = logging.getLogger(__name__)


# What one reaper invocation reads at most (the reaper runs every minute; the next one continues where this one
# stopped, from the position item): candidates read from the table, and time.
REAPER_MAX_CANDIDATES = 2_000
REAPER_MAX_SECONDS = 20.0
_LEASE_PAGE = 100  # BatchGetItem takes 100 keys: one page of candidates is one batch read


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # a node got there first
    # Items in a lease partition that are not runs the API created there (written with a node's credentials):
    # never re-queued nor changed; their table keys, for the log.
    refused: list[str] = field(default_factory=list)
    # Candidates whose index entry looked expired while the run's real lease (the table's) was live, or within
    # the grace: a renewal that did not move the index entry (LEASE_INDEX_REFRESH_MS). Left alone.
    renewed: list[str] = field(default_factory=list)
    # The lease partition this invocation stopped in at its bound (at most one); the next one continues there.
    bounded: list[str] = field(default_factory=list)


def reap(
    store: MaintenanceStore,
    *,
    now_ms: int,
    grace_seconds: int,
    max_candidates: int = REAPER_MAX_CANDIDATES,
    max_seconds: float = REAPER_MAX_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> ReapReport:
    """Re-queue or end every run whose lease expired more than ``grace_seconds`` ago: a run goes back to the queue
    of the environment its key names, and only a run the API created.

    Every lease partition (each environment's RUN_INDEX_SHARDS shards) is queried for entries whose indexed expiry
    is before the bound; each candidate is read from the table and judged by its real lease. At most
    ``max_candidates`` candidates and ``max_seconds`` per invocation: past either, the position is saved and the
    next invocation continues from it (``bounded``); a sweep that reaches the last partition starts over next time.
    """
    report = ReapReport()
    before_ms = now_ms - grace_seconds * 1000
    started = clock()
    streams = [(environment, shard) for environment in store.environments for shard in range(RUN_INDEX_SHARDS)]
    position = store.reaper_position()
    first, after = 0, None
    if position is not None and (position.environment, position.shard) in streams:
        first, after = streams.index((position.environment, position.shard)), position.after
    read = 0
    for environment, shard in streams[first:]:
        while True:
            if read >= max_candidates or clock() - started >= max_seconds:
                store.save_reaper_position(ReaperPosition(environment=environment, shard=shard, after=after))
                report.bounded.append(lease_index_partition(environment, shard))
                return report
            page = store.expired_leases(
                environment, shard, before_ms, start_after=after, limit=min(_LEASE_PAGE, max_candidates - read)
            )
            read += len(page.entries)
            for entry in page.entries:
                _judge(store, entry, environment, before_ms, report)
            after = page.last_evaluated
            if after is None:
                break
    if position is not None:
        store.save_reaper_position(None)
    return report


def _judge(store: MaintenanceStore, entry: LeaseEntry, environment: str, before_ms: int, report: ReapReport) -> None:
    record = entry.record
    if record is None:
        if not entry.found:
            return  # the index lags the run's deletion (a run taken back before dispatch)
        log.warning(
            "lease index entry %.200s is not a run the API created in %s: left alone", entry.partition_key, environment
        )
        report.refused.append(entry.partition_key)
        return
    if record.lease_until_ms is None:
        report.skipped.append(record.run_id)  # its lease ended since the index was read (the index lags)
    elif record.lease_until_ms >= before_ms:
        report.renewed.append(record.run_id)
    else:
        _reap_one(store, record, report)


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
