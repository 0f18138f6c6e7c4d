"""The maintenance functions' environment, validated at cold start: each reads the table and the run queues,
and nothing of the API's (no feed bucket, no schedules)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from functions.settings import EnvSettings


class MaintenanceSettings(EnvSettings):
    """What both maintenance functions read: the table and the run queues (a run is re-queued to its own)."""

    table_name: str = Field(min_length=3)
    queue_urls: dict[str, str] = Field(description="environment name -> URL of its run queue (JSON)")


class ReaperSettings(MaintenanceSettings):
    """The reaper's environment (functions/maintenance/reaper.py)."""

    reaper_grace_seconds: int = Field(
        default=300, ge=0, description="how long after a lease expired the reaper steps in (nodes normally do first)"
    )


class DeadLetterSettings(MaintenanceSettings):
    """A dead-letter handler's environment (functions/maintenance/dlq.py): one per environment's DLQ."""

    dead_letter_environment: str = Field(
        min_length=1, description="a dead-letter handler's environment: the only one whose runs it fails"
    )


@lru_cache(maxsize=1)
def get_reaper_settings() -> ReaperSettings:
    return ReaperSettings.from_environ()


@lru_cache(maxsize=1)
def get_dead_letter_settings() -> DeadLetterSettings:
    return DeadLetterSettings.from_environ()
