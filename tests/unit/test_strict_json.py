"""runly_core.strict_json: what the API accepts as a JSON body, and what it refuses naming where."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runly_core.strict_json import MAX_JSON_DEPTH, MAX_JSON_INTEGER, MIN_JSON_INTEGER, JsonRefused, loads


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ('{"a":"\\ud800"}', "a", "lone surrogate"),
        ('{"a":["x","\\udc00y"]}', "a[1]", "lone surrogate"),
        ('{"\\ud800":1}', None, "member name"),
        ('{"a":{"b":NaN}}', "a.b", "NaN"),
        ('{"a":Infinity}', "a", "Infinity"),
        ('{"a":-Infinity}', "a", "Infinity"),
        ('{"a":1e309}', "a", "out of range"),
        ('{"a":-1e309}', "a", "out of range"),
        ('{"a":' + "9" * 5000 + "}", "a", "integer out of range"),
        ('{"a":' + str(MAX_JSON_INTEGER + 1) + "}", "a", "integer out of range"),
        ('{"a":' + str(MIN_JSON_INTEGER - 1) + "}", "a", "integer out of range"),
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), None, "deeper than 64"),
        ("[" * 200_000 + "]" * 200_000, None, "deeper than 64"),
        ('{"a":' + "[" * 100 + "]" * 100 + "}", None, "deeper than 64"),
    ],
)
def test_refused_naming_where(text: str, field: str | None, words: str) -> None:
    with pytest.raises(JsonRefused) as refused:
        loads(text)
    assert words in refused.value.problem
    if not words.startswith("deeper") and words != "member name":
        assert refused.value.field == field


@pytest.mark.parametrize(
    "text",
    [
        "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH,
        '{"a":' + str(MAX_JSON_INTEGER) + ',"b":' + str(MIN_JSON_INTEGER) + "}",
        '{"a":"\\ud83d\\ude00","b":1.5e308,"c":-0.0,"d":1E-400}',
        '"plain"',
    ],
)
def test_accepted(text: str) -> None:
    assert loads(text) == json.loads(text)


def test_not_json_stays_a_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        loads("{")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30,
)


@given(JSON)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_any_document_is_read_exactly_or_refused_with_json_refused(value: Any) -> None:
    text = json.dumps(value)  # NaN and Infinity as their literals, surrogates escaped
    try:
        parsed = loads(text)
    except JsonRefused:
        return
    # What is accepted can be stored (UTF-8, no NaN) and is what was sent
    assert json.loads(json.dumps(parsed, allow_nan=False, ensure_ascii=False).encode("utf-8")) == parsed
    assert parsed == json.loads(text)
