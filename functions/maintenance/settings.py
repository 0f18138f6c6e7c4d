from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from functions.settings import ApiSettings


class MaintenanceSettings(ApiSettings):
    reaper_grace_seconds: int = Field(
        default=300, ge=0, description="how long after a lease expired the reaper steps in (nodes normally do first)"
    )
    dead_letter_environment: str | None = Field(
        default=None, description="a dead-letter handler's environment: the only one whose runs it fails"
    )


@lru_cache(maxsize=1)
def get_maintenance_settings() -> MaintenanceSettings:
    return MaintenanceSettings()  # type: ignore[call-arg]  # filled from the environment
