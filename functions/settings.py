"""The functions' environment, validated once at cold start. Nothing else reads os.environ.

Each function's settings are a pydantic model read from its environment by ``EnvSettings.from_environ``: field
``x`` from ``RUNLY_X`` (any case), a field of a structured type (a dict, a list, a model) as JSON, variables
the model does not name ignored. That is what pydantic-settings' ``BaseSettings`` does with these options; it is
not used because importing it (its sources, python-dotenv, argparse...) costs a cold start 50 to 150 ms, as much
as some functions' whole work (bench/REPORT.md, "Lambda cold starts").
"""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from runly_core.resources import SQS_MAX_DELAY_SECONDS, values_path_of_table

ENV_PREFIX = "RUNLY_"


class SettingsError(ValueError):
    """A variable the settings read holds no valid JSON where JSON is expected."""


def _is_structured(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_structured(member) for member in typing.get_args(annotation))
    if typing.get_origin(annotation) in (dict, list, set, frozenset, tuple):
        return True
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


class _SettingsConfig(ConfigDict, total=False):
    # Where each setting is read from: env_prefix + its name, in any case (as node_agent.settings does it); the
    # infrastructure tests read it too, to match the stack's variable names to the fields.
    env_prefix: str


class EnvSettings(BaseModel):
    """A function's environment as a model; ``from_environ`` reads it (see the module's docstring)."""

    model_config = _SettingsConfig(extra="ignore", env_prefix=ENV_PREFIX)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings from ``environ`` (default: os.environ); ValidationError (or SettingsError, for a value
        that is not JSON where JSON is expected) naming the field."""
        source = os.environ if environ is None else environ
        by_name = {name.upper(): value for name, value in source.items()}
        prefix = str(cls.model_config.get("env_prefix", ""))
        values: dict[str, Any] = {}
        for field_name, field in cls.model_fields.items():
            variable = f"{prefix}{field_name}".upper()
            if variable not in by_name:
                continue
            raw = by_name[variable]
            if _is_structured(field.annotation):
                try:
                    values[field_name] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise SettingsError(f"{variable} ({field_name}) is not valid JSON: {exc.msg}") from exc
            else:
                values[field_name] = raw
        return cls.model_validate(values)


class ApiSettings(EnvSettings):
    table_name: str = Field(min_length=3)
    feed_bucket: str = Field(min_length=3)
    queue_urls: dict[str, str] = Field(description="environment name -> URL of its run queue (JSON)")
    # Schedules: the API creates, changes and deletes them in EventBridge Scheduler (infrastructure/schedules.py).
    scheduler_group: str = Field(min_length=1, max_length=64, description="the schedule group of this deployment")
    scheduler_role_arn: str = Field(
        min_length=20, description="the role EventBridge Scheduler assumes to invoke the fire function"
    )
    schedule_fire_function_arn: str = Field(min_length=20, description="the function every schedule invokes")
    # Delayed runs (functions.logic.delays): up to this far ahead a run's message is sent with an SQS delay, further
    # ahead its timer fires this long before not_before. SQS's limit; tests shrink it to see the timer path.
    delay_sqs_seconds: int = Field(default=SQS_MAX_DELAY_SECONDS, ge=1, le=SQS_MAX_DELAY_SECONDS)
    # Variables and secrets (functions/dal/values.py): the SSM path of this deployment's; None: the one its table
    # name implies (runly_core.resources.values_path_of_table), as the stack names both.
    values_path: str | None = Field(default=None, pattern=r"^/[A-Za-z0-9_.-]{1,64}$")

    @property
    def values_root(self) -> str:
        return self.values_path or values_path_of_table(self.table_name)


@lru_cache(maxsize=1)
def get_settings() -> ApiSettings:
    return ApiSettings.from_environ()


class AuthorizerSettings(EnvSettings):
    """The authorizer's environment: it reads API keys and nothing else."""

    table_name: str = Field(min_length=3)


@lru_cache(maxsize=1)
def get_authorizer_settings() -> AuthorizerSettings:
    return AuthorizerSettings.from_environ()


class ScheduleFireSettings(EnvSettings):
    """The schedule fire function's environment (functions/schedules/fire.py): it enqueues runs."""

    table_name: str = Field(min_length=3)
    queue_urls: dict[str, str] = Field(description="environment name -> URL of its run queue (JSON)")


@lru_cache(maxsize=1)
def get_fire_settings() -> ScheduleFireSettings:
    return ScheduleFireSettings.from_environ()
