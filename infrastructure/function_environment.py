"""Environment variables of the functions: the contract with their settings models (`functions/settings.py`,
`functions/maintenance/settings.py`). Each function gets the variables its own model reads, and no others.

The `RUNLY_*` names are read by the functions' settings model (prefix `RUNLY_` + field name);
the `POWERTOOLS_*` ones are read by Powertools itself.
"""

from __future__ import annotations

from runly_core.resources import SQS_MAX_DELAY_SECONDS

TABLE_NAME = "RUNLY_TABLE_NAME"
FEED_BUCKET = "RUNLY_FEED_BUCKET"
QUEUE_URLS = "RUNLY_QUEUE_URLS"  # JSON object: environment name -> queue URL
# Schedules (infrastructure/schedules.py): where the API puts them in EventBridge Scheduler, and what they invoke.
SCHEDULER_GROUP = "RUNLY_SCHEDULER_GROUP"
SCHEDULER_ROLE_ARN = "RUNLY_SCHEDULER_ROLE_ARN"
SCHEDULE_FIRE_FUNCTION_ARN = "RUNLY_SCHEDULE_FIRE_FUNCTION_ARN"
# Variables and secrets (infrastructure/job_values.py): the SSM path they live under.
VALUES_PATH = "RUNLY_VALUES_PATH"
# Delayed runs (functions.logic.delays): the longest delay sent as an SQS delay; beyond it a run waits on a timer
# (a one-time schedule in the schedules' group). On AWS always SQS's limit; the embedded stack's tests shrink it.
DELAY_SQS_SECONDS = "RUNLY_DELAY_SQS_SECONDS"

SETTINGS_VARIABLES = frozenset(
    {
        TABLE_NAME,
        FEED_BUCKET,
        QUEUE_URLS,
        SCHEDULER_GROUP,
        SCHEDULER_ROLE_ARN,
        SCHEDULE_FIRE_FUNCTION_ARN,
        VALUES_PATH,
        DELAY_SQS_SECONDS,
    }
)

POWERTOOLS_ENVIRONMENT: dict[str, str] = {
    "POWERTOOLS_SERVICE_NAME": "runly-api",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}

API_FUNCTION_VARIABLES = SETTINGS_VARIABLES | POWERTOOLS_ENVIRONMENT.keys()

# The authorizer (functions/authorizer, settings: functions.settings.AuthorizerSettings) reads API keys only.
AUTHORIZER_SETTINGS_VARIABLES = frozenset({TABLE_NAME})
AUTHORIZER_POWERTOOLS_ENVIRONMENT: dict[str, str] = {
    "POWERTOOLS_SERVICE_NAME": "runly-authorizer",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}
AUTHORIZER_FUNCTION_VARIABLES = AUTHORIZER_SETTINGS_VARIABLES | AUTHORIZER_POWERTOOLS_ENVIRONMENT.keys()


def api_function_environment(
    *,
    table_name: str,
    feed_bucket: str,
    queue_urls_json: str,
    scheduler_group: str,
    scheduler_role_arn: str,
    schedule_fire_function_arn: str,
    values_path: str,
) -> dict[str, str]:
    return {
        TABLE_NAME: table_name,
        FEED_BUCKET: feed_bucket,
        QUEUE_URLS: queue_urls_json,
        SCHEDULER_GROUP: scheduler_group,
        SCHEDULER_ROLE_ARN: scheduler_role_arn,
        SCHEDULE_FIRE_FUNCTION_ARN: schedule_fire_function_arn,
        VALUES_PATH: values_path,
        DELAY_SQS_SECONDS: str(SQS_MAX_DELAY_SECONDS),
        **POWERTOOLS_ENVIRONMENT,
    }


def authorizer_function_environment(*, table_name: str) -> dict[str, str]:
    return {TABLE_NAME: table_name, **AUTHORIZER_POWERTOOLS_ENVIRONMENT}


# The schedule fire function (functions/schedules/fire.py, settings: functions.settings.ScheduleFireSettings)
# enqueues runs: the table and the run queues.
FIRE_SETTINGS_VARIABLES = frozenset({TABLE_NAME, QUEUE_URLS})
FIRE_POWERTOOLS_ENVIRONMENT: dict[str, str] = {
    "POWERTOOLS_SERVICE_NAME": "runly-schedules",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}
FIRE_FUNCTION_VARIABLES = FIRE_SETTINGS_VARIABLES | FIRE_POWERTOOLS_ENVIRONMENT.keys()


def fire_function_environment(*, table_name: str, queue_urls_json: str) -> dict[str, str]:
    return {TABLE_NAME: table_name, QUEUE_URLS: queue_urls_json, **FIRE_POWERTOOLS_ENVIRONMENT}


# The maintenance functions (functions/maintenance, settings: functions.maintenance.settings.ReaperSettings and
# DeadLetterSettings) read the table and the run queues; a dead-letter handler also its environment
# (infrastructure.maintenance.DEAD_LETTER_ENVIRONMENT). The reaper's grace keeps its default.
MAINTENANCE_SETTINGS_VARIABLES = frozenset({TABLE_NAME, QUEUE_URLS})


def maintenance_function_environment(*, table_name: str, queue_urls_json: str) -> dict[str, str]:
    return {TABLE_NAME: table_name, QUEUE_URLS: queue_urls_json, "POWERTOOLS_LOG_LEVEL": "INFO"}
