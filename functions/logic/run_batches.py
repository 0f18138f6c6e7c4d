"""Enqueue many runs in one request (POST /runs/batch): checked all before any is recorded, written and sent in
batches. Each run has the semantics of ``runs.enqueue``, its Idempotency-Key included.

Order of work, as for one run: check every item (nothing read or written yet but the keys, pins and versions),
record the new runs (runs with a key in transactions with their keys, the others in batch writes), send their
messages (10 per SendMessageBatch), then mark their keys dispatched. A request that dies after recording and
before sending leaves keyed runs that the key's replay dispatches after ``runs.DISPATCH_GRACE_SECONDS``, exactly
as for ``POST /runs``; a run without a key has no such recovery, here as there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from functions.dal.queue import RunQueue
from functions.dal.store import IdempotencyKeysTaken, Store
from runly.tracing import TraceParent
from runly_core.contracts import EnqueueBatchItem, EnqueueRunRequest, RunMessage, RunView
from runly_core.records import IdempotencyRecord, PackageRecord, RunRecord, utcnow

from . import delays, runs
from .errors import DomainError, Unavailable, Unprocessable

KEY_FIELD = "idempotency_key"


@dataclass
class _Item:
    position: int
    request: EnqueueRunRequest
    key: str | None
    fingerprint: str
    answer: RunView | None = None  # an earlier request's run (a live key)
    record: RunRecord | None = None  # or a new run
    key_record: IdempotencyRecord | None = None  # and its key


def item_field(position: int, field: str | None) -> str:
    return f"runs[{position}].{field}" if field else f"runs[{position}]"


@contextmanager
def _about_item(position: int) -> Iterator[None]:
    """A domain error of one item, as the batch's: the field (and the message) name the item."""
    try:
        yield
    except DomainError as exc:
        field = item_field(position, exc.field)
        raise type(exc)(f"{field}: {exc.message}", field=field) from exc


def enqueue_many(
    requests: Sequence[EnqueueBatchItem],
    *,
    store: Store,
    queue: RunQueue,
    owner: str,
    trace: TraceParent | None = None,
) -> list[tuple[RunView, bool]]:
    """Record and dispatch the runs; returns each run (in request order) and whether this call created it.

    Every new run continues ``trace``, the batch request's (one request, one trace); None: one new trace for all.

    Every item is checked (size, key, environment, version and pin, job, config schema; a key used before: the
    same body, else 409) before any run is written, so a bad item rejects the batch and loses nothing; the first
    bad item is the one named.
    """
    now = utcnow()
    trace = trace or TraceParent.new()
    items = []
    for position, request in enumerate(requests):
        run_request = request.run_request()
        fingerprint = runs.request_fingerprint(run_request)
        items.append(_Item(position, run_request, request.idempotency_key, fingerprint))
    first_use: dict[str, int] = {}
    for item in items:
        with _about_item(item.position):
            runs.check_config_size(item.request.config)
            if item.key is not None:
                if item.key in first_use:
                    raise Unprocessable(
                        f"repeats the idempotency_key of runs[{first_use[item.key]}]; one key names one run",
                        field=KEY_FIELD,
                    )
                first_use[item.key] = item.position

    stored = store.get_idempotency_many(owner, list(first_use)) if first_use else {}
    live = {key: record for key, record in stored.items() if runs.is_live(record, now)}
    earlier_runs = store.get_runs([record.run_id for record in live.values()]) if live else {}
    packages: dict[tuple[str, str, str | None], PackageRecord] = {}  # each pin and version read once per batch
    for item in items:
        with _about_item(item.position):
            existing = live.get(item.key) if item.key is not None else None
            if existing is not None:
                item.answer = runs.replay(
                    existing,
                    item.fingerprint,
                    store=store,
                    queue=queue,
                    record=earlier_runs.get(existing.run_id),
                    key_field=KEY_FIELD,
                )
                continue
            which = (item.request.environment, item.request.package, item.request.version)
            if which not in packages:
                packages[which] = runs.resolve_package(item.request, store=store, queue=queue)
            package, job = runs.resolve_job(item.request, store=store, queue=queue, package=packages[which])
            item.record = runs.new_run(item.request, package, job, now=now, trace=trace)
            if delays.SQS_ONLY.needs_timer(delays.not_before(item.record), now):
                # No timers here: a batch sends its messages at once. A longer delay is one POST /runs away.
                field = "not_before" if item.request.not_before is not None else "delay_seconds"
                raise Unprocessable(
                    f"a run of a batch may be delayed by at most {delays.SQS_ONLY.sqs_seconds} s; enqueue a run "
                    "delayed further with POST /runs",
                    field=field,
                )
            if item.key is not None:
                item.key_record = runs.new_key(owner, item.key, item.fingerprint, item.record.run_id, now=now)

    new = [item for item in items if item.record is not None]
    if new:
        _record(new, store=store, now_epoch=int(now.timestamp()))
        _dispatch(new, store=store, queue=queue)
    answers: list[tuple[RunView, bool]] = []
    for item in items:
        if item.record is not None:
            answers.append((item.record.view(), True))
        else:
            assert item.answer is not None
            answers.append((item.answer, False))
    return answers


def _record(new: list[_Item], *, store: Store, now_epoch: int) -> None:
    """Write the new runs (and their keys); on any failure take back what was written, and raise."""
    keyed = [(item.record, item.key_record) for item in new if item.record and item.key_record]
    plain = [item.record for item in new if item.record is not None and item.key_record is None]
    try:
        if keyed:
            store.create_runs_with_keys(keyed, now_epoch=now_epoch)
        if plain:
            store.put_new_runs(plain)
    except IdempotencyKeysTaken as exc:
        _take_back(new, store=store)
        taken = ", ".join(repr(keyed[position][1].key) for position in exc.positions)
        raise Unavailable(
            f"another request used the idempotency key(s) {taken} meanwhile; nothing was enqueued: retry, and those "
            "items get that request's runs"
        ) from exc
    except Exception as exc:
        _take_back(new, store=store)
        raise Unavailable("the runs could not be recorded; nothing was enqueued, retry") from exc


def _dispatch(new: list[_Item], *, store: Store, queue: RunQueue) -> None:
    """Send the new runs' messages; take back the runs whose message could not be sent (and raise)."""
    records = [item.record for item in new if item.record is not None]
    messages = [RunMessage(run_id=record.run_id, environment=record.environment) for record in records]
    now = utcnow()
    try:
        unsent = queue.dispatch_many(messages, [delays.sqs_delay(delays.not_before(record), now) for record in records])
    except Exception as exc:
        _take_back(new, store=store)
        raise Unavailable("the run queue did not accept the runs; nothing was enqueued, retry") from exc
    sent = [item for index, item in enumerate(new) if index not in unsent]
    store.mark_dispatched_many([item.key_record for item in sent if item.key_record is not None])
    if unsent:
        lost = [new[index] for index in sorted(unsent)]
        _take_back(lost, store=store)
        where = ", ".join(item_field(item.position, None) for item in lost)
        raise Unavailable(
            f"the run queue did not accept {where}: those were not enqueued, the other {len(sent)} new runs were; "
            "retry the batch with the same idempotency keys to get those back without enqueueing them twice"
        )


def _take_back(new: list[_Item], *, store: Store) -> None:
    store.discard_runs(
        [item.record for item in new if item.record is not None],
        [item.key_record for item in new if item.key_record is not None],
    )
