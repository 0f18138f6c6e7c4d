"""Searching runs: filters, newest first, cursor pagination, across environments and shards.

Runs are listed from the runs-by-environment index, whose entries are spread over RUN_INDEX_SHARDS partitions per
environment (``gsi1pk = ENV#{env}#RUNS#{shard:02d}``, ``gsi1sk = "{created_at}#{run_id}"``: docs/store.md). The
time range is the key condition; state, package, job and schedule are a filter expression on the attributes the
index projects, so DynamoDB may return short pages and the search keeps reading until the page is full or every
stream is exhausted.

One stream per (environment, shard): every environment the caller may see, each with its shards. The streams are
merged newest first; the page's runs are then read from the table in one BatchGetItem (strongly consistent) and the
filters checked again on them (the index is eventually consistent: a run whose state moved since is left out, as
a run that no longer matches). The cursor keeps, per stream, the index sort key to continue after (the last entry
this search took from it, or the last key DynamoDB read there when nothing after the last taken one matched) and
a bitmask of the streams exhausted: a page never repeats a run and never skips one, whatever the interleaving.

Cursors are opaque to clients: base64url of zlib-compressed JSON carrying those positions and a fingerprint of the
query. They are validated, not signed: a cursor longer than MAX_CURSOR_CHARS, inflating past MAX_CURSOR_JSON_BYTES,
that does not decode, belongs to another query, or holds a position that is not its stream's or lies outside the
query's time range is a 400 naming ``cursor``; a cursor edited by hand can only move within what the caller may
read anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from functions.dal.nodes import NodeStore
from functions.dal.queue import RunQueue
from functions.dal.store import InvalidStartKey, RunIndexEntry, RunQueryPage, Store
from runly_core.contracts import RunPage, RunState, RunView, normalize_package_name, parse_tag_filter
from runly_core.records import RunRecord, is_run_id, iso, run_environment
from runly_core.run_store import RUN_INDEX_SHARDS, index_shard, run_id_of_search_sort_key

from .errors import BadRequest, NotFound, Unprocessable
from .runs import nodes_lookup, view

# What one page may cost and weigh: index entries read (a selective filter reads many to match few; at least
# MIN_READS_PER_STREAM per stream, so every stream's next entry can be known), and the response size (Lambda
# answers at most 6 MB; a run may carry up to 64 KB of config and its output).
MAX_EVALUATED_PER_PAGE = 10_000
MIN_READS_PER_STREAM = 2
MAX_PAGE_BYTES = 4 * 1024 * 1024
# Index entries read per Query with a filter, over all streams (each stream reads its share, at least 2).
_FILTERED_QUERY_PAGE = 200
# A cursor as sent (base64url) and as inflated: past either it is refused before it is parsed, so no cursor can
# make the function inflate or parse much (a query string is at most a few KB in practice; this bounds what a
# hand-made one may cost). A cursor of 10 environments' 160 streams is about 4 KB.
MAX_CURSOR_CHARS = 16 * 1024
MAX_CURSOR_JSON_BYTES = 128 * 1024
_POSITION = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z#[A-Za-z0-9_.:-]{1,128}$")
_FILTERED = ("state", "package", "job", "schedule_id")


MAX_TAG_FILTERS = 10


def tag_filters(texts: list[str]) -> dict[str, str]:
    """The ``tag`` query parameters (``key:value`` each) as the tags a run must all have; 400 naming ``tag``."""
    if len(texts) > MAX_TAG_FILTERS:
        raise BadRequest(f"{len(texts)} tag filters: at most {MAX_TAG_FILTERS}", field="tag")
    tags: dict[str, str] = {}
    for text in texts:
        try:
            key, value = parse_tag_filter(text)
        except ValueError as exc:
            raise BadRequest(f"tag: {exc}", field="tag") from None
        if key in tags and tags[key] != value:
            raise BadRequest(f"tag {key!r} given twice with different values: a run has one value per key", field="tag")
        tags[key] = value
    return tags


@dataclass(frozen=True)
class RunSearch:
    state: RunState | None = None
    package: str | None = None
    job: str | None = None
    environment: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    limit: int = 50
    cursor: str | None = None
    schedule_id: str | None = None  # only the runs a schedule enqueued
    tags: dict[str, str] = field(default_factory=dict)  # only runs with every one of these tags (key -> value)


class _Cursor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Literal[2] = 2
    q: str  # fingerprint of the query this cursor continues
    after: dict[int, str] = {}  # stream number -> index sort key to continue after
    at: dict[int, str] = {}  # stream number -> index sort key to continue at (a match read, not yet returned)
    done: str = "0"  # hex bitmask of the streams with nothing more to read (bit n: stream n)


def _utc(moment: datetime) -> datetime:
    # A time without an offset is taken as UTC, not as the function's local time.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit

    def charge(self, evaluated: int) -> None:
        self.left -= evaluated


@dataclass
class _Stream:
    """One shard of one environment's matching index entries, newest first, read lazily page by page."""

    number: int  # its place in the query's streams (the cursor's key and bit)
    environment: str
    shard: int
    start_at: str | None  # an index sort key this page starts reading at (inclusive), if any
    position: str | None  # where the next DynamoDB page starts (after it; None: from the newest, or start_at)
    exhausted: bool = False
    buffer: deque[RunIndexEntry] = field(default_factory=deque)
    taken: list[RunIndexEntry] = field(default_factory=list)

    def head(self, load: _Loader) -> RunIndexEntry | None:
        while not self.buffer and not self.exhausted:
            if load.budget.left <= 0:
                return None
            page = load(self)
            self.buffer.extend(page.entries)
            self.position = page.last_evaluated
            self.exhausted = page.last_evaluated is None
        return self.buffer[0] if self.buffer else None

    def take(self) -> RunIndexEntry:
        entry = self.buffer.popleft()
        self.taken.append(entry)
        return entry

    def give_back(self) -> None:
        """Undo the last take: the entry was not returned on this page (it was full)."""
        self.buffer.appendleft(self.taken.pop())

    @property
    def done(self) -> bool:
        return self.exhausted and not self.buffer

    def resume(self) -> tuple[str | None, str | None]:
        """Where the next search page continues in this stream: (after, at), at most one of them."""
        if self.buffer:
            # Read but not returned: continue after the last entry taken, and read those again; or, with nothing
            # taken, at the first of them, so that what was read before it is not read again (a page always moves
            # every stream it read from on, whatever its budget).
            return (self.taken[-1].sort_key, None) if self.taken else (None, self.buffer[0].sort_key)
        # Everything read up to ``position`` was taken or did not match.
        return (self.position, None) if self.position is not None else (None, self.start_at)


class _Loader:
    def __init__(self, store: Store, search: RunSearch, filters: dict[str, str], budget: _Budget, streams: int) -> None:
        self.store = store
        self.search = search
        self.filters = filters
        self.budget = budget
        # Each stream's share of a page, plus one so that a stream's end is seen without another query.
        wanted = _FILTERED_QUERY_PAGE if filters or search.tags else search.limit
        self.page_size = max(MIN_READS_PER_STREAM, math.ceil(wanted / max(streams, 1)) + 1)

    def __call__(self, stream: _Stream) -> RunQueryPage:
        try:
            page = self.store.query_runs(
                stream.environment,
                stream.shard,
                created_from=_bound(self.search.created_after),
                created_before=_bound(self.search.created_before),
                filters=self.filters,
                start_after=stream.position,
                start_at=stream.start_at,
                page_size=self.page_size,
                tags=self.search.tags,
            )
        except InvalidStartKey as exc:
            raise BadRequest("this cursor does not fit the query", field="cursor") from exc
        self.budget.charge(max(page.evaluated, 1))
        return page


def sort_key(record: RunRecord) -> str:
    return f"{record.created_at}#{record.run_id}"


def _bound(moment: datetime | None) -> str | None:
    return iso(_utc(moment)) if moment is not None else None


def _fingerprint(search: RunSearch, environments: list[str], filters: dict[str, str]) -> str:
    query = {
        "environments": environments,
        "shards": RUN_INDEX_SHARDS,
        "filters": filters,
        "tags": search.tags,
        "after": _bound(search.created_after),
        "before": _bound(search.created_before),
    }
    return hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:24]


def encode_cursor(cursor: _Cursor) -> str:
    raw = cursor.model_dump_json(exclude_defaults=False).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def decode_cursor_json(text: str) -> bytes:
    """The JSON a cursor carries; ValueError if it is not a cursor or is larger than a cursor may be."""
    if len(text) > MAX_CURSOR_CHARS:
        raise ValueError(f"a cursor is at most {MAX_CURSOR_CHARS} characters")
    try:
        packed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        inflate = zlib.decompressobj()
        raw = inflate.decompress(packed, MAX_CURSOR_JSON_BYTES)
    except (binascii.Error, zlib.error) as exc:
        raise ValueError("not a cursor") from exc
    if inflate.unconsumed_tail or not inflate.eof:
        raise ValueError(f"a cursor inflates to at most {MAX_CURSOR_JSON_BYTES} bytes")
    return raw


def _decode_cursor(text: str, fingerprint: str, streams: list[tuple[str, int]], search: RunSearch) -> _Cursor:
    bad = BadRequest("invalid cursor: pass next_cursor from the previous page of this same query", field="cursor")
    try:
        cursor = _Cursor.model_validate_json(decode_cursor_json(text))
        done = int(cursor.done, 16)
    except (ValueError, ValidationError):
        raise bad from None
    if cursor.q != fingerprint:
        raise BadRequest("this cursor belongs to another query: keep the filters of the first page", field="cursor")
    lower, upper = _bound(search.created_after), _bound(search.created_before)
    if set(cursor.after) & set(cursor.at):
        raise bad
    for number, position in [*cursor.after.items(), *cursor.at.items()]:
        if not 0 <= number < len(streams) or not _POSITION.match(position):
            raise bad
        run_id = run_id_of_search_sort_key(position)
        environment, shard = streams[number]
        # A position is an entry of its own stream: its run's environment and shard (so it is a valid start key).
        if not is_run_id(run_id) or run_environment(run_id) != environment or index_shard(run_id) != shard:
            raise bad
        if (lower is not None and position < lower) or (upper is not None and position >= upper):
            raise bad
    if done < 0 or done >> len(streams):
        raise bad
    return cursor


def _environments(search: RunSearch, queue: RunQueue, visible_environment: str | None) -> list[str]:
    if search.environment is not None:
        if not queue.has_environment(search.environment):
            raise NotFound(f"unknown environment {search.environment!r}", field="environment")
        return [search.environment]
    if visible_environment is not None:
        return [visible_environment]
    return list(queue.environments)


def _matches(record: RunRecord, filters: dict[str, str], tags: dict[str, str]) -> bool:
    """The filters, checked on the run as the table holds it (the index may lag it)."""
    values = {name: getattr(record, name) for name in _FILTERED}
    values["state"] = record.state.value
    have = record.tags or {}
    return all(values.get(name) == value for name, value in filters.items()) and all(
        have.get(key) == value for key, value in tags.items()
    )


def search_runs(
    search: RunSearch, *, store: Store, queue: RunQueue, nodes: NodeStore, visible_environment: str | None = None
) -> RunPage:
    """One page of runs, newest first. ``visible_environment``: the one environment the caller may read, if any."""
    if search.environment is not None and visible_environment not in (None, search.environment):
        raise NotFound(f"unknown environment {search.environment!r}", field="environment")
    if (
        search.created_after is not None
        and search.created_before is not None
        and _utc(search.created_after) >= _utc(search.created_before)
    ):
        raise Unprocessable("created_before must be later than created_after", field="created_before")
    environments = _environments(search, queue, visible_environment)
    filters: dict[str, str] = {}
    if search.state is not None:
        filters["state"] = search.state.value
    if search.package is not None:
        filters["package"] = normalize_package_name(search.package)
    if search.job is not None:
        filters["job"] = search.job
    if search.schedule_id is not None:
        filters["schedule_id"] = search.schedule_id
    fingerprint = _fingerprint(search, environments, filters)
    all_streams = [(environment, shard) for environment in environments for shard in range(RUN_INDEX_SHARDS)]
    cursor = (
        _decode_cursor(search.cursor, fingerprint, all_streams, search)
        if search.cursor is not None
        else _Cursor(q=fingerprint)
    )
    finished = int(cursor.done, 16)
    streams = [
        _Stream(number, environment, shard, start_at=cursor.at.get(number), position=cursor.after.get(number))
        for number, (environment, shard) in enumerate(all_streams)
        if not finished >> number & 1
    ]
    budget = _Budget(max(MAX_EVALUATED_PER_PAGE, MIN_READS_PER_STREAM * len(streams)))
    load = _Loader(store, search, filters, budget, len(streams))

    # Merge: the newest head of every stream, until the page has its entries or a stream's head is unknown.
    chosen: list[tuple[RunIndexEntry, _Stream]] = []
    while len(chosen) < search.limit:
        heads = [(stream.head(load), stream) for stream in streams]
        if any(head is None and not stream.done for head, stream in heads):
            break  # out of read budget before every stream's next entry is known: a short page
        candidates = [(head, stream) for head, stream in heads if head is not None]
        if not candidates:
            break
        _, stream = max(candidates, key=lambda pair: pair[0].sort_key)
        chosen.append((stream.take(), stream))

    # The runs, read from the table in the merged order, the filters checked again on each.
    records = store.get_runs([entry.run_id for entry, _ in chosen])
    nodes_of = nodes_lookup(nodes)
    items: list[RunView] = []
    size = 0
    for position, (entry, _) in enumerate(chosen):
        if size >= MAX_PAGE_BYTES:
            for _, later in reversed(chosen[position:]):
                later.give_back()  # not on this page: the next one starts with them
            break
        record = records.get(entry.run_id)
        if record is None or sort_key(record) != entry.sort_key or not _matches(record, filters, search.tags):
            continue  # gone, or no longer matching: the index lagged the table
        items.append(view(record, nodes_of=nodes_of))
        size += len(record.model_dump_json())
    for stream in streams:
        stream.head(load)  # so that the last page says it is the last, when the budget allows knowing

    for stream in streams:
        if stream.done:
            finished |= 1 << stream.number
    if finished == (1 << len(all_streams)) - 1:
        return RunPage(items=items, next_cursor=None)
    after: dict[int, str] = {}
    at: dict[int, str] = {}
    for stream in streams:
        if not stream.done:
            resume_after, resume_at = stream.resume()
            if resume_after is not None:
                after[stream.number] = resume_after
            elif resume_at is not None:
                at[stream.number] = resume_at
    cursor = _Cursor(q=fingerprint, after=after, at=at, done=f"{finished:x}")
    return RunPage(items=items, next_cursor=encode_cursor(cursor))
