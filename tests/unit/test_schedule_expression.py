"""EventBridge Scheduler expressions as runly evaluates them: AWS's cron dialect (six fields, `?`, days 1-7 from
Sunday, L/LW/#, years), rates with a start, daylight-saving changes, and what is refused (naming the field)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from functions.logic.schedule_expression import InvalidSchedule, parse

NOW = datetime(2026, 3, 4, 12, 0, 30, tzinfo=UTC)  # a Wednesday


def times(expression: str, timezone: str = "UTC", *, after: datetime = NOW, count: int = 3) -> list[str]:
    recurrence = parse(expression, timezone)
    zone = ZoneInfo(timezone)
    return [t.astimezone(zone).isoformat() for t in recurrence.next_times(after=after, count=count)]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # AWS numbers days of the week from Sunday = 1: 2 is Monday, MON-FRI the working days
        ("cron(0 9 ? * 2 *)", ["2026-03-09T09:00:00+00:00", "2026-03-16T09:00:00+00:00"]),
        ("cron(0 9 ? * MON-FRI *)", ["2026-03-05T09:00:00+00:00", "2026-03-06T09:00:00+00:00"]),
        ("cron(0 9 ? * 1,7 *)", ["2026-03-07T09:00:00+00:00", "2026-03-08T09:00:00+00:00"]),  # weekends
        ("cron(0/20 12 * * ? *)", ["2026-03-04T12:20:00+00:00", "2026-03-04T12:40:00+00:00"]),
        ("cron(0 0 L * ? *)", ["2026-03-31T00:00:00+00:00", "2026-04-30T00:00:00+00:00"]),  # last day
        ("cron(0 0 LW * ? *)", ["2026-03-31T00:00:00+00:00", "2026-04-30T00:00:00+00:00"]),  # last weekday
        ("cron(0 0 ? * 6L *)", ["2026-03-27T00:00:00+00:00", "2026-04-24T00:00:00+00:00"]),  # last Friday
        ("cron(0 0 ? * 3#2 *)", ["2026-03-10T00:00:00+00:00", "2026-04-14T00:00:00+00:00"]),  # 2nd Tuesday
        ("cron(0 0 1 1 ? 2028-2030/2)", ["2028-01-01T00:00:00+00:00", "2030-01-01T00:00:00+00:00"]),  # years
        ("cron(0 0 1 1 ? 2030)", ["2030-01-01T00:00:00+00:00"]),
    ],
)
def test_cron_follows_eventbridges_dialect(expression: str, expected: list[str]) -> None:
    assert times(expression, count=2) == expected


def test_cron_is_read_in_its_time_zone() -> None:
    assert times("cron(0 9 * * ? *)", "Asia/Tokyo", count=1) == ["2026-03-05T09:00:00+09:00"]


def test_a_time_a_daylight_saving_change_skips_does_not_fire_and_a_repeated_one_fires_once() -> None:
    # New York skips 02:00-03:00 on 2026-03-08 and repeats 01:00-02:00 on 2026-11-01
    assert times("cron(30 2 * * ? *)", "America/New_York", after=datetime(2026, 3, 7, 12, tzinfo=UTC)) == [
        "2026-03-09T02:30:00-04:00",
        "2026-03-10T02:30:00-04:00",
        "2026-03-11T02:30:00-04:00",
    ]
    assert times("cron(0/30 1 * * ? *)", "America/New_York", after=datetime(2026, 11, 1, 4, tzinfo=UTC)) == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:00:00-05:00",
    ]


def test_a_rate_fires_from_its_start_at_fixed_intervals_a_day_being_24_hours() -> None:
    recurrence = parse("rate(1 day)", "Europe/Paris")
    start = datetime(2026, 3, 28, 12, tzinfo=UTC)
    # Across Paris's change to summer time (2026-03-29) a day stays 24 hours, as in EventBridge
    assert recurrence.next_times(after=NOW, start=start, count=3) == [start + timedelta(days=d) for d in range(3)]
    assert recurrence.next_times(after=start, start=start, count=1) == [start + timedelta(days=1)]


def test_a_rate_schedule_saved_again_keeps_its_phase_from_a_start_that_is_not_past() -> None:
    recurrence = parse("rate(15 minutes)")
    start = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
    restarted = recurrence.restart(start, NOW)
    assert restarted == datetime(2026, 3, 4, 12, 15, tzinfo=UTC)
    assert recurrence.restart(datetime(2026, 3, 5, tzinfo=UTC), NOW) == datetime(2026, 3, 5, tzinfo=UTC)
    assert recurrence.first_start(NOW) == datetime(2026, 3, 4, 12, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "canonical"),
    [
        ("rate(1 minutes)", "rate(1 minute)"),
        ("rate(5 minute)", "rate(5 minutes)"),
        (" rate(2  hours) ", "rate(2 hours)"),
        ("cron(0  9 ? *  mon-fri *)", "cron(0 9 ? * MON-FRI *)"),
    ],
)
def test_expressions_are_stored_as_eventbridge_spells_them(expression: str, canonical: str) -> None:
    assert parse(expression).expression == canonical


@pytest.mark.parametrize(
    ("expression", "timezone", "field", "says"),
    [
        ("cron(0 9 * * MON *)", "UTC", "expression", "exactly one of day-of-month and day-of-week"),
        ("cron(0 9 ? * ? *)", "UTC", "expression", "exactly one of day-of-month and day-of-week"),
        ("cron(0 9 15W * ? *)", "UTC", "expression", "'W'"),
        ("cron(0 9 * * ?)", "UTC", "expression", "6 fields"),
        ("cron(61 9 * * ? *)", "UTC", "expression", "minute"),
        ("cron(0 9 ? * 8 *)", "UTC", "expression", "1-7"),
        ("cron(0 9 ? 2 ? *)", "UTC", "expression", "exactly one"),
        ("cron(0 9 30 2 ? *)", "UTC", "expression", "day-of-month"),
        ("cron(0 9 1 * ? 1969)", "UTC", "expression", "1970-2199"),
        ("cron(0 ? 1 * ? *)", "UTC", "expression", "'?'"),
        ("at(2030-01-01T00:00:00)", "UTC", "expression", "one-time"),
        ("rate(0 hours)", "UTC", "expression", "at least 1"),
        ("rate(2 weeks)", "UTC", "expression", "rate(value unit)"),
        ("rate(4000 days)", "UTC", "expression", "at most"),
        ("every day", "UTC", "expression", "cron("),
        ("rate(1 hour)", "Europe/Atlantis", "timezone", "IANA"),
        ("rate(1 hour)", "../etc/passwd", "timezone", "IANA"),
    ],
)
def test_what_cannot_be_evaluated_is_refused_naming_the_field(
    expression: str, timezone: str, field: str, says: str
) -> None:
    with pytest.raises(InvalidSchedule) as refused:
        parse(expression, timezone)
    assert refused.value.field == field
    assert says in refused.value.message


def test_an_expression_whose_years_are_past_has_no_next_time() -> None:
    assert parse("cron(0 0 1 1 ? 2001-2003)").next_times(after=NOW) == []


def test_a_one_time_expression_rounds_up_to_the_second_and_reads_back() -> None:
    from functions.logic.schedule_expression import at_expression, parse_at

    moment = datetime(2027, 1, 2, 3, 4, 5, 1, tzinfo=UTC)
    assert at_expression(moment) == "at(2027-01-02T03:04:06)"  # never fires before the moment
    assert at_expression(moment.replace(microsecond=0)) == "at(2027-01-02T03:04:05)"
    assert parse_at("at(2027-01-02T03:04:06)") == datetime(2027, 1, 2, 3, 4, 6, tzinfo=UTC)
    assert parse_at("rate(5 minutes)") is None
    with pytest.raises(InvalidSchedule):
        parse("at(2027-01-02T03:04:06)")  # a user's schedule recurs
