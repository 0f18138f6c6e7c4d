"""Use cases of runs: enqueue (idempotent), get, cancel, requeue; why a run is still queued.

Every use case that takes a run id gets ``authorize``: called with the run's environment
before the run is shown or changed, it raises when the caller may not act there (a node
key of another environment), so nothing is changed for a caller who may not change it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from functions.dal.nodes import NodeStore
from functions.dal.queue import RunQueue
from functions.dal.store import IdempotencyKeyTaken, StateChanged, Store
from runly.sizes import stored_json
from runly.tracing import TraceParent
from runly.wire import Checkpoint, JobSpec
from runly_core.contracts import (
    IDEMPOTENCY_KEY,
    MAX_CONFIG_BYTES,
    EnqueueRunRequest,
    FailureReason,
    RequeueRunRequest,
    RunState,
    RunView,
)
from runly_core.records import (
    IDEMPOTENCY_TTL_SECONDS,
    IdempotencyRecord,
    NodeRecord,
    PackageRecord,
    RunRecord,
    iso,
    utcnow,
)
from runly_core.run_objects import RunObjects, RunObjectUnreadable, load_checkpoint, stored_state_ref

from . import delays as delays_
from .config_schemas import ConfigInvalid, SchemaRefused, validate_config
from .delays import SQS_ONLY, Delays
from .errors import Conflict, NotFound, TooLarge, Unavailable, Unprocessable
from .packages import resolve_in_environment

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY)
# Longer than the API function may run (29 s): a key item this old whose run was never marked dispatched
# belongs to a request that died between recording the run and sending its message.
DISPATCH_GRACE_SECONDS = 60
# A node in one of these agent states takes no new work (node_agent.agent.AgentState).
_NOT_TAKING_WORK = frozenset({"draining", "stopped"})
# How often a state change that lost a race with an agent is read and tried again.
_STATE_CHANGE_TRIES = 5

# Fields of EnqueueRunRequest added after Idempotency-Keys were first fingerprinted (request_fingerprint).
_LATER_FIELDS = ("not_before", "delay_seconds", "tags")

NodesOf = Callable[[str], list[NodeRecord]]
Authorize = Callable[[str], None]


def allow_any(environment: str) -> None:
    """The ``authorize`` of a caller that may act in every environment."""


def new_run_id(environment: str) -> str:
    """``run_{environment}_{time}_{random}``: time-ordered enough to eyeball, unique without coordination, and
    naming its environment, whose partition holds the run's items (runly_core.run_store.run_key)."""
    return f"run_{environment}_{utcnow().strftime('%Y%m%d%H%M%S')}_{uuid.uuid4().hex[:12]}"


def _validate_config(config: dict[str, Any], package: PackageRecord, job: JobSpec) -> None:
    """The config against the job's schema, by the one validator registration checked the schema for (never a
    fetch, bounded time). A version registered before those checks may hold a schema they refuse: 409."""
    try:
        validate_config(config, job.config_schema)
    except SchemaRefused as exc:
        raise Conflict(
            f"package {package.name} {package.version} cannot take runs of job {job.name!r}: "
            f"{exc.describe(job.name)}; register a new version with a usable schema",
            field="job",
        ) from exc
    except ConfigInvalid as exc:
        field = ".".join(["config", *(str(p) for p in exc.path)])
        raise Unprocessable(
            f"config does not match the schema of job {job.name!r}: {exc.message}", field=field
        ) from exc


def check_config_size(config: dict[str, Any]) -> None:
    size = len(json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_CONFIG_BYTES:
        raise TooLarge(
            f"config is {size} bytes as JSON; the limit is {MAX_CONFIG_BYTES}: put large inputs in S3 and pass their"
            " location",
            field="config",
        )


def check_idempotency_key(key: str) -> None:
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise Unprocessable(
            f"{IDEMPOTENCY_HEADER} must be 1 to 128 characters from A-Z a-z 0-9 . _ : -", field=IDEMPOTENCY_HEADER
        )


def request_fingerprint(request: EnqueueRunRequest) -> str:
    """What "the same request" means for an Idempotency-Key: the validated body, keys in canonical order. Fields
    added since keys were first stored count only when given, so a key stored before them still matches its body."""
    unset = {field for field in _LATER_FIELDS if getattr(request, field) in (None, {})}
    canonical = json.dumps(request.model_dump(mode="json", exclude=unset), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def authorized_run(record: RunRecord | None, run_id: str, authorize: Authorize) -> RunRecord:
    if record is None:
        raise NotFound(f"no run {run_id!r}", field="run_id")
    authorize(record.environment)
    return record


# ---------------------------------------------------------------- why a run is still queued


def queued_reason(record: RunRecord, *, now: datetime, nodes_of: NodesOf) -> str | None:
    """Why a Queued run has not started (None for any other state): the user's first question."""
    if record.state is not RunState.QUEUED:
        return None
    delayed = delays_.delayed_until(record, now)
    if delayed is not None:
        return f"delayed until {iso(delayed)}"
    last = record.attempts[-1] if record.attempts else None
    if last is not None:
        retry_at = datetime.fromisoformat(record.retry_at) if record.retry_at else None
        if retry_at is None or retry_at > now:
            why = f" ({last.reason.value})" if last.reason else ""
            until = f" until {iso(retry_at)}" if retry_at else ""
            return f"waiting for retry after attempt {last.number}{why}{until}"
    epoch = int(now.timestamp())
    online = [node for node in nodes_of(record.environment) if node.expires_at > epoch]
    if not online:
        return f"no node online in environment {record.environment}"
    if all(node.drain_requested or node.state in _NOT_TAKING_WORK for node in online):
        return f"every node online in environment {record.environment} is draining"
    return "waiting for a free node"


def nodes_lookup(nodes: NodeStore) -> NodesOf:
    """Nodes by environment, read once per environment per request."""
    return cache(nodes.list)


def view(record: RunRecord, *, nodes_of: NodesOf, checkpoint: Checkpoint | None = None) -> RunView:
    result = record.view()
    result.checkpoint = checkpoint
    result.queued_reason = queued_reason(record, now=utcnow(), nodes_of=nodes_of)
    return result


# ---------------------------------------------------------------- enqueue


def resolve_job(
    request: EnqueueRunRequest, *, store: Store, queue: RunQueue, package: PackageRecord | None = None
) -> tuple[PackageRecord, JobSpec]:
    """What a run of ``request`` would run, checked as enqueue checks it before anything is recorded: the
    environment exists, the version resolves (the environment's pin), the package has the job, and the config
    matches the job's JSON schema. Schedules check their template with it too. ``package``: already resolved."""
    if package is None:
        package = resolve_package(request, store=store, queue=queue)
    job = next((j for j in package.jobs if j.name == request.job), None)
    if job is None:
        names = ", ".join(sorted(j.name for j in package.jobs))
        raise NotFound(
            f"package {package.name} {package.version} has no job {request.job!r} (jobs: {names})", field="job"
        )
    _validate_config(request.config, package, job)
    return package, job


def resolve_package(request: EnqueueRunRequest, *, store: Store, queue: RunQueue) -> PackageRecord:
    """The package version a run of ``request`` gets under its environment's pin: the pin and the version named
    read in one round trip (the pin alone once the version is in memory); with no version named, the pin and the
    package's index entry, then the chosen version's item (unless in memory)."""
    if not queue.has_environment(request.environment):
        raise NotFound(f"unknown environment {request.environment!r}", field="environment")
    return resolve_in_environment(request.environment, request.package, request.version, store=store)


def new_run(
    request: EnqueueRunRequest,
    package: PackageRecord,
    job: JobSpec,
    *,
    now: datetime,
    schedule_id: str | None = None,
    trace: TraceParent | None = None,
) -> RunRecord:
    """A Queued run of ``request``, continuing ``trace`` (the enqueue's span; None: the root of a new trace).
    A ``not_before`` more than a year ahead is a 422."""
    not_before = delays_.not_before_of(request, now)
    return RunRecord(
        run_id=new_run_id(request.environment),
        state=RunState.QUEUED,
        package=package.name,
        version=package.version,
        job=job.name,
        entry_point=job.entry_point,
        environment=request.environment,
        config_json=stored_json(request.config),  # as check_config_size measured it: UTF-8, not \u escapes
        timeout_seconds=request.timeout_seconds,
        max_attempts=request.max_attempts,
        bundle_key=package.key,
        bundle_sha256=package.sha256,
        created_at=iso(now),
        schedule_id=schedule_id,
        tags=request.tags or None,
        traceparent=str(trace or TraceParent.new()),
        not_before=iso(not_before) if not_before else None,
    )


def new_key(owner: str, key: str, fingerprint: str, run_id: str, *, now: datetime) -> IdempotencyRecord:
    return IdempotencyRecord(
        owner=owner,
        key=key,
        fingerprint=fingerprint,
        run_id=run_id,
        created_at=iso(now),
        expires_at=int(now.timestamp()) + IDEMPOTENCY_TTL_SECONDS,
    )


def enqueue(
    request: EnqueueRunRequest,
    *,
    store: Store,
    queue: RunQueue,
    owner: str,
    idempotency_key: str | None = None,
    schedule_id: str | None = None,
    trace: TraceParent | None = None,
    delays: Delays = SQS_ONLY,
) -> tuple[RunView, bool]:
    """Record a run and dispatch it; returns the run and whether this call created it.

    With an Idempotency-Key, the first request creates the run and every later one with the same
    key and body (from the same API key, for 24 h) gets that run back; another body is a 409.
    ``schedule_id`` marks a run a schedule enqueued (its owner is then the schedule, its key the fire's time).
    ``trace``: the trace context the run continues (the enqueue's span); None: a new trace. A replayed key's run
    keeps the trace it was created in. ``delays``: how a delayed run waits (``functions.logic.delays``).

    The answer has no ``queued_reason``: a run just enqueued is waiting for its message to be received, and
    finding out whether a node could take it would cost a read of the environment's nodes on every enqueue.
    """
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    check_config_size(request.config)
    fingerprint = request_fingerprint(request)
    now = utcnow()
    if idempotency_key is not None:
        existing = _live_key(store, owner, idempotency_key, now)
        if existing is not None:
            return replay(existing, fingerprint, store=store, queue=queue, delays=delays), False

    package, job = resolve_job(request, store=store, queue=queue)
    record = new_run(request, package, job, now=now, schedule_id=schedule_id, trace=trace)
    if delays.timers is None and delays.needs_timer(delays_.not_before(record), now):
        field = "not_before" if request.not_before is not None else "delay_seconds"
        raise Unprocessable(f"here a run may be delayed by at most {delays.sqs_seconds} s", field=field)
    key_record = None
    if idempotency_key is not None:
        key_record = new_key(owner, idempotency_key, fingerprint, record.run_id, now=now)
    # The run is recorded before it is dispatched: a message never names a run that does not exist.
    # The key goes in the same transaction, so of two concurrent requests with one key exactly one records a run.
    try:
        store.create_run(record, idempotency=key_record, now_epoch=int(now.timestamp()))
    except IdempotencyKeyTaken:
        assert idempotency_key is not None
        existing = _live_key(store, owner, idempotency_key, utcnow())
        if existing is None:
            raise Unavailable(f"{IDEMPOTENCY_HEADER} {idempotency_key!r} is being released; retry") from None
        return replay(existing, fingerprint, store=store, queue=queue, delays=delays), False
    _dispatch(record, store=store, queue=queue, key_record=key_record, delays=delays)
    answer = record.view()
    delayed = delays_.delayed_until(record, now)
    if delayed is not None:  # known without reading anything: say it
        answer.queued_reason = f"delayed until {iso(delayed)}"
    return answer, True


def _live_key(store: Store, owner: str, key: str, now: datetime) -> IdempotencyRecord | None:
    record = store.get_idempotency(owner, key)
    return record if is_live(record, now) else None


def is_live(record: IdempotencyRecord | None, now: datetime) -> bool:
    # DynamoDB's TTL deletes expired items up to days late: past expires_at the key is free again.
    return record is not None and record.expires_at > now.timestamp()


def replay(
    existing: IdempotencyRecord,
    fingerprint: str,
    *,
    store: Store,
    queue: RunQueue,
    record: RunRecord | None = None,
    key_field: str = IDEMPOTENCY_HEADER,
    delays: Delays = SQS_ONLY,
) -> RunView:
    """The run an earlier request with this key created (409 for another body, named ``key_field``), dispatched if
    the request that recorded it died before sending its message; ``record``: that run, if already read."""
    if existing.fingerprint != fingerprint:
        raise Conflict(
            f"{IDEMPOTENCY_HEADER} {existing.key!r} was used for another request (run {existing.run_id}); "
            "use a new key for a new run",
            field=key_field,
        )
    if record is None:
        record = store.get_run(existing.run_id)
    if record is None:
        # The first request is taking its run back (its dispatch failed): this one may simply retry.
        raise Unavailable(f"the run of {IDEMPOTENCY_HEADER} {existing.key!r} was not enqueued; retry")
    age = utcnow() - datetime.fromisoformat(existing.created_at)
    if not existing.dispatched and age > timedelta(seconds=DISPATCH_GRACE_SECONDS):
        if record.state is RunState.QUEUED and record.attempt == 0:
            # The request that recorded it died before sending its message; a duplicate message would be harmless
            # (claims are conditional), a missing one would leave the run queued forever.
            try:
                delays_.dispatch(record, queue=queue, delays=delays, now=utcnow())
            except Exception as exc:
                raise Unavailable("the run queue did not accept the run's message; retry with the same key") from exc
        store.mark_dispatched(existing)
    return record.view()


def _dispatch(
    record: RunRecord,
    *,
    store: Store,
    queue: RunQueue,
    key_record: IdempotencyRecord | None = None,
    delays: Delays = SQS_ONLY,
) -> None:
    try:
        # The message, or for a run delayed beyond what SQS can delay, its timer (functions.logic.delays).
        delays_.dispatch(record, queue=queue, delays=delays, now=utcnow())
    except Exception as exc:
        # Not dispatched: take the record back so no run waits forever for a message that was never sent.
        store.discard_run(record.run_id, idempotency=key_record)
        raise Unavailable("the run queue did not accept the run; nothing was enqueued, retry") from exc
    if key_record is not None:
        store.mark_dispatched(key_record)


# ---------------------------------------------------------------- get, cancel, requeue


def get(
    run_id: str,
    *,
    store: Store,
    nodes: NodeStore,
    authorize: Authorize = allow_any,
    objects: Callable[[], RunObjects] | None = None,
) -> RunView:
    """The run with its config, checkpoint and output; an output stored out of the run item is read from S3
    (``objects``, built only then) and checked against its sha256 and length."""
    record, checkpoint_json = store.get_run_and_checkpoint(run_id)
    result = view(authorized_run(record, run_id, authorize), nodes_of=nodes_lookup(nodes))
    if checkpoint_json is not None:
        result.checkpoint = _stored_checkpoint(run_id, checkpoint_json, objects)
    if record is not None and record.output_ref is not None:
        if objects is None:
            raise Unavailable(f"run {run_id}: its output is stored out of line and no object store was given")
        try:
            result.output = json.loads(objects().get_output(run_id, record.output_ref))
        except RunObjectUnreadable as exc:
            log.error("run %s: its output cannot be read: %s", run_id, exc)
            raise Unavailable(f"run {run_id}: its stored output cannot be read ({exc})") from exc
    return result


def _stored_checkpoint(run_id: str, checkpoint_json: str, objects: Callable[[], RunObjects] | None) -> Checkpoint:
    """A stored checkpoint with its state, read from S3 (``objects``) if it is not inline; Unavailable if that
    object cannot be read (missing, or not the bytes written): the run's view never shows another state."""
    if stored_state_ref(run_id, checkpoint_json) is not None and objects is None:
        raise Unavailable(f"run {run_id}: its checkpoint is stored out of line and no object store was given")
    try:
        return load_checkpoint(run_id, checkpoint_json, objects)
    except RunObjectUnreadable as exc:
        log.error("run %s: its checkpoint cannot be read: %s", run_id, exc)
        raise Unavailable(f"run {run_id}: its stored checkpoint cannot be read ({exc})") from exc


def cancel(
    run_id: str,
    *,
    store: Store,
    nodes: NodeStore,
    requested_by: str,
    authorize: Authorize = allow_any,
    delays: Delays = SQS_ONLY,
) -> RunView:
    """Queued: Cancelled at once (an agent that receives its message later finds it terminal and drops it); a
    delayed run's timer is deleted (``delays.cancel_timer``), so it never fires.
    Running: Cancelling; the lease holder sees it on its next heartbeat, stops the job and ends the run Cancelled.

    Each change is conditional on the state it was read in; losing a race with an agent means reading again.
    """
    for _ in range(_STATE_CHANGE_TRIES):
        record = authorized_run(store.get_run(run_id), run_id, authorize)
        now = iso(utcnow())
        try:
            if record.state is RunState.QUEUED:
                error = {
                    "reason": FailureReason.CANCELLED.value,
                    "message": f"cancelled before it started (by key {requested_by})",
                }
                cancelled = store.cancel_queued(run_id, now=now, error=error)
                delays_.cancel_timer(cancelled, delays=delays)
                return view(_config_of(record, cancelled), nodes_of=nodes_lookup(nodes))
            if record.state is RunState.RUNNING:
                cancelling = store.request_cancel(run_id, now=now, requested_by=requested_by)
                return view(_config_of(record, cancelling), nodes_of=nodes_lookup(nodes))
        except StateChanged:
            continue
        raise Conflict(f"run {run_id} is {record.state.value}; only Queued or Running runs can be cancelled")
    raise Unavailable(f"run {run_id} kept changing state while being cancelled; retry")


def _config_of(read: RunRecord, written: RunRecord) -> RunRecord:
    """``written`` (a run item as a write returned it, without its config) with the config of ``read``, the same
    run read with it before: a run's config never changes."""
    return written.model_copy(update={"config_json": read.config_json})


def requeue(
    run_id: str,
    request: RequeueRunRequest,
    *,
    store: Store,
    queue: RunQueue,
    nodes: NodeStore,
    authorize: Authorize = allow_any,
    trace: TraceParent | None = None,
    objects: Callable[[], RunObjects] | None = None,
) -> RunView:
    """A new run of the same package version, job, config and limits, linked to the original, in ``trace`` (the
    requeue request's; None: a new trace), not the original's: it is another request's work.

    With ``resume``, the original's last checkpoint is copied to the new run before its message is
    sent, so its first attempt starts where the original stopped (from scratch if it never checkpointed).
    """
    original = authorized_run(store.get_run(run_id), run_id, authorize)
    if not original.state.terminal:
        raise Conflict(f"run {run_id} is {original.state.value}; only finished runs can be requeued (cancel it first)")
    if not queue.has_environment(original.environment):
        raise Conflict(f"environment {original.environment!r} of run {run_id} no longer exists", field="environment")
    copied = None
    if request.resume:
        item = store.get_checkpoint_item(run_id)
        if item is not None and "checkpoint_json" in item:
            # Only the checkpoint itself: whatever else the agent keeps on it belongs to the original's attempts.
            copied = {"checkpoint_json": item["checkpoint_json"], "copied_from": run_id}
    # Built field by field, not copied: nothing one execution produced (attempts, output, lease) carries over.
    record = RunRecord(
        run_id=new_run_id(original.environment),
        state=RunState.QUEUED,
        package=original.package,
        version=original.version,
        job=original.job,
        entry_point=original.entry_point,
        environment=original.environment,
        config_json=original.required_config_json,
        timeout_seconds=original.timeout_seconds,
        max_attempts=original.max_attempts,
        bundle_key=original.bundle_key,
        bundle_sha256=original.bundle_sha256,
        created_at=iso(utcnow()),
        requeued_from=original.run_id,
        tags=original.tags,
        traceparent=str(trace or TraceParent.new()),
    )
    store.create_run(record, checkpoint=copied)
    _dispatch(record, store=store, queue=queue)
    result = view(record, nodes_of=nodes_lookup(nodes))
    if copied:
        # The copy names the original's object (same environment): shown as read back, checked, from there.
        result.checkpoint = _stored_checkpoint(record.run_id, copied["checkpoint_json"], objects)
    return result
