"""EventBridge Scheduler's recurring schedule expressions, evaluated here as EventBridge Scheduler evaluates them.

One evaluation serves the API (the next fire times it shows, and refusing what it cannot evaluate before anything is
saved) and the embedded stack's scheduler (``runly_cli.embedded.scheduler``, which fires what moto keeps but never
fires), so
a schedule fires locally when it would on AWS.

- ``cron(minutes hours day-of-month month day-of-week year)``: six fields; exactly one of day-of-month and
  day-of-week is ``?``; day-of-week counts 1-7 from Sunday (or SUN-SAT); ``L`` (last day of the month, or ``5L``: the
  last Thursday), ``LW`` (last weekday of the month) and ``#`` (``3#2``: the second Tuesday) are supported.
  ``W`` after a day (``15W``: the weekday nearest the 15th) is not: it is refused, naming the expression.
  Evaluated in the schedule's time zone: a time that a daylight-saving change skips does not fire, a time it
  repeats fires once (the first).
- ``rate(value unit)``, unit minute(s), hour(s) or day(s): every fixed interval (a day is 24 hours) from a start
  time (EventBridge's ``StartDate``), which is its first occurrence.

One-time ``at(yyyy-mm-ddThh:mm:ss)`` expressions are not recurring: ``parse`` refuses them (a user's schedule
recurs). They are runly's own delayed-run timers (``functions.logic.delays``): ``at_expression`` writes one and
``parse_at`` reads it back (the embedded scheduler fires them).

Pure (no AWS); cronsim evaluates the five standard cron fields, this module adds the sixth (year) and AWS's
numbering and ``?``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from cronsim import CronSim, CronSimError

MIN_YEAR, MAX_YEAR = 1970, 2199
# Longer intervals than this are refused (AWS states no limit; this keeps the arithmetic far from overflow).
MAX_RATE = timedelta(days=3650)
MAX_EXPRESSION_LENGTH = 256
_RATE = re.compile(r"rate\(\s*(\d{1,9})\s+(minute|minutes|hour|hours|day|days)\s*\)")
_CRON = re.compile(r"cron\((.*)\)")
_AT = re.compile(r"at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)")
_UNITS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# Fields of an AWS cron expression, in order, as errors name them.
_FIELDS = ("minutes", "hours", "day-of-month", "month", "day-of-week", "year")


class InvalidSchedule(ValueError):
    """An expression or time zone that EventBridge Scheduler would refuse, or that runly cannot evaluate."""

    def __init__(self, message: str, *, field: str = "expression") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA time zone (``Europe/Paris``, ``UTC``), or InvalidSchedule naming ``timezone``."""
    if name not in _zones():
        raise InvalidSchedule(f"unknown time zone {name[:64]!r}: use an IANA name such as 'UTC'", field="timezone")
    return ZoneInfo(name)


@dataclass(frozen=True)
class Recurrence:
    """A parsed recurring expression in a time zone. ``expression`` is its canonical spelling (what is stored and
    sent to EventBridge Scheduler)."""

    expression: str
    timezone: ZoneInfo
    every: timedelta | None = None  # rate(...)
    cron: str | None = None  # cron(...): its five standard fields for cronsim
    years: frozenset[int] | None = None  # cron(...): the years it may fire in (None: every year)

    @property
    def is_rate(self) -> bool:
        return self.every is not None

    def first_start(self, now: datetime) -> datetime | None:
        """The StartDate a new rate schedule gets: one interval from now (whole seconds), so it does not fire at
        once as EventBridge does without one. None for cron (it needs none)."""
        if self.every is None:
            return None
        return now.astimezone(UTC).replace(microsecond=0) + self.every

    def restart(self, start: datetime | None, now: datetime) -> datetime | None:
        """The StartDate of a rate schedule being saved again (its expression unchanged): its start if still ahead,
        else its next occurrence, so its phase is kept and EventBridge never gets a StartDate in the past."""
        if self.every is None:
            return None
        if start is None or start > now:
            return start or self.first_start(now)
        return next(self.occurrences(after=now, start=start))

    def occurrences(self, *, after: datetime, start: datetime | None = None) -> Iterator[datetime]:
        """The times it fires strictly after ``after`` (aware), in order, in UTC. ``start`` (a rate schedule's
        StartDate) is its first occurrence; cron occurrences before it are skipped too."""
        after = after.astimezone(UTC)
        if start is not None and start.astimezone(UTC) > after:
            after_or_start = start.astimezone(UTC) - timedelta(microseconds=1)
        else:
            after_or_start = after
        if self.every is not None:
            yield from self._rate_occurrences(after_or_start, start)
        else:
            yield from self._cron_occurrences(after_or_start)

    def next_times(self, *, after: datetime, start: datetime | None = None, count: int = 5) -> list[datetime]:
        found: list[datetime] = []
        for moment in self.occurrences(after=after, start=start):
            found.append(moment)
            if len(found) == count:
                break
        return found

    def between(
        self, *, after: datetime, until: datetime, start: datetime | None = None, limit: int = 100
    ) -> list[datetime]:
        """Occurrences in (after, until], at most ``limit`` (the earliest)."""
        found: list[datetime] = []
        for moment in self.occurrences(after=after, start=start):
            if moment > until or len(found) == limit:
                break
            found.append(moment)
        return found

    def _rate_occurrences(self, after: datetime, start: datetime | None) -> Iterator[datetime]:
        assert self.every is not None
        anchor = (start or after).astimezone(UTC)
        if after < anchor:
            moment = anchor
        else:
            # The first anchor + k * every strictly after ``after``.
            moment = anchor + ((after - anchor) // self.every + 1) * self.every
        while True:
            yield moment
            moment += self.every

    def _cron_occurrences(self, after: datetime) -> Iterator[datetime]:
        assert self.cron is not None
        # Evaluated on the wall clock of the time zone (naive), then placed on the time line: cronsim's own DST
        # handling follows Debian cron, not EventBridge.
        local = after.astimezone(self.timezone).replace(tzinfo=None, microsecond=0)
        while True:
            restart_at: datetime | None = None
            for wall in CronSim(self.cron, local):
                if self.years is not None and wall.year not in self.years:
                    later = [year for year in self.years if year > wall.year]
                    if not later:
                        return
                    # Jump to the next year it may fire in (cronsim ticks a second before matching).
                    restart_at = datetime(min(later), 1, 1) - timedelta(seconds=1)
                    break
                placed = wall.replace(tzinfo=self.timezone)  # fold=0: in a repeated hour, its first pass
                if placed.astimezone(UTC).astimezone(self.timezone).replace(tzinfo=None) != wall:
                    continue  # skipped by a daylight-saving change: EventBridge skips it too
                moment = placed.astimezone(UTC)
                if moment > after:
                    yield moment
            if restart_at is None:
                return  # cronsim found nothing for 50 years
            local = restart_at


def parse(expression: str, timezone: str = "UTC") -> Recurrence:
    """Parse an EventBridge Scheduler recurring expression; InvalidSchedule names the field at fault."""
    zone = parse_timezone(timezone)
    text = expression.strip()
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise InvalidSchedule(f"the expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    if rate := _RATE.fullmatch(text):
        return _rate(int(rate.group(1)), rate.group(2), zone)
    if cron := _CRON.fullmatch(text):
        return _cron(cron.group(1), zone)
    if text.startswith("at("):
        raise InvalidSchedule("one-time at(...) expressions are not supported: a schedule recurs (cron or rate)")
    raise InvalidSchedule(
        "expected cron(minutes hours day-of-month month day-of-week year) or rate(value unit), "
        f"e.g. 'cron(0 9 ? * MON-FRI *)' or 'rate(15 minutes)'; got {text[:80]!r}"
    )


def _rate(value: int, unit: str, zone: ZoneInfo) -> Recurrence:
    if value < 1:
        raise InvalidSchedule("a rate must be at least 1 (e.g. 'rate(1 minute)')")
    singular = unit.removesuffix("s")
    every = value * _UNITS[singular]
    if every > MAX_RATE:
        raise InvalidSchedule(f"a rate may be at most {MAX_RATE.days} days")
    return Recurrence(
        expression=f"rate({value} {singular if value == 1 else singular + 's'})", timezone=zone, every=every
    )


def _cron(body: str, zone: ZoneInfo) -> Recurrence:
    fields = body.upper().split()
    if len(fields) != len(_FIELDS):
        raise InvalidSchedule(
            f"cron(...) takes {len(_FIELDS)} fields ({' '.join(_FIELDS)}), got {len(fields)}: "
            "e.g. 'cron(0 9 ? * MON-FRI *)'"
        )
    minutes, hours, day_of_month, month, day_of_week, year = fields
    if (day_of_month == "?") == (day_of_week == "?"):
        raise InvalidSchedule(
            "cron: exactly one of day-of-month and day-of-week must be '?' (e.g. 'cron(0 9 ? * MON *)' or "
            "'cron(0 9 1 * ? *)')"
        )
    for name, value in zip(_FIELDS, fields, strict=True):
        if "?" in value and (name not in ("day-of-month", "day-of-week") or value != "?"):
            raise InvalidSchedule(
                f"cron: '?' stands alone, in day-of-month or day-of-week only (the {name} is {value!r})"
            )
    if re.search(r"\dW", day_of_month):
        raise InvalidSchedule(
            "cron: 'W' (the weekday nearest a day) is not supported; 'L' and 'LW' are (the last day, the last weekday)"
        )
    standard = " ".join(
        [
            minutes,
            hours,
            "*" if day_of_month == "?" else day_of_month,
            month,
            "*" if day_of_week == "?" else _dow(day_of_week),
        ]
    )
    try:
        CronSim(standard, datetime(2000, 1, 1))
    except (CronSimError, ValueError, IndexError) as exc:
        raise InvalidSchedule(f"cron: {str(exc).lower() or 'invalid field'} in {body.strip()[:80]!r}") from exc
    years = _years(year)
    expression = f"cron({' '.join(fields)})"
    return Recurrence(expression=expression, timezone=zone, cron=standard, years=years)


def _dow(field: str) -> str:
    """AWS day-of-week (1-7 from Sunday, ``L`` alone = Saturday) -> cronsim's (0-6 from Sunday)."""
    if field == "*":
        return field
    return ",".join(_dow_term(term) for term in field.split(","))


def _dow_term(term: str) -> str:
    if term == "L":
        return "SAT"
    if "#" in term:
        day, nth = term.split("#", 1)
        return f"{_dow_day(day)}#{nth}"
    if term.endswith("L"):
        return f"{_dow_day(term[:-1])}L"
    step = ""
    if "/" in term:
        term, step_value = term.split("/", 1)
        step = f"/{step_value}"
    if term == "*":
        return f"*{step}"
    if "-" in term:
        first, last = term.split("-", 1)
        return f"{_dow_day(first)}-{_dow_day(last)}{step}"
    return f"{_dow_day(term)}{step}"


def _dow_day(day: str) -> str:
    if day in _DAY_NAMES:
        return day
    if not day.isdigit() or not 1 <= int(day) <= 7:
        raise InvalidSchedule(f"cron: day-of-week counts 1-7 from Sunday (or SUN-SAT); got {day[:10]!r}")
    return str(int(day) - 1)


def _years(field: str) -> frozenset[int] | None:
    if field == "*":
        return None
    years: set[int] = set()
    for term in field.split(","):
        match = re.fullmatch(r"(\*|\d{4})(?:-(\d{4}))?(?:/(\d{1,3}))?", term)
        if match is None:
            raise InvalidSchedule(
                f"cron: the year field takes years {MIN_YEAR}-{MAX_YEAR}, ranges, lists, steps; got {term[:20]!r}"
            )
        first = MIN_YEAR if match.group(1) == "*" else int(match.group(1))
        last = (
            int(match.group(2)) if match.group(2) else (MAX_YEAR if match.group(1) == "*" or match.group(3) else first)
        )
        step = int(match.group(3)) if match.group(3) else 1
        if not MIN_YEAR <= first <= last <= MAX_YEAR or step < 1:
            raise InvalidSchedule(f"cron: years run {MIN_YEAR}-{MAX_YEAR}, ranges low to high; got {term[:20]!r}")
        years.update(range(first, last + 1, step))
    return frozenset(years)


def at_expression(moment: datetime) -> str:
    """EventBridge Scheduler's one-time expression for ``moment``, to be read in UTC, to the second: rounded up,
    so that it never fires before ``moment``."""
    utc = moment.astimezone(UTC)
    if utc.microsecond:
        utc = utc.replace(microsecond=0) + timedelta(seconds=1)
    return f"at({utc.strftime('%Y-%m-%dT%H:%M:%S')})"


def parse_at(expression: str, timezone: str = "UTC") -> datetime | None:
    """When a one-time ``at(...)`` expression fires (aware, UTC); None for any other expression."""
    match = _AT.fullmatch(expression.strip())
    if match is None:
        return None
    try:
        wall = datetime.fromisoformat(match.group(1))
    except ValueError as exc:
        raise InvalidSchedule(f"{expression!r} is no valid time") from exc
    return wall.replace(tzinfo=parse_timezone(timezone)).astimezone(UTC)
