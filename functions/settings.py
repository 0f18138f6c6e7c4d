"""The functions' environment, validated once at cold start. Nothing else reads os.environ."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from runly_core.resources import values_path_of_table


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNLY_", extra="ignore")

    table_name: str = Field(min_length=3)
    feed_bucket: str = Field(min_length=3)
    queue_urls: dict[str, str] = Field(description="environment name -> URL of its run queue (JSON)")
    # Schedules: the API creates, changes and deletes them in EventBridge Scheduler (infrastructure/schedules.py).
    scheduler_group: str = Field(min_length=1, max_length=64, description="the schedule group of this deployment")
    scheduler_role_arn: str = Field(
        min_length=20, description="the role EventBridge Scheduler assumes to invoke the fire function"
    )
    schedule_fire_function_arn: str = Field(min_length=20, description="the function every schedule invokes")
    # Variables and secrets (functions/dal/values.py): the SSM path of this deployment's; None: the one its table
    # name implies (runly_core.resources.values_path_of_table), as the stack names both.
    values_path: str | None = Field(default=None, pattern=r"^/[A-Za-z0-9_.-]{1,64}$")

    @property
    def values_root(self) -> str:
        return self.values_path or values_path_of_table(self.table_name)


@lru_cache(maxsize=1)
def get_settings() -> ApiSettings:
    return ApiSettings()  # type: ignore[call-arg]  # filled from the environment


class AuthorizerSettings(BaseSettings):
    """The authorizer's environment: it reads API keys and nothing else."""

    model_config = SettingsConfigDict(env_prefix="RUNLY_", extra="ignore")

    table_name: str = Field(min_length=3)


@lru_cache(maxsize=1)
def get_authorizer_settings() -> AuthorizerSettings:
    return AuthorizerSettings()  # type: ignore[call-arg]  # filled from the environment


class ScheduleFireSettings(BaseSettings):
    """The schedule fire function's environment (functions/schedules/fire.py): it enqueues runs."""

    model_config = SettingsConfigDict(env_prefix="RUNLY_", extra="ignore")

    table_name: str = Field(min_length=3)
    queue_urls: dict[str, str] = Field(description="environment name -> URL of its run queue (JSON)")


@lru_cache(maxsize=1)
def get_fire_settings() -> ScheduleFireSettings:
    return ScheduleFireSettings()  # type: ignore[call-arg]  # filled from the environment
