"""Scheduled (every minute): re-queue or end runs whose lease expired long ago with no live owner."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.dal.maintenance import MaintenanceStore
from functions.logic.maintenance import reap
from functions.maintenance.settings import get_reaper_settings

logger = Logger(service="runly-reaper")
metrics = Metrics(namespace="runly", service="runly-reaper")


@lru_cache(maxsize=1)
def _store() -> MaintenanceStore:
    settings = get_reaper_settings()
    return MaintenanceStore(settings.table_name, settings.queue_urls)


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    report = reap(_store(), now_ms=int(time.time() * 1000), grace_seconds=get_reaper_settings().reaper_grace_seconds)
    counts = {name: len(ids) for name, ids in vars(report).items()}
    for name, ids in vars(report).items():
        metrics.add_metric(name=f"Reaper{name.capitalize()}", unit=MetricUnit.Count, value=len(ids))
        if ids and name not in ("skipped", "renewed"):
            logger.info(f"reaper {name}", extra={"run_ids": ids})
    return counts
