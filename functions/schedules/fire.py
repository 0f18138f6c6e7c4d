"""Invoked by EventBridge Scheduler at each fire of a schedule, with the target input the API gave it
(``runly_core.contracts.ScheduleFire``: the schedule's id and ``<aws.scheduler.scheduled-time>``). Enqueues the
schedule's
run once per scheduled time (``functions.logic.schedules.fire``); raising makes EventBridge Scheduler retry, which is
safe for that reason. A delayed run's timer (``runly_core.contracts.RunTimerFire``: the run's id) invokes it too: it
sends the run's message with the delay that remains (``functions.logic.delays.fire``). The embedded stack's scheduler
(``runly_cli.embedded.scheduler``) invokes it with the same events."""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.dal.queue import RunQueue
from functions.dal.schedules import ScheduleStore
from functions.dal.store import Store
from functions.logic import delays, schedules
from functions.settings import get_fire_settings
from runly_core.contracts import RunTimerFire, ScheduleFire
from runly_core.records import utcnow

logger = Logger(service="runly-schedules")
metrics = Metrics(namespace="runly", service="runly-schedules")


@lru_cache(maxsize=1)
def _services() -> tuple[Store, RunQueue, ScheduleStore]:
    settings = get_fire_settings()
    return (
        Store(settings.table_name),
        RunQueue(settings.queue_urls),
        ScheduleStore(settings.table_name),
    )


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "run_id" in event:
        return _run_timer(RunTimerFire.model_validate(event))
    fire = ScheduleFire.model_validate(event)
    store, queue, schedule_store = _services()
    outcome = schedules.fire(fire, store=store, queue=queue, schedules=schedule_store)
    metrics.add_metric(name=f"ScheduleFires{outcome.status.capitalize()}", unit=MetricUnit.Count, value=1)
    details = {"schedule_id": fire.schedule_id, "scheduled_time": schedules.fire_key(fire.scheduled_time)}
    if outcome.status == "failed":
        logger.warning("schedule fire enqueued nothing", extra={**details, "error": outcome.error})
    else:
        logger.info(f"schedule fire: {outcome.status}", extra={**details, "run_id": outcome.run_id})
    return {**details, **asdict(outcome)}


def _run_timer(fire: RunTimerFire) -> dict[str, Any]:
    store, queue, _ = _services()
    outcome = delays.fire(fire, store=store, queue=queue, now=utcnow())
    metrics.add_metric(name=f"RunTimers{outcome.status.capitalize()}", unit=MetricUnit.Count, value=1)
    details = {"run_id": fire.run_id, "scheduled_time": schedules.fire_key(fire.scheduled_time)}
    logger.info(f"run timer: {outcome.status}", extra=details)
    return {**details, **asdict(outcome)}
