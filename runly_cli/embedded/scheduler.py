"""The embedded stack's EventBridge Scheduler: moto keeps schedules but never fires one; this does.

The API creates, changes and deletes schedules in moto's scheduler exactly as on AWS. Every few seconds this reads
them back from there (what AWS would fire from, so a change the API failed to pass on shows here too) and, at each
time one is due by the same evaluation the API previews with (``functions.logic.schedule_expression``), invokes the fire
handler with the event EventBridge Scheduler would send: the schedule's target input with its context attributes
(``<aws.scheduler.scheduled-time>``...) filled in. A failed invocation is retried on the next checks, as
EventBridge retries, up to ``MAX_ATTEMPTS``. Occurrences before it started, or before a schedule was last changed,
are not fired (EventBridge does not catch up either).

One-time ``at(...)`` schedules (delayed runs' timers, ``functions.logic.delays``) fire once, when their time has
come, and with ActionAfterCompletion DELETE are then deleted, as EventBridge deletes them. Such a schedule that still
exists has not fired yet, whenever its time was: one whose time passed while this process was down (the stack
restarted) fires on the first check after it starts again; nothing of it is kept in this process but moto's copy.

    python -m runly_cli.embedded.scheduler --group G --target-arn ARN               # the loop (EmbeddedStack starts it)
    python -m runly_cli.embedded.scheduler --group G --target-arn ARN --fire ID     # fire one schedule now

``--fire`` is how a test (or a person) sees a schedule fire without waiting for its next time: the same event, the
current second as its scheduled time (or ``--at``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from functions.logic.schedule_expression import InvalidSchedule, parse, parse_at
from runly_core.contracts import ATTEMPT_NUMBER_ATTRIBUTE, EXECUTION_ID_ATTRIBUTE, SCHEDULED_TIME_ATTRIBUTE

log = logging.getLogger("runly_cli.embedded.scheduler")

FIRE_HANDLER = "functions.schedules.fire.lambda_handler"
CHECK_SECONDS = 2.0
MAX_ATTEMPTS = 3  # of one fire, the first included
MAX_FIRES_PER_CHECK = 10  # of one schedule, after a long pause (a suspended laptop): the earliest ones
SCHEDULE_ARN_ATTRIBUTE = "<aws.scheduler.schedule-arn>"

Event = dict[str, Any]
Fired = list[tuple[str, datetime]]  # (schedule name, scheduled time) of each fire that succeeded


@dataclass(frozen=True)
class Definition:
    """What EventBridge Scheduler fires from (a GetSchedule answer, the fields that matter here)."""

    name: str
    arn: str
    expression: str
    timezone: str
    enabled: bool
    target_arn: str
    input: str
    modified: datetime
    start: datetime | None = None
    action_after_completion: str = "NONE"  # DELETE: a one-time schedule is deleted once it fired

    @classmethod
    def from_schedule(cls, schedule: dict[str, Any]) -> Definition:
        return cls(
            name=schedule["Name"],
            arn=schedule.get("Arn", ""),
            expression=schedule["ScheduleExpression"],
            timezone=schedule.get("ScheduleExpressionTimezone") or "UTC",
            enabled=schedule.get("State", "ENABLED") == "ENABLED",
            target_arn=schedule["Target"]["Arn"],
            input=schedule["Target"].get("Input", "{}"),
            modified=_aware(schedule.get("LastModificationDate")) or datetime.now(UTC),
            start=_aware(schedule.get("StartDate")),
            action_after_completion=schedule.get("ActionAfterCompletion") or "NONE",
        )


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(float(value), UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def scheduled_time_text(moment: datetime) -> str:
    """``<aws.scheduler.scheduled-time>`` as EventBridge Scheduler fills it in: ISO 8601, UTC, whole seconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_event(definition: Definition, scheduled_time: datetime, *, attempt: int = 1) -> Event:
    """The target input with its context attributes filled in: the event the target function receives."""
    text = (
        definition.input.replace(SCHEDULED_TIME_ATTRIBUTE, scheduled_time_text(scheduled_time))
        .replace(EXECUTION_ID_ATTRIBUTE, str(uuid.uuid4()))
        .replace(ATTEMPT_NUMBER_ATTRIBUTE, str(attempt))
        .replace(SCHEDULE_ARN_ATTRIBUTE, definition.arn)
    )
    event = json.loads(text)
    if not isinstance(event, dict):
        raise ValueError(f"schedule {definition.name}: its target input is not a JSON object")
    return event


@dataclass
class LocalScheduler:
    """Fires what is due, each time ``fire_due(now)`` is called; ``read`` lists the definitions, ``invoke`` calls
    the target with one event. Keeps, per schedule, the time up to which it has looked."""

    read: Callable[[], Iterable[Definition]]
    invoke: Callable[[Event], Any]
    started_at: datetime
    target_arn: str | None = None  # only schedules targeting it are fired (None: every one)
    # Deletes a one-time schedule with ActionAfterCompletion DELETE once it fired (None: nothing is deleted).
    complete: Callable[[Definition], None] | None = None
    _fired_once: set[str] = field(default_factory=set)  # one-time schedules fired (or given up) by this process
    _checked_until: dict[str, datetime] = field(default_factory=dict)
    _retries: list[tuple[Definition, datetime, int]] = field(default_factory=list)

    def fire_due(self, now: datetime) -> list[tuple[str, datetime]]:
        """Invoke every fire due in (last check, now]; returns (schedule name, scheduled time) of each invocation
        that succeeded."""
        fired: list[tuple[str, datetime]] = []
        retries, self._retries = self._retries, []
        for definition, moment, attempt in retries:
            self._fire(definition, moment, attempt, fired)
        seen: set[str] = set()
        for definition in self.read():
            seen.add(definition.name)
            if self.target_arn is not None and definition.target_arn != self.target_arn:
                continue
            since = max(self._checked_until.get(definition.name, self.started_at), definition.modified)
            self._checked_until[definition.name] = now
            if not definition.enabled:
                continue
            try:
                once = parse_at(definition.expression, definition.timezone)
            except InvalidSchedule as exc:
                log.warning("schedule %s: cannot evaluate %r: %s", definition.name, definition.expression, exc)
                continue
            if once is not None:
                self._fire_once(definition, once, since=since, now=now, fired=fired)
                continue
            try:
                recurrence = parse(definition.expression, definition.timezone)
            except InvalidSchedule as exc:
                log.warning("schedule %s: cannot evaluate %r: %s", definition.name, definition.expression, exc)
                continue
            due = recurrence.between(after=since, until=now, start=definition.start, limit=MAX_FIRES_PER_CHECK)
            for moment in due:
                self._fire(definition, moment, 1, fired)
        for gone in set(self._checked_until) - seen:
            del self._checked_until[gone]
        self._fired_once &= seen
        return fired

    def _fire_once(
        self, definition: Definition, moment: datetime, *, since: datetime, now: datetime, fired: Fired
    ) -> None:
        if moment > now or definition.name in self._fired_once:
            return
        if definition.action_after_completion != "DELETE" and moment <= since:
            return  # kept after it fired: whether it did is not known here, and EventBridge does not catch up
        self._fired_once.add(definition.name)
        self._fire(definition, moment, 1, fired)

    def _fire(self, definition: Definition, moment: datetime, attempt: int, fired: list[tuple[str, datetime]]) -> None:
        try:
            result = self.invoke(render_event(definition, moment, attempt=attempt))
        except Exception:
            log.exception("schedule %s: fire at %s failed (attempt %d)", definition.name, moment, attempt)
            if attempt < MAX_ATTEMPTS:
                self._retries.append((definition, moment, attempt + 1))
            else:
                self._completed(definition)  # EventBridge too gives up on the event, and completes the schedule
            return
        log.info("schedule %s: fired for %s: %s", definition.name, scheduled_time_text(moment), result)
        fired.append((definition.name, moment))
        self._completed(definition)

    def _completed(self, definition: Definition) -> None:
        if self.complete is None or definition.action_after_completion != "DELETE":
            return
        if definition.name not in self._fired_once:
            return  # a recurring schedule: never completed by a fire
        try:
            self.complete(definition)
        except Exception:  # kept in _fired_once: not fired again by this process; deleted on a later try
            log.exception("schedule %s: deleting it after its one fire failed", definition.name)


# ---------------------------------------------------------------- on the embedded AWS


def read_definitions(client: Any, group: str) -> list[Definition]:
    """The group's schedules as moto's scheduler holds them (ListSchedules gives names, GetSchedule the rest)."""
    names: list[str] = []
    request: dict[str, Any] = {"GroupName": group}
    while True:
        page = client.list_schedules(**request)
        names += [summary["Name"] for summary in page.get("Schedules", [])]
        if not page.get("NextToken"):
            break
        request["NextToken"] = page["NextToken"]
    definitions = []
    for name in names:
        try:
            definitions.append(Definition.from_schedule(client.get_schedule(GroupName=group, Name=name)))
        except client.exceptions.ResourceNotFoundException:
            continue  # deleted since it was listed
    return definitions


def _delete(client: Any, group: str, name: str) -> None:
    try:
        client.delete_schedule(GroupName=group, Name=name)
    except client.exceptions.ResourceNotFoundException:
        pass  # deleted meanwhile (a delayed run cancelled)


def _invoker(handler_path: str) -> Callable[[Event], Any]:
    from runly_cli.embedded.gateway import LocalLambdaContext, resolve_handler

    handler = resolve_handler(handler_path)

    def invoke(event: Event) -> Any:
        context = LocalLambdaContext(aws_request_id=str(uuid.uuid4()), function_name="runly-schedule-fire")
        return handler(event, context)  # type: ignore[arg-type]

    return invoke


def main(argv: list[str] | None = None) -> int:
    import boto3

    parser = argparse.ArgumentParser(
        prog="python -m runly_cli.embedded.scheduler", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--group", required=True, help="the schedule group (runly_core.resources.ResourceNames)")
    parser.add_argument("--target-arn", required=True, help="fire the schedules that target this function")
    parser.add_argument("--handler", default=FIRE_HANDLER, help="the handler that ARN stands for")
    parser.add_argument("--interval", type=float, default=CHECK_SECONDS, help="seconds between checks")
    parser.add_argument("--fire", metavar="SCHEDULE_ID", help="fire this schedule once, now, and exit")
    parser.add_argument("--at", type=datetime.fromisoformat, help="with --fire: the scheduled time (default: now)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    client = boto3.client("scheduler")
    invoke = _invoker(args.handler)
    if args.fire:
        definition = Definition.from_schedule(client.get_schedule(GroupName=args.group, Name=args.fire))
        if definition.target_arn != args.target_arn:
            print(f"schedule {args.fire} targets {definition.target_arn}, not {args.target_arn}", file=sys.stderr)
            return 2
        moment = _aware(args.at) or datetime.now(UTC).replace(microsecond=0)
        print(json.dumps(invoke(render_event(definition, moment)), default=str))
        return 0

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    scheduler = LocalScheduler(
        read=lambda: read_definitions(client, args.group),
        invoke=invoke,
        started_at=datetime.now(UTC),
        target_arn=args.target_arn,
        complete=lambda definition: _delete(client, args.group, definition.name),
    )
    log.info("firing the schedules of group %s every %.1f s", args.group, args.interval)
    while not stopping.is_set():
        try:
            scheduler.fire_due(datetime.now(UTC))
        except Exception:  # the embedded AWS restarting, a schedule half-written: the next check tries again
            log.exception("reading the schedules failed")
        stopping.wait(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
