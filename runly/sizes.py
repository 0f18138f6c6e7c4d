"""The byte limits of what a job produces, checked (the limits themselves: runly_core.resources).

One encoding, :func:`stored_json`, is both what the agent stores and what every check measures, so a value that
passes a check fits where it goes. The job SDK (runly.job, runly.items, runly.runner) raises the exceptions below
in the job's own code; the agent (node_agent.channel, node_agent) checks again on receipt and ends the run with
the exception's ``reason``. Imported by job processes: nothing heavy here.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from runly.limits import (
    MAX_CATEGORY_BYTES,
    MAX_CHECKPOINT_BYTES,
    MAX_CHECKPOINT_STATE_BYTES,
    MAX_OUTPUT_BYTES,
    MAX_PROGRESS_BYTES,
    MAX_PROGRESS_MESSAGE_BYTES,
)
from runly.wire import Checkpoint, Progress

_TRUNCATED = " [truncated]"


class ValueTooLarge(Exception):
    """A value the job produced is over its byte limit; the run ends with ``reason`` (a FailureReason value)
    and is not retried: the same code would produce it again."""

    reason: ClassVar[str] = "message_too_large"
    what: ClassVar[str] = "a message to the agent"
    hint: ClassVar[str] = "store large values elsewhere (S3) and pass their location"

    @classmethod
    def measured(cls, size: int, limit: int, detail: str = "") -> ValueTooLarge:
        return cls(f"{cls.what} is {size} bytes as JSON; the limit is {limit}{detail}: {cls.hint}")


class OutputTooLarge(ValueTooLarge):
    reason = "output_too_large"
    what = "the job's output"


class CheckpointTooLarge(ValueTooLarge):
    reason = "checkpoint_too_large"
    what = "the checkpoint"


class ProgressTooLarge(ValueTooLarge):
    reason = "progress_too_large"
    what = "the progress"
    hint = "report a short message (details belong in the job's log)"


class MessageTooLarge(ValueTooLarge):
    pass


class NotJson(TypeError, ValueError):
    """A value that JSON cannot carry as it is: NaN or Infinity (which would be stored as null), a lone surrogate
    (which is not UTF-8), or an object json cannot encode (both a TypeError and a ValueError: what ``json.dumps``
    raises for one or the other)."""


# The exception type names a job process reports (ErrorMessage.type) that mean a size limit, with the run's reason.
LIMIT_ERRORS: dict[str, str] = {cls.__name__: cls.reason for cls in (OutputTooLarge, CheckpointTooLarge,
                                                                   ProgressTooLarge, MessageTooLarge)}  # fmt: skip


def stored_json(value: Any, what: str = "the value") -> str:
    """``value`` as the table stores it: compact JSON, non-ASCII as UTF-8. Raises :class:`NotJson`."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        text.encode("utf-8")
    except ValueError as exc:  # NaN/Infinity (allow_nan), a lone surrogate (UnicodeEncodeError is a ValueError)
        if isinstance(exc, UnicodeError):
            raise NotJson(f"{what} holds a lone surrogate (a string that is not valid Unicode)") from exc
        raise NotJson(f"{what} holds NaN or Infinity, which JSON cannot represent") from exc
    except (TypeError, RecursionError) as exc:
        raise NotJson(f"{what} is not JSON: {exc}") from exc
    return text


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check(text: str, limit: int, too_large: type[ValueTooLarge], detail: str = "") -> str:
    """``text`` (stored JSON) if it is within ``limit`` bytes, else raise ``too_large``."""
    if len(text) * 4 <= limit:  # a character takes at most 4 bytes: most values fit without being encoded
        return text
    size = utf8_size(text)
    if size > limit:
        raise too_large.measured(size, limit, detail)
    return text


def output_json(output: Any) -> str:
    """The output as stored; raises NotJson or OutputTooLarge."""
    return check(stored_json(output, "the job's output"), MAX_OUTPUT_BYTES, OutputTooLarge)


def checkpoint_state_json(state: Any) -> str:
    """The job's checkpoint state as it will be stored; raises NotJson or CheckpointTooLarge."""
    return check(stored_json(state, "the checkpoint state"), MAX_CHECKPOINT_STATE_BYTES, CheckpointTooLarge)


def model_json(model: BaseModel, what: str) -> str:
    """A model as stored (pydantic's compact UTF-8 JSON); raises NotJson for a lone surrogate in it."""
    try:
        return model.model_dump_json()
    except PydanticSerializationError as exc:
        raise NotJson(f"{what} is not JSON: {exc}") from exc


def checkpoint_json(checkpoint: Checkpoint) -> str:
    """A whole checkpoint as stored (the job's state and the envelope); raises NotJson or CheckpointTooLarge (its
    state over MAX_CHECKPOINT_STATE_BYTES, or the whole over MAX_CHECKPOINT_BYTES)."""
    checkpoint_state_json(checkpoint.state)
    return check(model_json(checkpoint, "the checkpoint"), MAX_CHECKPOINT_BYTES, CheckpointTooLarge)


def progress_json(progress: Progress) -> str:
    """A whole progress as stored; raises NotJson or ProgressTooLarge."""
    return check(model_json(progress, "the progress"), MAX_PROGRESS_BYTES, ProgressTooLarge)


def check_progress_message(message: str | None) -> None:
    if message is not None:
        check(stored_json(message, "the progress message"), MAX_PROGRESS_MESSAGE_BYTES, ProgressTooLarge,
              " (the progress message)")  # fmt: skip


def truncate_utf8(text: str, limit: int, *, both_ends: bool = False) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (whole characters; a lone surrogate becomes "?"), marked
    as truncated where it was cut: at its end, or with ``both_ends`` in its middle (its start and end kept)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    room = max(0, limit - len(_TRUNCATED))
    if both_ends:
        head, tail = data[: room - room // 2], data[len(data) - room // 2 :]
        return head.decode("utf-8", "ignore") + _TRUNCATED + tail.decode("utf-8", "ignore")
    return data[:room].decode("utf-8", "ignore") + _TRUNCATED


def truncate_json_string(text: str, limit: int, *, both_ends: bool = False) -> str:
    """``text`` cut so that it takes at most ``limit`` bytes as a stored JSON string (quotes and escapes count)."""
    text = truncate_utf8(text, limit, both_ends=both_ends)  # JSON takes a byte per byte at least: an upper bound
    if utf8_size(json.dumps(text, ensure_ascii=False)) <= limit:
        return text

    def cut(length: int) -> str:
        if both_ends:
            return text[: length - length // 2] + _TRUNCATED + text[len(text) - length // 2 :]
        return text[:length] + _TRUNCATED

    low, high = 0, len(text)  # the longest cut that fits, with the mark: an escape takes up to 6 bytes
    while low < high:
        middle = (low + high + 1) // 2
        if utf8_size(json.dumps(cut(middle), ensure_ascii=False)) <= limit:
            low = middle
        else:
            high = middle - 1
    return cut(low)


def category_name(name: str) -> str:
    """A failure category as counted: at most MAX_CATEGORY_BYTES as stored JSON."""
    return truncate_json_string(name, MAX_CATEGORY_BYTES)
