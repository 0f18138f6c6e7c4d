"""The embedded stack's scheduler on a fake clock: it fires what is due, once, with the event EventBridge Scheduler
would send; not what was due before it started or before a schedule changed; not disabled schedules nor other
targets; and it retries a failed invocation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from runly_cli.embedded.scheduler import MAX_ATTEMPTS, Definition, LocalScheduler
from runly_core.contracts import RunTimerFire, ScheduleFire

T0 = datetime(2026, 3, 4, 12, 0, 0, tzinfo=UTC)
FIRE_ARN = "arn:aws:lambda:us-east-1:123456789012:function:runly-local-schedule-fire"


def definition(name: str, expression: str, **fields: Any) -> Definition:
    values: dict[str, Any] = {
        "name": name,
        "arn": f"arn:aws:scheduler:us-east-1:123456789012:schedule/runly-local/{name}",
        "expression": expression,
        "timezone": "UTC",
        "enabled": True,
        "target_arn": FIRE_ARN,
        "input": ScheduleFire.input_template(name),
        "modified": T0 - timedelta(hours=1),
        **fields,
    }
    return Definition(**values)


class Target:
    def __init__(self, failures: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.failures = failures

    def __call__(self, event: dict[str, Any]) -> dict[str, str]:
        self.events.append(event)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the function failed")
        return {"status": "enqueued"}

    def fired(self) -> list[tuple[str, str]]:
        return [(e["schedule_id"], e["scheduled_time"]) for e in self.events]


def scheduler(definitions: list[Definition], target: Target, started_at: datetime = T0) -> LocalScheduler:
    return LocalScheduler(read=lambda: definitions, invoke=target, started_at=started_at, target_arn=FIRE_ARN)


def test_fires_each_due_time_once_with_eventbridges_event() -> None:
    # Given a schedule every five minutes, and a scheduler started at 12:00:00
    target = Target()
    clock = scheduler([definition("sch_a", "cron(0/5 * * * ? *)")], target)

    # When it checks at 12:04, 12:05:01, 12:06 and 12:10:30
    for minute, second in ((4, 0), (5, 1), (6, 0), (10, 30)):
        clock.fire_due(T0.replace(minute=minute, second=second))

    # Then it fired at 12:05 and 12:10 only (not 12:00: that was not after it started), once each
    assert target.fired() == [("sch_a", "2026-03-04T12:05:00Z"), ("sch_a", "2026-03-04T12:10:00Z")]
    # And each event is the target input with the context attributes filled in
    event = ScheduleFire.model_validate(target.events[0])
    assert event.scheduled_time == T0.replace(minute=5) and event.attempt == 1 and event.execution_id
    assert set(target.events[0]) == set(json.loads(ScheduleFire.input_template("x")))


def test_a_rate_fires_from_its_start_date() -> None:
    target = Target()
    start = T0 + timedelta(minutes=1, seconds=30)
    clock = scheduler([definition("sch_r", "rate(1 minute)", start=start)], target)

    for seconds in (60, 100, 150, 209):
        clock.fire_due(T0 + timedelta(seconds=seconds))

    assert target.fired() == [("sch_r", "2026-03-04T12:01:30Z"), ("sch_r", "2026-03-04T12:02:30Z")]


def test_disabled_schedules_and_other_targets_do_not_fire() -> None:
    target = Target()
    clock = scheduler(
        [
            definition("sch_off", "cron(* * * * ? *)", enabled=False),
            definition("sch_other", "cron(* * * * ? *)", target_arn="arn:aws:sqs:us-east-1:123456789012:elsewhere"),
        ],
        target,
    )
    clock.fire_due(T0 + timedelta(minutes=3))
    assert target.events == []


def test_a_changed_schedule_fires_nothing_due_before_its_change() -> None:
    # Given a schedule every minute that was changed at 12:02:30, first seen at 12:03:10
    target = Target()
    changed = definition("sch_c", "cron(* * * * ? *)", modified=T0 + timedelta(minutes=2, seconds=30))
    clock = scheduler([changed], target)

    clock.fire_due(T0 + timedelta(minutes=3, seconds=10))

    # Then only 12:03 fires (12:01 and 12:02 were due before it changed)
    assert target.fired() == [("sch_c", "2026-03-04T12:03:00Z")]


def test_a_failed_invocation_is_retried_with_the_same_scheduled_time_then_given_up() -> None:
    target = Target(failures=MAX_ATTEMPTS + 1)
    clock = scheduler([definition("sch_f", "cron(0 12 * * ? *)")], target, started_at=T0 - timedelta(seconds=1))

    for seconds in range(0, 10 * MAX_ATTEMPTS, 10):
        clock.fire_due(T0 + timedelta(seconds=seconds))

    assert [e["scheduled_time"] for e in target.events] == ["2026-03-04T12:00:00Z"] * MAX_ATTEMPTS
    assert [e["attempt"] for e in target.events] == [str(n) for n in range(1, MAX_ATTEMPTS + 1)]


def test_a_deleted_schedule_is_forgotten() -> None:
    definitions = [definition("sch_d", "cron(* * * * ? *)")]
    target = Target()
    clock = scheduler(definitions, target)
    clock.fire_due(T0 + timedelta(minutes=1))
    definitions.clear()
    clock.fire_due(T0 + timedelta(minutes=2))
    assert target.fired() == [("sch_d", "2026-03-04T12:01:00Z")]
    assert clock._checked_until == {}


# ---------------------------------------------------------------- one-time at(...) schedules (delayed runs' timers)


def timer(name: str, at: datetime, **fields: Any) -> Definition:
    return definition(
        name,
        f"at({at.strftime('%Y-%m-%dT%H:%M:%S')})",
        input=RunTimerFire.input_template(name),
        action_after_completion="DELETE",
        **fields,
    )


def test_a_one_time_schedule_fires_once_at_its_time_and_is_deleted() -> None:
    # Given a run's timer due at 12:00:10
    run_id = "run_default_20260304120000_0123456789ab"
    timers = [timer(run_id, T0 + timedelta(seconds=10))]
    fired: list[dict[str, Any]] = []
    deleted: list[str] = []
    clock = LocalScheduler(
        read=lambda: timers, invoke=lambda event: fired.append(event), started_at=T0, target_arn=FIRE_ARN,
        complete=lambda d: deleted.append(d.name),
    )  # fmt: skip

    # When the scheduler checks before, at and after its time
    clock.fire_due(T0 + timedelta(seconds=9))
    assert fired == []
    clock.fire_due(T0 + timedelta(seconds=11))
    clock.fire_due(T0 + timedelta(seconds=13))  # moto still lists it if the delete was slow: no second fire

    # Then it fired once, naming the run and its scheduled time, and was deleted (ActionAfterCompletion DELETE)
    assert [(e["run_id"], e["scheduled_time"]) for e in fired] == [(run_id, "2026-03-04T12:00:10Z")]
    assert deleted == [run_id]


def test_a_one_time_schedule_whose_time_passed_while_the_scheduler_was_down_fires_on_start() -> None:
    # Given a timer due at 11:59, still in moto (so not fired), and a scheduler (re)started at 12:00
    target: list[dict[str, Any]] = []
    timers = [timer("run_default_20260304115900_0123456789ab", T0 - timedelta(minutes=1))]
    clock = LocalScheduler(read=lambda: timers, invoke=target.append, started_at=T0, target_arn=FIRE_ARN)

    # When it first checks
    clock.fire_due(T0 + timedelta(seconds=2))

    # Then the timer fires (late, never lost), with its own scheduled time
    assert [e["scheduled_time"] for e in target] == ["2026-03-04T11:59:00Z"]


def test_a_one_time_schedule_that_fails_is_retried_then_completed() -> None:
    target = Target(failures=MAX_ATTEMPTS)
    deleted: list[str] = []
    timers = [timer("run_default_20260304120000_0123456789ab", T0)]
    clock = LocalScheduler(
        read=lambda: timers,
        invoke=target,
        started_at=T0,
        target_arn=FIRE_ARN,
        complete=lambda d: deleted.append(d.name),
    )
    for second in range(1, MAX_ATTEMPTS + 3):
        clock.fire_due(T0 + timedelta(seconds=second))
    assert len(target.events) == MAX_ATTEMPTS
    assert deleted == ["run_default_20260304120000_0123456789ab"]
