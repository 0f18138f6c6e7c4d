from __future__ import annotations

from functools import partial
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from functions.api.auth import require, require_environment
from functions.api.dependencies import schedule_store, scheduler, services
from functions.api.observability import count
from functions.api.openapi import declare
from functions.logic import schedules
from runly_core.contracts import (
    SCHEDULE_ID,
    CreateScheduleRequest,
    ScheduleList,
    ScheduleView,
    Scope,
    UpdateScheduleRequest,
)
from runly_core.resources import ENVIRONMENT_NAME

router = APIGatewayHttpRouter()

ScheduleId = Annotated[str, Path(pattern=SCHEDULE_ID, description="the schedule's id")]


@router.post(
    "",
    summary="Create a schedule: a run template enqueued on a cron or rate expression",
    status_code=201,
    description="The template is checked as `POST /runs` checks a run (the package, version and job exist, the "
    "config matches the job's schema) and the expression as EventBridge Scheduler reads it, before anything is "
    "saved. Each fire enqueues a normal run marked with `schedule_id`.",
    responses=declare(201, "The new schedule, with its next fire times", 404, 409, 413, 503),
    tags=["schedules"],
)
def create_schedule(body: CreateScheduleRequest) -> tuple[ScheduleView, int]:
    caller = require(router.current_event, Scope.WRITE, environment=body.environment)
    deps = services()
    created = schedules.create(
        body,
        store=deps.store,
        queue=deps.queue,
        schedules=schedule_store(),
        scheduler=scheduler(),
        created_by=caller.key_id,
    )
    count("SchedulesCreated")
    return created, 201


@router.get("", summary="List schedules, by environment, oldest first", tags=["schedules"])
def list_schedules(
    environment: Annotated[
        str | None, Query(pattern=ENVIRONMENT_NAME.pattern, description="only the schedules of this environment")
    ] = None,
) -> ScheduleList:
    caller = require(router.current_event, Scope.READ, environment=environment)
    # A node key sees its own environment's schedules, asked or not.
    return schedules.list_schedules(schedules=schedule_store(), environment=environment or caller.environment)


@router.get(
    "/<schedule_id>",
    summary="Get a schedule: its template, expression, next fire times and what its last fire did",
    responses=declare(200, "The schedule", 404),
    tags=["schedules"],
)
def get_schedule(schedule_id: ScheduleId) -> ScheduleView:
    caller = require(router.current_event, Scope.READ)
    return schedules.get(schedule_id, schedules=schedule_store(), authorize=partial(require_environment, caller))


@router.patch(
    "/<schedule_id>",
    summary="Change a schedule: enable or disable it, change its expression, time zone, config or limits",
    description="Only the fields given change. A changed template is checked as a new one is.",
    responses=declare(200, "The schedule as changed", 404, 409, 413, 503),
    tags=["schedules"],
)
def update_schedule(schedule_id: ScheduleId, body: UpdateScheduleRequest) -> ScheduleView:
    caller = require(router.current_event, Scope.WRITE)
    deps = services()
    changed = schedules.update(
        schedule_id,
        body,
        store=deps.store,
        queue=deps.queue,
        schedules=schedule_store(),
        scheduler=scheduler(),
        authorize=partial(require_environment, caller),
    )
    count("SchedulesChanged")
    return changed


@router.delete(
    "/<schedule_id>",
    summary="Delete a schedule: it fires no more (runs it enqueued stay)",
    status_code=204,
    responses=declare(204, "Deleted", 404, 503, body=False),
    tags=["schedules"],
)
def delete_schedule(schedule_id: ScheduleId) -> Response[None]:
    caller = require(router.current_event, Scope.WRITE)
    schedules.delete(
        schedule_id,
        schedules=schedule_store(),
        scheduler=scheduler(),
        authorize=partial(require_environment, caller),
    )
    count("SchedulesDeleted")
    return Response(status_code=204, body=None)
