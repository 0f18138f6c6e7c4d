"""Delayed runs' arithmetic (functions.logic.delays) on fixed times: when a run may start, the SQS delay that never
lets it start early, which path a delay takes, and what a timer's fire does with the run it names."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from functions.logic import delays
from functions.logic.errors import Unprocessable
from runly_core.contracts import MAX_DELAY_SECONDS, EnqueueRunRequest, RunState, RunTimerFire
from runly_core.records import RunRecord, iso

NOW = datetime(2027, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
WHOLE = NOW.replace(microsecond=0)  # stored times have milliseconds: whole-second arithmetic on it
RUN_ID = "run_default_20270102030405_0123456789ab"


def request(**fields: Any) -> EnqueueRunRequest:
    return EnqueueRunRequest(package="hello", job="hello", **fields)


def record(not_before: datetime | None, *, state: RunState = RunState.QUEUED, attempt: int = 0) -> RunRecord:
    return RunRecord(
        run_id=RUN_ID, state=state, package="hello", version="1.0.0", job="hello", entry_point="hello:Hello",
        environment="default", config_json="{}", timeout_seconds=60, max_attempts=3, bundle_key="k",
        bundle_sha256="0" * 64, created_at=iso(NOW), attempt=attempt,
        not_before=iso(not_before) if not_before else None,
    )  # fmt: skip


def test_not_before_is_rounded_up_to_the_stored_millisecond() -> None:
    assert delays.not_before_of(request(delay_seconds=3), NOW) == NOW.replace(microsecond=124000) + timedelta(seconds=3)
    asked = datetime(2027, 1, 2, 4, 0, 0, 1, tzinfo=UTC)
    assert delays.not_before_of(request(not_before=asked), NOW) == asked.replace(microsecond=1000)
    assert delays.not_before_of(request(delay_seconds=0), NOW) is None
    assert delays.not_before_of(request(), NOW) is None


def test_a_year_is_the_longest_delay() -> None:
    assert delays.not_before_of(request(delay_seconds=MAX_DELAY_SECONDS), NOW) is not None
    with pytest.raises(ValidationError):
        request(delay_seconds=MAX_DELAY_SECONDS + 1)
    with pytest.raises(Unprocessable) as refused:
        delays.not_before_of(request(not_before=NOW + timedelta(seconds=MAX_DELAY_SECONDS + 1)), NOW)
    assert refused.value.field == "not_before"


def test_the_sqs_delay_is_rounded_down_and_capped_at_15_minutes() -> None:
    assert delays.sqs_delay(None, NOW) == 0
    assert delays.sqs_delay(NOW - timedelta(seconds=5), NOW) == 0
    # Received less than a second early: the claim waits the rest (node_agent.aws.EARLY_WAIT_MS)
    assert delays.sqs_delay(NOW + timedelta(seconds=2, milliseconds=999), NOW) == 2
    assert delays.sqs_delay(NOW + timedelta(seconds=2), NOW) == 2
    assert delays.sqs_delay(NOW + timedelta(hours=1), NOW) == 900


def test_a_delay_beyond_the_sqs_threshold_needs_a_timer() -> None:
    short = delays.Delays(sqs_seconds=4)
    assert not short.needs_timer(NOW + timedelta(seconds=4), NOW)
    assert short.needs_timer(NOW + timedelta(seconds=4, milliseconds=1), NOW)
    assert not delays.SQS_ONLY.needs_timer(None, NOW)
    with pytest.raises(ValueError):
        delays.Delays(sqs_seconds=901)


def test_only_an_unstarted_queued_run_before_its_time_is_delayed() -> None:
    later = NOW + timedelta(minutes=1)
    assert delays.delayed_until(record(later), NOW) == later.replace(microsecond=123000)
    assert delays.delayed_until(record(later), later + timedelta(seconds=1)) is None
    assert delays.delayed_until(record(later, state=RunState.CANCELLED), NOW) is None
    assert delays.delayed_until(record(later, attempt=1), NOW) is None  # a retry waits by retry_at instead
    assert delays.delayed_until(record(None), NOW) is None


@dataclass
class FakeQueue:
    sent: list[tuple[str, int]] = field(default_factory=list)

    def dispatch_run(self, run_id: str, *, delay_seconds: int = 0) -> str:
        self.sent.append((run_id, delay_seconds))
        return "m1"


@dataclass
class FakeTimers:
    created: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    fail: bool = False

    def create(self, run_id: str, expression: str) -> None:
        self.created.append((run_id, expression))

    def delete(self, run_id: str) -> bool:
        if self.fail:
            raise RuntimeError("EventBridge Scheduler is down")
        self.deleted.append(run_id)
        return True


@dataclass
class FakeStore:
    run: RunRecord | None

    def get_run(self, run_id: str) -> RunRecord | None:
        return self.run


def test_dispatch_sends_an_sqs_delay_or_creates_a_timer_15_minutes_before() -> None:
    queue, timers = FakeQueue(), FakeTimers()
    on_timers = delays.Delays(timers=timers)  # type: ignore[arg-type]
    delays.dispatch(record(WHOLE + timedelta(seconds=90)), queue=queue, delays=on_timers, now=WHOLE)  # type: ignore[arg-type]
    assert queue.sent == [(RUN_ID, 90)] and timers.created == []

    later = datetime(2027, 1, 3, 0, 0, 0, tzinfo=UTC)
    delays.dispatch(record(later), queue=queue, delays=on_timers, now=NOW)  # type: ignore[arg-type]
    assert timers.created == [(RUN_ID, "at(2027-01-02T23:45:00)")] and len(queue.sent) == 1


def test_a_timer_fire_sends_the_remaining_delay_and_nothing_for_a_run_no_longer_waiting() -> None:
    not_before = WHOLE + timedelta(minutes=15)
    event = RunTimerFire(run_id=RUN_ID, scheduled_time=WHOLE)
    queue = FakeQueue()
    outcome = delays.fire(event, store=FakeStore(record(not_before)), queue=queue, now=WHOLE)  # type: ignore[arg-type]
    assert (outcome.status, outcome.delay_seconds) == ("dispatched", 900) and queue.sent == [(RUN_ID, 900)]

    for gone in (record(not_before, state=RunState.CANCELLED), record(not_before, attempt=1)):
        assert delays.fire(event, store=FakeStore(gone), queue=queue, now=NOW).status == "skipped"  # type: ignore[arg-type]
    assert delays.fire(event, store=FakeStore(None), queue=queue, now=NOW).status == "missing"  # type: ignore[arg-type]
    assert len(queue.sent) == 1


def test_cancel_deletes_a_timer_only_where_there_is_one_and_a_failed_delete_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = FakeTimers()
    on_timers = delays.Delays(timers=timers)  # type: ignore[arg-type]
    delays.cancel_timer(record(NOW + timedelta(minutes=5)), delays=on_timers)  # an SQS delay: no timer
    delays.cancel_timer(record(NOW + timedelta(hours=5)), delays=on_timers)
    assert timers.deleted == [RUN_ID]

    timers.fail = True
    delays.cancel_timer(record(NOW + timedelta(hours=5)), delays=on_timers)
    assert "deleting its timer failed" in caplog.text
