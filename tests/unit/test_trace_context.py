"""W3C traceparent parsing (runly.tracing.TraceParent): what the trace-context spec accepts, and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runly.tracing import MAX_TRACEPARENT_LENGTH, InvalidTraceParent, TraceParent

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

hex_digits = st.text(alphabet="0123456789abcdef", min_size=1, max_size=1)


def _hex(size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789abcdef", min_size=size, max_size=size)


def test_the_spec_example_parses_into_its_fields() -> None:
    parsed = TraceParent.parse(VALID)
    assert parsed.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert parsed.parent_id == "00f067aa0ba902b7"
    assert parsed.flags == 1 and parsed.sampled
    assert str(parsed) == VALID


def test_optional_whitespace_around_the_header_value_is_not_part_of_it() -> None:
    assert str(TraceParent.parse(f" \t{VALID} ")) == VALID


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("", "not version-traceid"),
        (VALID.upper(), "not version-traceid"),  # upper-case hex is not trace context
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "trace id"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "parent id"),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"),
        (VALID + "-extra", "exactly 55"),  # version 00 has no further fields
        (VALID[:-1], "not version-traceid"),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", "not version-traceid"),
        ("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", "not version-traceid"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", "follow a dash"),
        ("0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "not version-traceid"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-" + "a" * MAX_TRACEPARENT_LENGTH, "longer than"),
    ],
)
def test_a_malformed_traceparent_is_refused_saying_which_rule_it_breaks(header: str, why: str) -> None:
    with pytest.raises(InvalidTraceParent, match=why):
        TraceParent.parse(header)


def test_a_later_version_is_read_by_its_first_four_fields_and_continued_as_version_00() -> None:
    parsed = TraceParent.parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-comes-later")
    assert str(parsed) == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
    assert TraceParent.parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").sampled is False


@given(_hex(32), _hex(16), st.integers(0, 255))
def test_every_valid_context_round_trips(trace_id: str, parent_id: str, flags: int) -> None:
    if set(trace_id) == {"0"} or set(parent_id) == {"0"}:
        with pytest.raises(InvalidTraceParent):
            TraceParent(trace_id=trace_id, parent_id=parent_id, flags=flags)
        return
    context = TraceParent(trace_id=trace_id, parent_id=parent_id, flags=flags)
    assert TraceParent.parse(str(context)) == context


@given(st.text(max_size=80))
def test_arbitrary_text_either_parses_to_a_valid_context_or_is_refused_with_the_one_error(text: str) -> None:
    try:
        parsed = TraceParent.parse(text)
    except InvalidTraceParent:
        return
    # Whatever was accepted is a valid version-00 context of the same ids.
    assert TraceParent.parse(str(parsed)) == parsed
    assert text.strip(" \t")[3:35] == parsed.trace_id


@given(st.integers(0, 54))
def test_a_cut_header_is_refused(length: int) -> None:
    with pytest.raises(InvalidTraceParent):
        TraceParent.parse(VALID[:length])


def test_new_contexts_are_valid_sampled_and_distinct() -> None:
    made = {TraceParent.new() for _ in range(100)}
    assert len({context.trace_id for context in made}) == 100
    assert all(context.sampled and TraceParent.parse(str(context)) == context for context in made)
