"""Reading a run's output: the chunks its agent shipped to the feed, paged or whole.

The agent uploads each attempt's stdout/stderr as ``runs/{environment}/{run_id}/logs/{attempt:04d}/{seq:08d}.log``
(node_agent/logs.py), chunks of up to 1 MB cut at byte boundaries. A page is at most
``PAGE_BYTES`` read with ranged GETs from wherever the previous page stopped, so a page may
start or end inside a chunk; it always ends on a whole UTF-8 character (a character split
across chunks or pages is not mangled). The cursor names the attempt, chunk and byte offset.

``download`` returns the attempt's whole output as text/plain when it fits a Lambda response
(``MAX_DOWNLOAD_BYTES``); a larger log is a 413 that says to page through it instead.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from functions.dal.feed import Feed
from functions.dal.store import Store
from runly_core.contracts import LogPage
from runly_core.records import RunRecord

from .errors import BadRequest, NotFound, TooLarge
from .runs import Authorize, allow_any, authorized_run

PAGE_BYTES = 256 * 1024
# Lambda answers at most 6 MB, and the text travels inside a JSON envelope where escapes make it grow.
MAX_DOWNLOAD_BYTES = 4 * 1024 * 1024
_MAX_RESPONSE_BYTES = 5 * 1024 * 1024 + 512 * 1024


class _LogCursor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    run: str
    attempt: int = Field(ge=1)
    seq: int = Field(ge=0)
    offset: int = Field(ge=0)


def _encode(cursor: _LogCursor) -> str:
    return base64.urlsafe_b64encode(cursor.model_dump_json().encode()).decode().rstrip("=")


def _decode(text: str, run_id: str) -> _LogCursor:
    try:
        cursor = _LogCursor.model_validate_json(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, ValidationError):
        raise BadRequest("invalid cursor: pass next_cursor from the previous page", field="cursor") from None
    if cursor.run != run_id:
        raise BadRequest("this cursor belongs to another run", field="cursor")
    return cursor


def complete_utf8_length(data: bytes) -> int:
    """The length of the longest prefix of ``data`` that does not end inside a UTF-8 character."""
    # A character is at most 4 bytes: look back at most 3 for the lead byte of an unfinished one.
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the lead byte (or ASCII)
            needed = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return len(data) - back if needed > back else len(data)
    return len(data)


def _attempt(record: RunRecord, asked: int | None) -> int:
    if asked is None:
        return record.attempt
    if asked > record.attempt:
        raise NotFound(f"run {record.run_id} has {record.attempt} attempt(s), not {asked}", field="attempt")
    return asked


def read_page(
    run_id: str,
    *,
    attempt: int | None,
    cursor: str | None,
    store: Store,
    feed: Feed,
    authorize: Authorize = allow_any,
) -> LogPage:
    record = authorized_run(store.get_run(run_id), run_id, authorize)
    if cursor is not None:
        position = _decode(cursor, run_id)
        if attempt is not None and attempt != position.attempt:
            raise BadRequest(f"this cursor reads attempt {position.attempt}, not {attempt}", field="cursor")
        number = _attempt(record, position.attempt)
        seq, offset = position.seq, position.offset
    else:
        number, seq, offset = _attempt(record, attempt), 0, 0
    terminal = record.state.terminal
    this_attempt = next((a for a in record.attempts if a.number == number), None)
    # No more output will come once the run is finished, or once this attempt ended (its node shipped the rest).
    over = terminal or (this_attempt is not None and this_attempt.ended_at is not None)
    if number == 0:
        # Not started: there is no attempt to follow yet; ask again without a cursor once it runs.
        return LogPage(run_id=run_id, attempt=0, text="", next_cursor=None, complete=terminal)

    segments: list[tuple[int, int, bytes]] = []  # (seq, offset in chunk, bytes)
    budget = PAGE_BYTES
    more = False
    for chunk in feed.log_chunks(run_id, number, from_seq=seq):
        start = offset if chunk.seq == seq else 0
        if start >= chunk.size:
            continue
        if budget <= 0:
            more = True
            break
        data = feed.read_range(chunk.key, start, min(chunk.size - start, budget))
        segments.append((chunk.seq, start, data))
        budget -= len(data)
        if start + len(data) < chunk.size:
            more = True
            break
    raw = b"".join(data for _, _, data in segments)
    # Unless this is the very end of the output, leave an unfinished character for the next page.
    final = over and not more
    keep = len(raw) if final else complete_utf8_length(raw)
    remaining = keep
    for chunk_seq, start, data in segments:
        if remaining <= len(data):
            seq, offset = chunk_seq, start + remaining
            break
        remaining -= len(data)
    next_cursor = None if final else _encode(_LogCursor(run=run_id, attempt=number, seq=seq, offset=offset))
    return LogPage(
        run_id=run_id,
        attempt=number,
        text=raw[:keep].decode("utf-8", errors="replace"),
        next_cursor=next_cursor,
        complete=final,
    )


def download(
    run_id: str, *, attempt: int | None, store: Store, feed: Feed, authorize: Authorize = allow_any
) -> tuple[str, str]:
    """The attempt's whole output and a file name for it."""
    record = authorized_run(store.get_run(run_id), run_id, authorize)
    number = _attempt(record, attempt)
    chunks = list(feed.log_chunks(run_id, number)) if number else []
    total = sum(chunk.size for chunk in chunks)
    hint = f"page through it with GET /runs/{run_id}/logs?attempt={number}&cursor=..."
    if total > MAX_DOWNLOAD_BYTES:
        raise TooLarge(
            f"the output of attempt {number} is {total} bytes; a download serves up to {MAX_DOWNLOAD_BYTES}: {hint}",
            field="download",
        )
    text = b"".join(feed.read_range(chunk.key, 0, chunk.size) for chunk in chunks).decode("utf-8", errors="replace")
    if len(json.dumps(text)) > _MAX_RESPONSE_BYTES:
        raise TooLarge(
            f"the output of attempt {number} does not fit one response once escaped: {hint}", field="download"
        )
    return text, f"{run_id}-attempt-{number}.log"
