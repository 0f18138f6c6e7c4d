"""Searching runs: filters, newest first, cursor pagination, across environments.

Runs are read from the runs-by-environment index (``gsi1pk = ENV#{env}``, ``gsi1sk =
"{created_at}#{run_id}"``), one partition per environment. The time range is the key
condition; state, package and job are a filter expression, so DynamoDB may return short
pages and the search keeps reading until the page is full or every environment is exhausted.

Without an environment filter, every environment the caller may see is read and the streams
are merged newest first. The cursor keeps, per environment, the index sort key to continue
after (the last run this search returned from it, or the last key DynamoDB read there when
nothing after the last returned run matched) and which environments are exhausted: a page
never repeats a run and never skips one, whatever the interleaving.

Cursors are opaque to clients: base64url of JSON carrying those positions and a fingerprint of
the query. They are validated, not signed: a cursor that does not decode, belongs to another
query, or holds a position outside the query's time range is a 400 naming ``cursor``; a cursor
edited by hand can only move within what the caller may read anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from functions.dal.nodes import NodeStore
from functions.dal.queue import RunQueue
from functions.dal.store import InvalidStartKey, RunQueryPage, Store
from runly_core.contracts import RunPage, RunState, RunView, normalize_package_name, parse_tag_filter
from runly_core.records import RunRecord, iso

from .errors import BadRequest, NotFound, Unprocessable
from .runs import nodes_lookup, view

# What one page may cost and weigh: DynamoDB items read (a selective filter reads many to match few), and
# the response size (Lambda answers at most 6 MB; a run may carry up to 64 KB of config and its output).
MAX_EVALUATED_PER_PAGE = 10_000
MAX_PAGE_BYTES = 4 * 1024 * 1024
_FILTERED_QUERY_PAGE = 200
_POSITION = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z#[A-Za-z0-9_.:-]{1,128}$")


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

    v: Literal[1] = 1
    q: str  # fingerprint of the query this cursor continues
    after: dict[str, str] = {}  # environment -> index sort key to continue after
    done: list[str] = []  # environments with nothing more to read


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
    """One environment's matching runs, newest first, read lazily page by page."""

    environment: str
    start: str | None  # where this page started reading (None: from the newest)
    position: str | None  # where the next DynamoDB page starts
    exhausted: bool = False
    buffer: deque[RunRecord] = field(default_factory=deque)
    last_taken: str | None = None

    def head(self, load: _Loader) -> RunRecord | None:
        while not self.buffer and not self.exhausted:
            if load.budget.left <= 0:
                return None
            page = load(self)
            self.buffer.extend(page.records)
            self.position = page.last_evaluated
            self.exhausted = page.last_evaluated is None
        return self.buffer[0] if self.buffer else None

    def take(self) -> RunRecord:
        record = self.buffer.popleft()
        self.last_taken = sort_key(record)
        return record

    @property
    def done(self) -> bool:
        return self.exhausted and not self.buffer

    def resume_after(self) -> str | None:
        """Where the next search page continues in this environment."""
        if self.buffer:
            # Read but not returned: continue after the last run returned, and read those again.
            return self.last_taken or self.start
        # Everything read up to ``position`` was returned or did not match.
        return self.position


class _Loader:
    def __init__(self, store: Store, search: RunSearch, filters: dict[str, str], budget: _Budget) -> None:
        self.store = store
        self.search = search
        self.filters = filters
        self.budget = budget
        self.page_size = _FILTERED_QUERY_PAGE if filters or search.tags else search.limit + 1

    def __call__(self, stream: _Stream) -> RunQueryPage:
        try:
            page = self.store.query_runs(
                stream.environment,
                created_from=_bound(self.search.created_after),
                created_before=_bound(self.search.created_before),
                filters=self.filters,
                start_after=stream.position,
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
        "filters": filters,
        "tags": search.tags,
        "after": _bound(search.created_after),
        "before": _bound(search.created_before),
    }
    return hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:24]


def encode_cursor(cursor: _Cursor) -> str:
    raw = cursor.model_dump_json(exclude_defaults=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str, fingerprint: str, environments: list[str], search: RunSearch) -> _Cursor:
    bad = BadRequest("invalid cursor: pass next_cursor from the previous page of this same query", field="cursor")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = _Cursor.model_validate_json(raw)
    except (binascii.Error, ValueError, ValidationError):
        raise bad from None
    if cursor.q != fingerprint:
        raise BadRequest("this cursor belongs to another query: keep the filters of the first page", field="cursor")
    lower, upper = _bound(search.created_after), _bound(search.created_before)
    known = set(environments)
    for environment, position in cursor.after.items():
        if environment not in known or not _POSITION.match(position):
            raise bad
        if (lower is not None and position < lower) or (upper is not None and position >= upper):
            raise bad
    if not set(cursor.done) <= known:
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
    cursor = (
        _decode_cursor(search.cursor, fingerprint, environments, search)
        if search.cursor is not None
        else _Cursor(q=fingerprint)
    )

    streams = [
        _Stream(environment=env, start=cursor.after.get(env), position=cursor.after.get(env))
        for env in environments
        if env not in cursor.done
    ]
    load = _Loader(store, search, filters, _Budget(MAX_EVALUATED_PER_PAGE))
    nodes_of = nodes_lookup(nodes)
    items: list[RunView] = []
    size = 0
    while len(items) < search.limit and size < MAX_PAGE_BYTES:
        heads = [(stream.head(load), stream) for stream in streams]
        if any(head is None and not stream.done for head, stream in heads):
            break  # out of read budget before every environment's next run is known: a short page
        candidates = [(head, stream) for head, stream in heads if head is not None]
        if not candidates:
            break
        newest, stream = max(candidates, key=lambda pair: sort_key(pair[0]))
        stream.take()
        items.append(view(newest, nodes_of=nodes_of))
        size += len(newest.model_dump_json())
    for stream in streams:
        stream.head(load)  # so that the last page says it is the last, when the budget allows knowing

    done = sorted({*cursor.done, *(stream.environment for stream in streams if stream.done)})
    if len(done) == len(environments):
        return RunPage(items=items, next_cursor=None)
    after = {
        stream.environment: position
        for stream in streams
        if not stream.done and (position := stream.resume_after()) is not None
    }
    return RunPage(items=items, next_cursor=encode_cursor(_Cursor(q=fingerprint, after=after, done=done)))
