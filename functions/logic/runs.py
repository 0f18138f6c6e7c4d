"""Use cases of runs: enqueue, get."""

from __future__ import annotations

import json
import uuid
from typing import Any

from jsonschema import Draft202012Validator

from functions.dal.queue import RunQueue
from functions.dal.store import Store
from runly.contracts import EnqueueRunRequest, RunMessage, RunState, RunView
from runly.records import RunRecord, iso, utcnow

from .errors import NotFound, Unavailable, Unprocessable
from .packages import resolve_version


def new_run_id() -> str:
    # Time-ordered enough to eyeball, unique without coordination.
    return f"run_{utcnow().strftime('%Y%m%d%H%M%S')}_{uuid.uuid4().hex[:12]}"


def _validate_config(config: dict[str, Any], schema: dict[str, Any], job: str) -> None:
    errors = sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        field = ".".join(["config", *(str(p) for p in first.absolute_path)])
        raise Unprocessable(f"config does not match the schema of job {job!r}: {first.message}", field=field)


def enqueue(request: EnqueueRunRequest, *, store: Store, queue: RunQueue) -> RunView:
    if not queue.has_environment(request.environment):
        raise NotFound(f"unknown environment {request.environment!r}", field="environment")
    package = resolve_version(request.package, request.version, store=store)
    job = next((j for j in package.jobs if j.name == request.job), None)
    if job is None:
        names = ", ".join(sorted(j.name for j in package.jobs))
        raise NotFound(
            f"package {package.name} {package.version} has no job {request.job!r} (jobs: {names})", field="job"
        )
    _validate_config(request.config, job.config_schema, job.name)

    record = RunRecord(
        run_id=new_run_id(),
        state=RunState.QUEUED,
        package=package.name,
        version=package.version,
        job=job.name,
        entry_point=job.entry_point,
        environment=request.environment,
        config_json=json.dumps(request.config),
        timeout_seconds=request.timeout_seconds,
        max_attempts=request.max_attempts,
        bundle_key=package.key,
        bundle_sha256=package.sha256,
        created_at=iso(utcnow()),
    )
    # The run is recorded before it is dispatched: a message never names a run that does not exist.
    store.put_new_run(record)
    try:
        queue.dispatch(RunMessage(run_id=record.run_id, environment=record.environment))
    except Exception as exc:
        # Not dispatched: take the record back so no run waits forever for a message that was never sent.
        store.delete_run(record.run_id)
        raise Unavailable("the run queue did not accept the run; nothing was enqueued, retry") from exc
    return record.view()


def get(run_id: str, *, store: Store) -> RunView:
    record = store.get_run(run_id)
    if record is None:
        raise NotFound(f"no run {run_id!r}", field="run_id")
    return record.view()
