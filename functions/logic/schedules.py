"""Use cases of schedules: create, list, get, change and delete them (the API), and fire one (EventBridge Scheduler).

A schedule is a job template (what ``POST /runs`` takes) and a recurrence. Everything is checked before anything is
saved: the recurrence as EventBridge Scheduler reads it (``functions.logic.schedule_expression``), the template as
enqueue
checks a run (``runs.resolve_job``: environment, version and pin, job, config schema). Saving writes the item, then
the EventBridge Scheduler schedule; when EventBridge refuses, the item is taken back (or restored), so the two do
not disagree.

A fire enqueues a normal run through ``runs.enqueue``, marked with the schedule, under an Idempotency-Key owned by
the schedule whose value is the scheduled time: a retried invocation gets the run the first one enqueued.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from functions.dal.queue import RunQueue
from functions.dal.schedules import ScheduleChanged, ScheduleExists, Scheduler, SchedulerRefused, ScheduleStore
from functions.dal.store import Store
from functions.logic.schedule_expression import InvalidSchedule, Recurrence, parse
from runly_core.contracts import (
    CreateScheduleRequest,
    EnqueueRunRequest,
    ScheduleFire,
    ScheduleList,
    ScheduleView,
    UpdateScheduleRequest,
)
from runly_core.records import ScheduleRecord, iso, utcnow

from . import runs
from .errors import BadRequest, Conflict, DomainError, NotFound, TooLarge, Unavailable, Unprocessable
from .runs import Authorize, allow_any

NEXT_FIRE_TIMES = 5
_CHANGE_TRIES = 5
# The fields of a schedule that make up the run it enqueues: a change to one of them is checked as enqueue would.
_TEMPLATE_FIELDS = ("config_json", "version", "timeout_seconds", "max_attempts", "tags", "delay_seconds")


def new_schedule_id() -> str:
    return f"sch_{uuid.uuid4().hex[:16]}"


def fire_owner(schedule_id: str) -> str:
    """Whose Idempotency-Keys a schedule's fires use: its own namespace, apart from every API key's."""
    return f"schedule:{schedule_id}"


def fire_key(scheduled_time: datetime) -> str:
    """The Idempotency-Key of one fire: its scheduled time (what EventBridge Scheduler sends again on a retry)."""
    return scheduled_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_request(record: ScheduleRecord) -> EnqueueRunRequest:
    """The run a schedule enqueues."""
    return EnqueueRunRequest(
        package=record.package,
        job=record.job,
        config=json.loads(record.config_json),
        environment=record.environment,
        version=record.version,
        timeout_seconds=record.timeout_seconds,
        max_attempts=record.max_attempts,
        tags=record.tags or {},
        delay_seconds=record.delay_seconds or None,
    )


def _recurrence(expression: str, timezone: str) -> Recurrence:
    try:
        return parse(expression, timezone)
    except InvalidSchedule as exc:
        raise Unprocessable(exc.message, field=exc.field) from exc


def _start(record: ScheduleRecord) -> datetime | None:
    return datetime.fromisoformat(record.start_at) if record.start_at else None


def view(record: ScheduleRecord, *, now: datetime | None = None) -> ScheduleView:
    times: list[datetime] = []
    if record.enabled:
        try:
            recurrence = parse(record.expression, record.timezone)
        except InvalidSchedule:
            pass  # a time zone the zone database no longer knows: it was valid when saved; show no preview
        else:
            times = recurrence.next_times(after=now or utcnow(), start=_start(record), count=NEXT_FIRE_TIMES)
    return record.view(times)


def _check_fires(recurrence: Recurrence, *, start: datetime | None, now: datetime) -> None:
    if not recurrence.next_times(after=now, start=start, count=1):
        raise Unprocessable(f"{recurrence.expression} never fires after now", field="expression")


def _check_template(request: EnqueueRunRequest, *, store: Store, queue: RunQueue) -> None:
    runs.check_config_size(request.config)
    runs.resolve_job(request, store=store, queue=queue)


def _authorized(record: ScheduleRecord | None, schedule_id: str, authorize: Authorize) -> ScheduleRecord:
    if record is None:
        raise NotFound(f"no schedule {schedule_id!r}", field="schedule_id")
    authorize(record.environment)
    return record


# ---------------------------------------------------------------- the API


def create(
    request: CreateScheduleRequest,
    *,
    store: Store,
    queue: RunQueue,
    schedules: ScheduleStore,
    scheduler: Scheduler,
    created_by: str,
    now: datetime | None = None,
) -> ScheduleView:
    moment = now or utcnow()
    recurrence = _recurrence(request.expression, request.timezone)
    start = recurrence.first_start(moment)
    _check_fires(recurrence, start=start, now=moment)
    template = request.run_request()
    _check_template(template, store=store, queue=queue)
    record = ScheduleRecord(
        schedule_id=new_schedule_id(),
        name=request.name,
        package=template.package,
        job=template.job,
        config_json=json.dumps(template.config),
        environment=template.environment,
        version=template.version,
        timeout_seconds=template.timeout_seconds,
        max_attempts=template.max_attempts,
        tags=template.tags or None,
        delay_seconds=template.delay_seconds or None,
        expression=recurrence.expression,
        timezone=request.timezone,
        enabled=request.enabled,
        start_at=iso(start) if start else None,
        created_at=iso(moment),
        created_by=created_by,
        updated_at=iso(moment),
    )
    try:
        schedules.put_new(record)
    except ScheduleExists as exc:  # 64 random bits colliding
        raise Conflict("a schedule with this id already exists; retry") from exc
    try:
        scheduler.create(record)
    except SchedulerRefused as exc:
        schedules.delete(record.schedule_id)
        raise Unprocessable(f"EventBridge Scheduler refused the schedule: {exc}", field="expression") from exc
    except Exception as exc:
        schedules.delete(record.schedule_id)
        raise Unavailable("EventBridge Scheduler did not take the schedule; nothing was created, retry") from exc
    return view(record, now=moment)


def list_schedules(*, schedules: ScheduleStore, environment: str | None, now: datetime | None = None) -> ScheduleList:
    moment = now or utcnow()
    return ScheduleList(items=[view(record, now=moment) for record in schedules.list(environment)])


def get(schedule_id: str, *, schedules: ScheduleStore, authorize: Authorize = allow_any) -> ScheduleView:
    return view(_authorized(schedules.get(schedule_id), schedule_id, authorize))


def update(
    schedule_id: str,
    request: UpdateScheduleRequest,
    *,
    store: Store,
    queue: RunQueue,
    schedules: ScheduleStore,
    scheduler: Scheduler,
    authorize: Authorize = allow_any,
    now: datetime | None = None,
) -> ScheduleView:
    """Change the fields given; conditional on the revision read, so a concurrent change is read again, never
    overwritten."""
    for _ in range(_CHANGE_TRIES):
        moment = now or utcnow()
        current = _authorized(schedules.get(schedule_id), schedule_id, authorize)
        candidate = current.model_copy(update=_changes(request))
        recurrence = _recurrence(candidate.expression, candidate.timezone)
        candidate = candidate.model_copy(update={"expression": recurrence.expression})
        if candidate == current:
            return view(current, now=moment)
        if any(getattr(candidate, field) != getattr(current, field) for field in _TEMPLATE_FIELDS):
            _check_template(run_request(candidate), store=store, queue=queue)
        if recurrence.expression == current.expression and current.start_at:
            # The same rate: keep its phase, from a StartDate that is not in the past (EventBridge refuses those).
            start = recurrence.restart(_start(current), moment)
        else:
            start = recurrence.first_start(moment)  # a new rate starts one interval from now; cron needs none
        _check_fires(recurrence, start=start, now=moment)
        candidate = candidate.model_copy(
            update={
                "start_at": iso(start) if start else None,
                "updated_at": iso(moment),
                "revision": current.revision + 1,
            }
        )
        try:
            schedules.replace_definition(candidate, expected_revision=current.revision)
        except ScheduleChanged:
            continue
        _push(candidate, current, schedules=schedules, scheduler=scheduler)
        return view(candidate, now=moment)
    raise Unavailable(f"schedule {schedule_id} kept changing while being changed; retry")


def _changes(request: UpdateScheduleRequest) -> dict[str, Any]:
    given = request.model_fields_set
    changes: dict[str, Any] = {
        field: getattr(request, field)
        for field in ("name", "timeout_seconds", "max_attempts", "enabled", "timezone", "expression")
        if getattr(request, field) is not None
    }
    if request.delay_seconds is not None:
        changes["delay_seconds"] = request.delay_seconds or None  # 0: no delay
    if request.config is not None:
        changes["config_json"] = json.dumps(request.config)
    if request.tags is not None:
        changes["tags"] = request.tags or None  # {}: no tags any more
    if "version" in given:  # null: the newest version the pin allows
        changes["version"] = request.version
    return changes


def _push(saved: ScheduleRecord, previous: ScheduleRecord, *, schedules: ScheduleStore, scheduler: Scheduler) -> None:
    """Give EventBridge Scheduler the definition just saved; if it refuses, put the previous one back."""
    try:
        scheduler.update(saved)
    except Exception as exc:
        restored = previous.model_copy(update={"revision": saved.revision + 1, "updated_at": iso(utcnow())})
        try:
            schedules.replace_definition(restored, expected_revision=saved.revision)
        except ScheduleChanged:
            pass  # changed again since: that change is the one to keep
        if isinstance(exc, SchedulerRefused):
            raise Unprocessable(f"EventBridge Scheduler refused the schedule: {exc}", field="expression") from exc
        raise Unavailable("EventBridge Scheduler did not take the change; nothing was changed, retry") from exc
    # Two changes racing can reach EventBridge in the other order than they reached the table: make it hold the
    # newest saved definition.
    latest = schedules.get(saved.schedule_id)
    if latest is None:
        scheduler.delete(saved.schedule_id)  # deleted meanwhile: leave no twin firing into nothing
    elif latest.revision > saved.revision:
        scheduler.update(latest)


def delete(
    schedule_id: str, *, schedules: ScheduleStore, scheduler: Scheduler, authorize: Authorize = allow_any
) -> None:
    """EventBridge's schedule first (it stops firing), then the item; a retried DELETE finishes what one began."""
    _authorized(schedules.get(schedule_id), schedule_id, authorize)
    try:
        scheduler.delete(schedule_id)
    except Exception as exc:
        raise Unavailable("EventBridge Scheduler did not delete the schedule; nothing was deleted, retry") from exc
    schedules.delete(schedule_id)


# ---------------------------------------------------------------- firing


@dataclass(frozen=True)
class FireOutcome:
    status: str  # enqueued | duplicate (a retried fire) | disabled | missing (deleted) | failed (last_error)
    run_id: str | None = None
    error: str | None = None


def fire(
    event: ScheduleFire,
    *,
    store: Store,
    queue: RunQueue,
    schedules: ScheduleStore,
    now: datetime | None = None,
) -> FireOutcome:
    """Enqueue the schedule's run for one scheduled time, once however often this is called for that time.

    A template that no longer enqueues (the package version no longer resolves, the job is gone, the config no
    longer matches its schema, the environment is gone) is recorded as the schedule's ``last_error`` and enqueues
    nothing; a failing dependency raises, so that EventBridge Scheduler retries.
    """
    record = schedules.get(event.schedule_id)
    if record is None:
        return FireOutcome("missing")  # deleted after EventBridge read it: nothing to do
    if not record.enabled:
        return FireOutcome("disabled")  # disabled while EventBridge was invoking it
    key = fire_key(event.scheduled_time)
    try:
        run, created = runs.enqueue(
            run_request(record),
            store=store,
            queue=queue,
            owner=fire_owner(record.schedule_id),
            idempotency_key=key,
            schedule_id=record.schedule_id,
        )
    except Conflict as exc:
        if exc.field == runs.IDEMPOTENCY_HEADER:
            # This time already fired, with the template as it was then (it changed since): that run stands.
            return FireOutcome("duplicate", error=exc.message)
        return _failed(record, exc, schedules=schedules, now=now)
    except (NotFound, Unprocessable, TooLarge, BadRequest) as exc:
        return _failed(record, exc, schedules=schedules, now=now)
    # Also on a retry: the invocation that enqueued the run may have failed before it noted it.
    schedules.record_fired(record.schedule_id, scheduled_time=iso(event.scheduled_time), run_id=run.id)
    return FireOutcome("enqueued" if created else "duplicate", run_id=run.id)


def _failed(record: ScheduleRecord, exc: DomainError, *, schedules: ScheduleStore, now: datetime | None) -> FireOutcome:
    message = f"{exc.field}: {exc.message}" if exc.field else exc.message
    schedules.record_error(record.schedule_id, message=message, at=iso(now or utcnow()))
    return FireOutcome("failed", error=message)
