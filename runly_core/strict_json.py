"""JSON as runly reads it from anyone it does not trust: request bodies (the API), and what must fit what a job
process can read (a run's config).

Python's ``json`` accepts what cannot be stored or passed on: ``NaN`` and ``Infinity`` (not JSON), a string
holding a lone surrogate (``"\\ud800"``: not Unicode, so it cannot be encoded as UTF-8 on the way to DynamoDB),
integers of thousands of digits (Python refuses more than 4,300 on conversion, and other readers far fewer), and
nesting as deep as the recursion limit (deeper raises ``RecursionError``; a job process's JSON reader, pydantic's,
stops at 200). :func:`loads` refuses each with :class:`JsonRefused`, naming where in the document it is
(``config.items[3].name``), so a client gets a 400 naming the field. The limits, documented in docs/api.md:

- nesting: at most :data:`MAX_JSON_DEPTH` levels of arrays and objects;
- integers: within the signed 64-bit range, :data:`MIN_JSON_INTEGER` .. :data:`MAX_JSON_INTEGER`;
- other numbers: finite doubles (``1e400`` is refused, not read as infinity);
- strings and member names: Unicode text (no lone surrogate).

Standard library only: the job SDK imports this.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 64
MAX_JSON_INTEGER = 2**63 - 1
MIN_JSON_INTEGER = -(2**63)
# Digits of the largest integer: a longer literal is refused before it is converted (conversion is quadratic).
_MAX_INTEGER_CHARS = len(str(MIN_JSON_INTEGER))


class JsonRefused(ValueError):
    """Valid JSON syntax that runly does not accept; ``field`` is where (None: the document as a whole)."""

    def __init__(self, problem: str, field: str | None) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.problem = problem
        self.field = field


class _Refused:
    """What a hook returns for a value it refuses, so the walk below can say where the value is."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _integer(text: str) -> int | _Refused:
    if len(text.lstrip("-")) <= _MAX_INTEGER_CHARS - 1:
        value = int(text)
        if MIN_JSON_INTEGER <= value <= MAX_JSON_INTEGER:
            return value
    return _Refused(f"integer out of range: at most {MAX_JSON_INTEGER} and at least {MIN_JSON_INTEGER}")


def _float(text: str) -> float | _Refused:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        return _Refused(f"number {text[:40]} is out of range (larger than a double)")
    return value


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number")


def _field(path: tuple[str | int, ...]) -> str | None:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text or None


def _is_text(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`JsonRefused` unless ``value`` (parsed JSON) keeps to the limits above."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if not _is_text(node):
                raise JsonRefused("holds a lone surrogate (\\ud800-\\udfff unpaired): not Unicode text", _field(path))
        elif isinstance(node, _Refused):
            raise JsonRefused(node.problem, _field(path))
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not MIN_JSON_INTEGER <= node <= MAX_JSON_INTEGER:
                raise JsonRefused(f"integer out of range: at most {MAX_JSON_INTEGER}", _field(path))
        elif isinstance(node, float):
            if node != node or node in (float("inf"), float("-inf")):
                raise JsonRefused("NaN and Infinity are not JSON numbers", _field(path))
        elif isinstance(node, dict | list):
            if len(path) >= max_depth:
                raise JsonRefused(f"nests deeper than {max_depth} levels of arrays and objects", _field(path))
            if isinstance(node, dict):
                for key, item in node.items():
                    if not isinstance(key, str) or not _is_text(key):
                        raise JsonRefused("a member name holds a lone surrogate: not Unicode text", _field(path))
                    stack.append((item, (*path, key)))
            else:
                stack.extend((item, (*path, index)) for index, item in enumerate(node))


def loads(text: str | bytes) -> Any:
    """``text`` parsed, or :class:`json.JSONDecodeError` (not JSON) or :class:`JsonRefused` (over a limit)."""
    try:
        value = json.loads(text, parse_int=_integer, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise JsonRefused(f"nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects", None) from None
    check(value)
    return value
