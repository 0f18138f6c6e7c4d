"""Delayed runs: a run enqueued with ``not_before`` (or ``delay_seconds``) starts no earlier than that time.

How its message waits, by how far ahead ``not_before`` is when the run is dispatched:

- up to ``Delays.sqs_seconds`` (SQS's own limit, 15 minutes; tests shrink it): the message is sent at once with SQS
  ``DelaySeconds``, rounded down to the whole second, so it is received up to a second before ``not_before``
  (rounding up would make every delayed run start up to a second late);
- further ahead: a one-time EventBridge Scheduler schedule (``at(...)``, ``functions.dal.schedules.RunTimers``)
  fires ``sqs_seconds`` before ``not_before`` into the fire function (``fire``), which sends the message with the
  delay that remains. A timer costs nothing while it waits and deletes itself once it fired.

Whatever the path, the agent's claim reads ``not_before`` on the run (``node_agent.aws.AgentAws.claim``): a message
received up to a second early is claimed once that second is over; one received earlier (clocks disagreeing, a
timer fired early) is hidden again until then: kept, never dropped. A ``not_before`` already past starts the run at
once.

Cancelling a delayed run deletes its timer (``cancel_timer``); a timer that fires for a run that is no longer
waiting (cancelled, or started) sends nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from functions.dal.queue import RunQueue
from functions.dal.schedules import RunTimers
from functions.dal.store import Store
from runly_core.contracts import MAX_DELAY_SECONDS, EnqueueRunRequest, RunState, RunTimerFire
from runly_core.records import RunRecord, iso
from runly_core.resources import SQS_MAX_DELAY_SECONDS

from .errors import Unprocessable
from .schedule_expression import at_expression

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delays:
    """How delayed runs wait: ``timers`` for delays longer than ``sqs_seconds`` (None: only SQS delays are
    possible here, e.g. a schedule's fire), SQS's DelaySeconds up to ``sqs_seconds``."""

    timers: RunTimers | None = None
    sqs_seconds: int = SQS_MAX_DELAY_SECONDS

    def __post_init__(self) -> None:
        if not 1 <= self.sqs_seconds <= SQS_MAX_DELAY_SECONDS:
            raise ValueError(f"sqs_seconds must be 1 to {SQS_MAX_DELAY_SECONDS}, not {self.sqs_seconds}")

    def needs_timer(self, not_before: datetime | None, now: datetime) -> bool:
        return not_before is not None and (not_before - now).total_seconds() > self.sqs_seconds


SQS_ONLY = Delays()


def _ceil_millisecond(moment: datetime) -> datetime:
    """Stored times have milliseconds (``iso``): round up, so that the stored time is never before the asked one."""
    extra = moment.microsecond % 1000
    return moment + timedelta(microseconds=1000 - extra) if extra else moment


def not_before_of(request: EnqueueRunRequest, now: datetime) -> datetime | None:
    """When a run of ``request`` may start (UTC; None: at once). More than a year ahead is a 422 naming the field."""
    if request.delay_seconds:
        return _ceil_millisecond(now + timedelta(seconds=request.delay_seconds))
    if request.not_before is None:
        return None
    moment = _ceil_millisecond(request.not_before.astimezone(UTC))
    if (moment - now).total_seconds() > MAX_DELAY_SECONDS:
        raise Unprocessable(
            f"not_before may be at most {MAX_DELAY_SECONDS // 86400} days ahead, not {iso(moment)}", field="not_before"
        )
    return moment


def not_before(record: RunRecord) -> datetime | None:
    return datetime.fromisoformat(record.not_before) if record.not_before else None


def sqs_delay(moment: datetime | None, now: datetime) -> int:
    """The DelaySeconds that keeps a message hidden until at most a second before ``moment`` (rounded down: the
    claim waits the fraction), at most SQS's 15 minutes."""
    if moment is None:
        return 0
    return max(0, min(SQS_MAX_DELAY_SECONDS, math.floor((moment - now).total_seconds())))


def delayed_until(record: RunRecord, now: datetime) -> datetime | None:
    """``not_before`` of a Queued run that has not started and must still wait; else None."""
    moment = not_before(record)
    if moment is None or record.state is not RunState.QUEUED or record.attempt > 0 or moment <= now:
        return None
    return moment


def dispatch(record: RunRecord, *, queue: RunQueue, delays: Delays, now: datetime) -> None:
    """Send the run's message (delayed by SQS until ``not_before``), or, further ahead than SQS can delay it,
    create the run's timer, which sends it ``delays.sqs_seconds`` before ``not_before``."""
    moment = not_before(record)
    if not delays.needs_timer(moment, now):
        queue.dispatch_run(record.run_id, delay_seconds=sqs_delay(moment, now))
        return
    assert moment is not None
    if delays.timers is None:
        raise Unprocessable(f"a delay of more than {delays.sqs_seconds} s is not possible here", field="delay_seconds")
    delays.timers.create(record.run_id, at_expression(moment - timedelta(seconds=delays.sqs_seconds)))


def cancel_timer(record: RunRecord, *, delays: Delays) -> None:
    """Delete the timer of a delayed run just cancelled, if it may have one. A timer that cannot be deleted now
    fires into a no-op (``fire``: the run is Cancelled) and deletes itself: logged, not raised."""
    moment = not_before(record)
    if delays.timers is None or not delays.needs_timer(moment, datetime.fromisoformat(record.created_at)):
        return  # never had one: its message was sent with an SQS delay
    try:
        delays.timers.delete(record.run_id)
    except Exception:
        log.exception("run %s: deleting its timer failed; it fires into nothing and deletes itself", record.run_id)


@dataclass(frozen=True)
class TimerOutcome:
    status: str  # dispatched | missing (no such run) | skipped (cancelled, or started: nothing to send)
    run_id: str
    delay_seconds: int = 0


def fire(event: RunTimerFire, *, store: Store, queue: RunQueue, now: datetime) -> TimerOutcome:
    """A run's timer fired: send its message with the delay that remains. A failure to send raises, so that
    EventBridge Scheduler retries; EventBridge retries only a failed invocation, and a message sent twice (an
    invocation that failed after sending) is absorbed by the claim as any SQS duplicate is (one attempt holds the
    lease, a terminal run's message is deleted)."""
    record = store.get_run(event.run_id)
    if record is None:
        return TimerOutcome("missing", event.run_id)
    if record.state is not RunState.QUEUED or record.attempt > 0:
        return TimerOutcome("skipped", event.run_id)
    delay = sqs_delay(not_before(record), now)
    queue.dispatch_run(record.run_id, delay_seconds=delay)
    return TimerOutcome("dispatched", record.run_id, delay)
