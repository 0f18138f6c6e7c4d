"""The functions read their settings from RUNLY_* variables as pydantic-settings did, without importing it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, ValidationError

from functions.settings import ApiSettings, EnvSettings, SettingsError

REPO = Path(__file__).resolve().parents[2]
API = {
    "RUNLY_TABLE_NAME": "runly-test",
    "RUNLY_FEED_BUCKET": "runly-feed",
    "RUNLY_QUEUE_URLS": '{"default": "https://sqs/q1", "staging": "https://sqs/q2"}',
    "RUNLY_SCHEDULER_GROUP": "runly",
    "RUNLY_SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/scheduler",
    "RUNLY_SCHEDULE_FIRE_FUNCTION_ARN": "arn:aws:lambda:us-east-1:123456789012:function:fire",
}


class Target(BaseModel):
    role_arn: str


class Example(EnvSettings):
    name: str = Field(min_length=3)
    grace_seconds: int = Field(default=300, ge=0)
    environment: str | None = None
    roles: dict[str, Target] = Field(default_factory=dict)


def test_each_field_comes_from_its_variable_structured_ones_as_json() -> None:
    settings = ApiSettings.from_environ({**API, "PATH": "/usr/bin", "RUNLY_UNRELATED": "ignored"})
    assert settings.queue_urls == {"default": "https://sqs/q1", "staging": "https://sqs/q2"}
    assert settings.table_name == "runly-test"


def test_names_in_any_case_numbers_coerced_defaults_kept_models_nested() -> None:
    settings = Example.from_environ(
        {"runly_name": "abc", "RUNLY_GRACE_SECONDS": "60", "RUNLY_ROLES": '{"dev": {"role_arn": "arn:x"}}'}
    )
    assert (settings.name, settings.grace_seconds, settings.environment) == ("abc", 60, None)
    assert settings.roles == {"dev": Target(role_arn="arn:x")}


def test_a_missing_or_invalid_setting_is_an_error_naming_it() -> None:
    with pytest.raises(ValidationError) as missing:
        ApiSettings.from_environ({k: v for k, v in API.items() if k != "RUNLY_FEED_BUCKET"})
    assert [error["loc"] for error in missing.value.errors()] == [("feed_bucket",)]
    with pytest.raises(ValidationError) as invalid:
        Example.from_environ({"RUNLY_NAME": "abc", "RUNLY_GRACE_SECONDS": "-1"})
    assert [error["loc"] for error in invalid.value.errors()] == [("grace_seconds",)]
    with pytest.raises(SettingsError, match=r"RUNLY_QUEUE_URLS \(queue_urls\) is not valid JSON"):
        ApiSettings.from_environ({**API, "RUNLY_QUEUE_URLS": "{default: q}"})


def test_no_function_imports_pydantic_settings() -> None:
    # Its import (sources, python-dotenv, argparse) costs a cold start 50-150 ms: bench/REPORT.md.
    handlers = [
        "functions.api.app",
        "functions.authorizer.app",
        "functions.maintenance.reaper",
        "functions.maintenance.dlq",
        "functions.nodes.credentials",
        "functions.schedules.fire",
        "functions.events.publisher",
    ]
    probe = f"import sys; import {', '.join(handlers)}; print('pydantic_settings' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout == "False\n"
