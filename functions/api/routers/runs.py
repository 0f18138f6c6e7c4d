from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header, Path, Query
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from functions.api.auth import require, require_environment
from functions.api.dependencies import delays, node_store, services
from functions.api.observability import count, enqueue_span
from functions.api.openapi import declare, errors
from functions.logic import run_batches, run_logs, runs
from functions.logic.errors import BadRequest
from functions.logic.run_search import MAX_TAG_FILTERS, RunSearch, search_runs, tag_filters
from runly.tracing import TRACEPARENT_HEADER
from runly.wire import JOB_NAME
from runly_core.contracts import (
    IDEMPOTENCY_KEY,
    SCHEDULE_ID,
    EnqueueBatchRequest,
    EnqueueBatchResponse,
    EnqueueRunRequest,
    LogPage,
    RequeueRunRequest,
    RunPage,
    RunState,
    RunView,
    Scope,
)
from runly_core.resources import ENVIRONMENT_NAME

router = APIGatewayHttpRouter()

RUN_ID = r"^[A-Za-z0-9_.:-]{1,128}$"
# As a query filter a package name may be spelled in any case or separator (PEP 503 normalisation follows).
PACKAGE_FILTER = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$"
RunId = Annotated[str, Path(pattern=RUN_ID, description="the run's id")]
TraceParentHeader = Annotated[
    str | None,
    Header(
        alias=TRACEPARENT_HEADER,
        # Parsed by runly.tracing, not refused by a pattern: a malformed one is ignored (a new trace), as W3C says.
        description="W3C trace context (version-traceid-parentid-flags) the run's spans continue; absent or "
        "malformed: the run starts a new trace (its trace_id says which)",
    ),
]


@router.post(
    "",
    summary="Enqueue a run",
    status_code=201,
    description="The config is validated against the job's JSON schema before anything is queued. Without a "
    "version, the newest version the environment's pin allows is run. With an Idempotency-Key, a repeated request "
    "(same key, same body, same API key, within 24 h) returns the run the first one created, with 200. With "
    "`not_before` or `delay_seconds` (up to a year) the run starts no earlier than then. The answer's "
    "`queued_reason` is null (or says until when a delayed run waits): GET /runs/{run_id} says why a run still waits.",
    responses={
        **declare(201, "The new run", 404, 409, 413, 503),
        200: {"description": "The run an earlier request with this Idempotency-Key created"},
    },
    tags=["runs"],
)
def enqueue(
    body: EnqueueRunRequest,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=runs.IDEMPOTENCY_HEADER,
            # Checked by the use case, so that the error names the header as clients spell it.
            json_schema_extra={"pattern": IDEMPOTENCY_KEY, "minLength": 1, "maxLength": 128},
            description="makes retries safe: the same key and body give the same run (24 h, per API key)",
        ),
    ] = None,
    traceparent: TraceParentHeader = None,
) -> tuple[RunView, int]:
    caller = require(router.current_event, Scope.WRITE, environment=body.environment)
    deps = services()
    with enqueue_span("enqueue run", traceparent) as trace:
        run, created = runs.enqueue(
            body,
            store=deps.store,
            queue=deps.queue,
            owner=caller.key_id,
            idempotency_key=idempotency_key,
            trace=trace,
            delays=delays(),
        )
    if created:
        count("RunsEnqueued")
    return run, 201 if created else 200


@router.post(
    "/batch",
    summary="Enqueue up to 100 runs in one request",
    status_code=201,
    description="Each item is the body of POST /runs, with that request's Idempotency-Key as an optional "
    "`idempotency_key` field (same semantics: per API key, 24 h, shared with POST /runs). Every item is checked "
    "before any run is recorded: the first bad one rejects the batch, its field named `runs[<index>]....`, and "
    "nothing is enqueued. The answer lists the runs in the order of the request: 201 if any was created, 200 if "
    "every one came from an earlier request's key. `queued_reason` is null, as from POST /runs.",
    responses={
        **declare(201, "The runs, in request order", 404, 409, 413, 503),
        200: {"description": "Every run came from an earlier request with the same idempotency_key"},
    },
    tags=["runs"],
)
def enqueue_batch(body: EnqueueBatchRequest, traceparent: TraceParentHeader = None) -> tuple[EnqueueBatchResponse, int]:
    caller = require(router.current_event, Scope.WRITE)
    for environment in sorted({item.environment for item in body.runs}):
        require_environment(caller, environment)
    deps = services()
    with enqueue_span("enqueue runs", traceparent) as trace:
        answers = run_batches.enqueue_many(
            body.runs, store=deps.store, queue=deps.queue, owner=caller.key_id, trace=trace
        )
    created = sum(1 for _, new in answers if new)
    if created:
        count("RunsEnqueued", created)
    return EnqueueBatchResponse(runs=[run for run, _ in answers]), 201 if created else 200


@router.get(
    "",
    summary="Search runs, newest first",
    description="Filters combine with AND. Pages hold at most `limit` runs and may hold fewer (a selective filter, "
    "a large page); follow `next_cursor` until it is null. A cursor is valid only with the filters it came from.",
    responses=declare(200, "One page of runs", 400, 404),
    tags=["runs"],
)
def search(
    state: Annotated[RunState | None, Query(description="only runs in this state")] = None,
    package: Annotated[str | None, Query(pattern=PACKAGE_FILTER, description="only runs of this package")] = None,
    job: Annotated[str | None, Query(pattern=JOB_NAME, description="only runs of this job")] = None,
    environment: Annotated[
        str | None, Query(pattern=ENVIRONMENT_NAME.pattern, description="only runs of this environment")
    ] = None,
    created_after: Annotated[
        datetime | None, Query(description="ISO-8601; runs created at or after it (UTC when no offset)")
    ] = None,
    created_before: Annotated[datetime | None, Query(description="ISO-8601; runs created before it")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="most runs on a page")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    schedule_id: Annotated[
        str | None, Query(pattern=SCHEDULE_ID, description="only the runs this schedule enqueued")
    ] = None,
    tag: Annotated[
        list[str] | None,
        Query(
            description=f"key:value, only runs with this tag; repeat for runs with all of them (at most "
            f"{MAX_TAG_FILTERS})"
        ),
    ] = None,
) -> RunPage:
    caller = require(router.current_event, Scope.READ, environment=environment)
    tags = tag_filters(tag or [])
    deps = services()
    query = RunSearch(
        state=state,
        package=package,
        job=job,
        environment=environment,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
        schedule_id=schedule_id,
        tags=tags,
    )
    return search_runs(
        query, store=deps.store, queue=deps.queue, nodes=node_store(), visible_environment=caller.environment
    )


@router.get(
    "/<run_id>",
    summary="Get one run: state, progress, attempts, timings, output, checkpoint, why it is still queued",
    responses=declare(200, "The run", 404, 503),
    tags=["runs"],
)
def get_run(run_id: RunId) -> RunView:
    caller = require(router.current_event, Scope.READ)
    return runs.get(
        run_id,
        store=services().store,
        nodes=node_store(),
        authorize=partial(require_environment, caller),
        objects=lambda: services().feed.run_objects,
    )


@router.post(
    "/<run_id>/cancel",
    summary="Cancel a run",
    description="A Queued run is Cancelled at once and never starts; a Running run becomes Cancelling and its "
    "node stops the job on its next heartbeat (SIGTERM, then SIGKILL after a grace period). Anything else: 409.",
    responses=declare(200, "The run, Cancelled or Cancelling", 404, 409, 503),
    tags=["runs"],
)
def cancel(run_id: RunId) -> RunView:
    caller = require(router.current_event, Scope.WRITE)
    cancelled = runs.cancel(
        run_id,
        store=services().store,
        nodes=node_store(),
        requested_by=caller.key_id,
        authorize=partial(require_environment, caller),
        delays=delays(),
    )
    count("RunsCancelled")
    return cancelled


@router.post(
    "/<run_id>/requeue",
    summary="Requeue a finished run as a new run (optionally resuming from its last checkpoint)",
    status_code=201,
    description="The new run has the same package version, job, config, environment and limits, and "
    "`requeued_from` set. With `resume: true` the original's last checkpoint is copied to it first (its "
    "`checkpoint` shows it; null when the original never checkpointed, and the run starts from scratch).",
    responses=declare(201, "The new run", 404, 409, 503),
    tags=["runs"],
)
def requeue(
    run_id: RunId, body: RequeueRunRequest | None = None, traceparent: TraceParentHeader = None
) -> tuple[RunView, int]:
    caller = require(router.current_event, Scope.WRITE)
    deps = services()
    with enqueue_span("requeue run", traceparent) as trace:
        run = runs.requeue(
            run_id,
            body or RequeueRunRequest(),
            store=deps.store,
            queue=deps.queue,
            nodes=node_store(),
            authorize=partial(require_environment, caller),
            trace=trace,
            objects=lambda: deps.feed.run_objects,
        )
    count("RunsRequeued")
    return run, 201


@router.get(
    "/<run_id>/logs",
    summary="Read a run's output (stdout and stderr), page by page or whole",
    description="Pages of up to 256 KB of one attempt (the latest by default), from the start or from `cursor`. "
    "`next_cursor` is null only when `complete` (the run is finished and every chunk has been read); while the "
    "run runs, follow it to tail the output. `download=true` returns the attempt's whole output as text/plain "
    "when it is at most 4 MB, else 413: page through it instead.",
    responses={
        200: {
            "description": "A page of output (JSON), or the whole output (text/plain) with download=true",
            "content": {"application/json": {"model": LogPage}, "text/plain": {"schema": {"type": "string"}}},
        },
        **errors(400, 404, 413),
    },
    tags=["runs"],
)
def logs(
    run_id: RunId,
    attempt: Annotated[int | None, Query(ge=1, le=1000, description="attempt number; the latest by default")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    download: Annotated[bool, Query(description="the whole output as text/plain")] = False,
) -> LogPage | str:
    caller = require(router.current_event, Scope.READ)
    deps = services()
    authorize = partial(require_environment, caller)
    if not download:
        return run_logs.read_page(
            run_id, attempt=attempt, cursor=cursor, store=deps.store, feed=deps.feed, authorize=authorize
        )
    if cursor is not None:
        raise BadRequest("download returns the whole output: leave out cursor", field="cursor")
    text, filename = run_logs.download(run_id, attempt=attempt, store=deps.store, feed=deps.feed, authorize=authorize)
    # A Response is what Powertools needs for another content type; its body (a str) is what gets validated.
    return Response(  # type: ignore[return-value]
        status_code=200,
        content_type="text/plain; charset=utf-8",
        body=text,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
