"""Wire contracts shared by the API functions, the node agent, the SDK and the CLI.

Everything that crosses a process boundary (HTTP bodies, SQS messages, the
package manifest, the job process channel) is one of these models.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from packaging.version import InvalidVersion, Version
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, ValidationInfo, field_validator

from runly.wire import (
    JOB_NAME,
    Checkpoint,
    JobSpec,
    Progress,
    Strict,
)
from runly_core.resources import ENVIRONMENT_NAME, MAX_VALUE_BYTES, SQS_MAX_DELAY_SECONDS

# The longest delay a run may be enqueued with (not_before, delay_seconds): a year.
MAX_DELAY_SECONDS = 366 * 24 * 3600
PACKAGE_NAME = r"^[a-z0-9]([a-z0-9._-]{0,98}[a-z0-9])?$"
SHA256_HEX = r"^[0-9a-f]{64}$"


def _pep440(value: str) -> str:
    try:
        return str(Version(value))
    except InvalidVersion as exc:
        raise ValueError(f"{value!r} is not a PEP 440 version") from exc


def _environment(value: str) -> str:
    if not ENVIRONMENT_NAME.match(value):
        raise ValueError(f"must match {ENVIRONMENT_NAME.pattern}")
    return value


def normalize_package_name(name: str) -> str:
    """PEP 503 normalisation: the feed knows ``My_Pkg`` and ``my-pkg`` as one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


PackageVersion = Annotated[str, AfterValidator(_pep440)]
PackageName = Annotated[str, AfterValidator(normalize_package_name), Field(pattern=PACKAGE_NAME)]
EnvironmentName = Annotated[str, AfterValidator(_environment)]
Sha256 = Annotated[str, Field(pattern=SHA256_HEX, description="lower-case hex SHA-256")]

# A run's tags (docs/api.md, "Tags"): what an application labels its runs with, to find them again
# (``GET /runs?tag=key:value``). A key has no ':' or '=' (the search's and the CLI's separators).
TAG_KEY = re.compile(r"^[A-Za-z0-9_.@/+-]{1,64}$")
MAX_TAGS = 20
MAX_TAG_VALUE_CHARS = 256


def check_tag_value(key: str, value: str) -> None:
    if len(value) > MAX_TAG_VALUE_CHARS:
        raise ValueError(f"the value of tag {key!r} is {len(value)} characters: at most {MAX_TAG_VALUE_CHARS}")
    if any(not character.isprintable() for character in value):
        raise ValueError(f"the value of tag {key!r} holds a control or unprintable character")
    if "," in value:
        # API Gateway joins a repeated query parameter's values with commas: tag=a:1&tag=b:2 arrives as "a:1,b:2"
        raise ValueError(f"the value of tag {key!r} holds a ',' (GET /runs?tag= could not name it)")


def check_tag_key(key: str) -> None:
    if not TAG_KEY.match(key):
        raise ValueError(f"tag key {key[:80]!r} must be 1-64 of A-Z a-z 0-9 _ . @ / + - (no ':' or '=')")


def _tags(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_TAGS:
        raise ValueError(f"{len(value)} tags: a run has at most {MAX_TAGS}")
    for key, text in value.items():
        check_tag_key(key)
        check_tag_value(key, text)
    return value


Tags = Annotated[
    dict[str, str],
    AfterValidator(_tags),
    Field(
        description=f"labels to find the run by (GET /runs?tag=key:value): at most {MAX_TAGS}; keys 1-64 of "
        f"A-Z a-z 0-9 _ . @ / + - ; values at most {MAX_TAG_VALUE_CHARS} printable characters, no ','",
    ),
]


def parse_tag_filter(text: str) -> tuple[str, str]:
    """``key:value`` (the value may hold ':') as a search names a tag; ValueError saying what is wrong."""
    key, separator, value = text.partition(":")
    if not separator:
        raise ValueError(f"{text[:80]!r} is not key:value")
    check_tag_key(key)
    check_tag_value(key, value)
    return key, value


class RunState(StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    CANCELLING = "Cancelling"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    TIMED_OUT = "TimedOut"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT})


class Scope(StrEnum):
    """What an API key may do. admin > write > read; node keys act for one environment's agents."""

    ADMIN = "admin"
    WRITE = "write"  # enqueue, cancel, requeue, push packages (and read)
    READ = "read"  # read-only: safe to embed in a page (Runly's publishable key)
    NODE = "node"


class FailureReason(StrEnum):
    """Why an attempt ended without success; retry rules are keyed by it."""

    USER_ERROR = "user_error"  # the job raised
    PROCESS_CRASH = "process_crash"  # the job process died (signal, OOM, non-zero exit without a result)
    NODE_LOST = "node_lost"  # the lease expired with no owner
    LEASE_EXPIRED = "lease_expired"  # the job stopped itself: no lease renewal reached it in time (runly.fencing)
    PACKAGE_ERROR = "package_error"  # download, verification or install failed: not retried
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    DEAD_LETTER = "dead_letter"  # its message was received too often without an outcome (poison)
    # A value the job produced is over its byte limit (runly_core.resources, checked by runly.sizes): not retried.
    OUTPUT_TOO_LARGE = "output_too_large"
    CHECKPOINT_TOO_LARGE = "checkpoint_too_large"
    # The checkpoint to resume from names a state in S3 that is missing or not the bytes written: not retried.
    CHECKPOINT_UNREADABLE = "checkpoint_unreadable"
    PROGRESS_TOO_LARGE = "progress_too_large"
    MESSAGE_TOO_LARGE = "message_too_large"  # a line on the job's channel over MAX_CHANNEL_MESSAGE_BYTES
    MEMORY_LIMIT = "memory_limit"  # the run went over its memory limit (RUNLY_MEMORY_LIMIT_BYTES, memory_limit_mb)
    # A variable or secret the job declares is not set in its environment (not retried), or SSM could not be read
    # (retried): either way before the job started (node_agent.job_values).
    VALUE_ERROR = "value_error"


# ---------------------------------------------------------------- packages


class PackageManifest(Strict):
    """``manifest.json`` at the root of a bundle."""

    format: Literal[1] = 1
    name: PackageName
    version: PackageVersion
    requires_python: str | None = None
    project_wheel: str = Field(description="file name (under wheels/) of the job project's own wheel")
    jobs: list[JobSpec] = Field(min_length=1)
    files: dict[str, Sha256] = Field(description="path inside the bundle -> SHA-256 of that file")


class UploadRequest(Strict):
    name: PackageName
    version: PackageVersion
    sha256: Sha256
    size: int = Field(gt=0, description="bundle size in bytes")


class UploadTicket(BaseModel):
    url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]
    key: str
    expires_at: datetime


class RegisterPackageRequest(Strict):
    name: PackageName
    version: PackageVersion
    sha256: Sha256
    size: int = Field(gt=0)


class PackageVersionView(BaseModel):
    name: str
    version: str
    sha256: str
    size: int
    key: str
    requires_python: str | None
    jobs: list[JobSpec]
    created_at: datetime


# ---------------------------------------------------------------- runs


class EnqueueRunRequest(Strict):
    package: PackageName
    job: str = Field(pattern=JOB_NAME)
    config: dict[str, Any] = Field(default_factory=dict)
    environment: EnvironmentName = "default"
    version: PackageVersion | None = Field(default=None, description="exact version; newest when omitted")
    timeout_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    max_attempts: int = Field(default=3, ge=1, le=10)
    tags: Tags = Field(default_factory=dict)
    not_before: AwareDatetime | None = Field(
        default=None,
        description="ISO 8601 with a time zone: the run starts no earlier than this (at most a year ahead); a time "
        "already past starts it at once. Not with delay_seconds.",
    )
    delay_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_DELAY_SECONDS,
        description="start the run this many seconds after it is enqueued (at most a year); not with not_before",
    )

    @field_validator("delay_seconds")
    @classmethod
    def _one_delay(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("not_before") is not None:
            raise ValueError("give not_before or delay_seconds, not both")
        return value


class AttemptView(BaseModel):
    number: int
    node_id: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: RunState | None = None
    reason: FailureReason | None = None
    error: str | None = None


class RunError(BaseModel):
    reason: FailureReason
    message: str
    type: str | None = None
    traceback: str | None = None


class RunView(BaseModel):
    id: str
    state: RunState
    package: str
    version: str
    job: str
    environment: str
    config: dict[str, Any]
    timeout_seconds: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: list[AttemptView] = Field(default_factory=list)
    output: Any = None
    error: RunError | None = None
    progress: Progress | None = None
    checkpoint: Checkpoint | None = None
    queued_reason: str | None = Field(default=None, description="why a Queued run has not started yet")
    not_before: datetime | None = Field(default=None, description="the run starts no earlier than this (a delayed run)")
    requeued_from: str | None = Field(default=None, description="the run this one is a requeue of")
    schedule_id: str | None = Field(default=None, description="the schedule that enqueued it, if one did")
    tags: dict[str, str] = Field(default_factory=dict, description="the labels it was enqueued with")
    trace_id: str | None = Field(
        default=None,
        description="the W3C trace id of the run's trace (from the enqueue request's traceparent, else a new one): "
        "the API's, the agent's and the job's spans are in it",
    )


class RunMessage(BaseModel):
    """The body of the SQS message that dispatches a run."""

    format: Literal[1] = 1
    run_id: str
    environment: str


class ErrorBody(BaseModel):
    """The one error shape of the HTTP API."""

    code: str
    message: str
    field: str | None = None
    correlation_id: str | None = None


# ---------------------------------------------------------------- API keys

KEY_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._:@/-]{0,99}$"


class CreateKeyRequest(Strict):
    name: str = Field(pattern=KEY_NAME, description="what the key is for, e.g. 'ci pipeline' or 'node eu-1'")
    scope: Scope
    environment: EnvironmentName | None = Field(
        default=None, description="required for scope node (the one environment its agents join); else absent"
    )


class KeyView(BaseModel):
    """An API key as listed: never its secret (only a hash of it is stored)."""

    id: str
    name: str
    scope: Scope
    environment: str | None = None
    prefix: str = Field(description="the start of the secret (rly_<id>_), to recognise a key without revealing it")
    created_at: datetime
    created_by: str = Field(description="id of the key that created it, or 'bootstrap'")
    revoked_at: datetime | None = None


class CreatedKey(KeyView):
    secret: str = Field(description="the key itself: send it as 'Authorization: Bearer <secret>'; shown only once")


class KeyList(BaseModel):
    items: list[KeyView]


# ---------------------------------------------------------------- nodes


class NodeStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class NodeView(BaseModel):
    """A node agent as it last reported itself.

    ``status`` is ``online`` while the node's registration is unexpired (``expires_at`` in the future): the agent
    pushes ``expires_at`` forward on every heartbeat, so a node that stops heartbeating turns ``offline`` once it
    passes, and DynamoDB's TTL later removes the record.
    """

    id: str
    host: str
    environment: str
    status: NodeStatus
    state: str = Field(description="the agent's own state (starting, idle, busy, draining...)")
    capacity: int = Field(description="how many runs it takes at once")
    running: list[str] = Field(description="ids of the runs it is running")
    agent_version: str
    started_at: datetime
    last_seen: datetime
    expires_at: datetime = Field(description="online until then unless it heartbeats again")
    drain_requested: bool


class NodeList(BaseModel):
    items: list[NodeView]


# ---------------------------------------------------------------- feed listing, pins, run search, logs
# (API issue 3: appended; the models above keep their order.)

IDEMPOTENCY_KEY = r"^[A-Za-z0-9._:-]{1,128}$"
MAX_CONFIG_BYTES = 64 * 1024  # a run's config, as compact JSON; larger inputs belong in S3 and the config names them


class PackageSummary(BaseModel):
    name: str
    latest_version: str = Field(description="the newest final release by PEP 440 (the newest pre-release if none)")
    version_count: int
    updated_at: datetime = Field(description="when a version of it was last registered")


class PackageSummaryList(BaseModel):
    items: list[PackageSummary]


class PackageVersionList(BaseModel):
    items: list[PackageVersionView] = Field(description="newest first, by PEP 440 ordering")


class PinRequest(Strict):
    specifier: str = Field(
        min_length=1, max_length=256, description="a PEP 440 version specifier, e.g. '>=1.2,<2' or '==1.4.*'"
    )


class Pin(BaseModel):
    """Which versions of a package an environment runs when a run names no version."""

    environment: str
    package: str
    specifier: str
    updated_at: datetime
    updated_by: str | None = Field(default=None, description="the API key that set it")


class PinList(BaseModel):
    items: list[Pin]


class RequeueRunRequest(Strict):
    resume: bool = Field(
        default=False, description="start from the original run's last checkpoint (from scratch if it has none)"
    )


class RunPage(BaseModel):
    items: list[RunView] = Field(description="newest first")
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next page; null at the end")


class LogPage(BaseModel):
    run_id: str
    attempt: int = Field(description="the attempt whose output this is (0: the run has not started)")
    text: str
    next_cursor: str | None = Field(
        default=None, description="pass as ?cursor= for what follows; null only when complete"
    )
    complete: bool = Field(
        description="every chunk of this attempt has been read and no more will come (the attempt or the run ended)"
    )


# ---------------------------------------------------------------- run events, node credentials
# (infrastructure issue 6: appended; the models above keep their order.)

RUN_EVENT_SOURCE = "runly"
RUN_STATE_CHANGED = "Run State Changed"  # the EventBridge detail-type


class RunStateChanged(BaseModel):
    """The ``detail`` of a ``Run State Changed`` event on the runly bus (source ``runly``), one per state a run
    enters. Delivery is at least once and not ordered: order by ``occurred_at``, de-duplicate by
    (``run_id``, ``state``, ``attempt``)."""

    run_id: str
    environment: str
    package: str
    version: str
    job: str
    previous_state: RunState | None = Field(description="null when the run was just created")
    state: RunState
    attempt: int = Field(description="the attempt number (0 before the first attempt started)")
    occurred_at: datetime = Field(description="when the change was written (the table stream's clock, in seconds)")


class NodeCredentials(BaseModel):
    """Short-lived AWS credentials for an on-premises node (``POST /nodes/credentials`` with a node key),
    limited to its environment's queue, the feed and the run and node items. Refresh before ``expiration``."""

    environment: str
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime


# ---------------------------------------------------------------- the calling key
# (dashboard issue 8: appended; the models above keep their order.)


class KeyIdentity(BaseModel):
    """``GET /me``: the key a request was made with, so a client (the dashboard) knows what it may do."""

    key_id: str
    scope: Scope = Field(description="admin > write > read; node keys read their environment only")
    environment: str | None = Field(default=None, description="node keys only: the environment they act for")


# ---------------------------------------------------------------- schedules
# (infrastructure issue 6, schedules: appended; the models above keep their order.)

SCHEDULE_ID = r"^[A-Za-z0-9_.-]{1,64}$"  # also the EventBridge Scheduler schedule's name
SCHEDULE_EXPRESSION_DOC = (
    "EventBridge Scheduler syntax: `cron(minutes hours day-of-month month day-of-week year)` (one of day-of-month "
    "and day-of-week is `?`; day-of-week 1-7 from Sunday or SUN-SAT; `L`, `LW` and `#` supported, `W` after a day "
    "not) or `rate(value minute|minutes|hour|hours|day|days)` (first fire one interval after it is set)"
)
# Context attributes that EventBridge Scheduler fills into a target's input on each invocation.
SCHEDULED_TIME_ATTRIBUTE = "<aws.scheduler.scheduled-time>"
EXECUTION_ID_ATTRIBUTE = "<aws.scheduler.execution-id>"
ATTEMPT_NUMBER_ATTRIBUTE = "<aws.scheduler.attempt-number>"


class CreateScheduleRequest(EnqueueRunRequest):
    """A job template (the run it enqueues: the fields of ``POST /runs``) and when to enqueue it."""

    name: str = Field(pattern=KEY_NAME, description="what the schedule is for, e.g. 'nightly report'")
    expression: str = Field(min_length=1, max_length=256, description=SCHEDULE_EXPRESSION_DOC)
    timezone: str = Field(
        default="UTC", min_length=1, max_length=64, description="IANA time zone the expression is read in"
    )
    enabled: bool = True
    # A schedule's run may be offset from its fire by an SQS delay (at most 15 minutes: a later run is a later
    # fire); a fixed not_before makes no sense for a run that recurs.
    delay_seconds: int | None = Field(
        default=None,
        ge=0,
        le=SQS_MAX_DELAY_SECONDS,
        description="each run starts no earlier than this many seconds after its fire (at most 900)",
    )

    @field_validator("not_before")
    @classmethod
    def _no_fixed_time(cls, value: datetime | None) -> datetime | None:
        if value is not None:
            raise ValueError("a schedule's runs recur: give delay_seconds (after each fire), not not_before")
        return value

    def run_request(self) -> EnqueueRunRequest:
        """The run each fire enqueues."""
        return EnqueueRunRequest.model_validate(self.model_dump(include=set(EnqueueRunRequest.model_fields)))


class UpdateScheduleRequest(Strict):
    """``PATCH /schedules/{id}``: the fields given change, the others stay. Null leaves a field as it is, except
    ``version``, where null means "the newest version the environment's pin allows"."""

    name: str | None = Field(default=None, pattern=KEY_NAME)
    config: dict[str, Any] | None = None
    version: PackageVersion | None = None
    timeout_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    tags: Tags | None = None
    expression: str | None = Field(default=None, min_length=1, max_length=256, description=SCHEDULE_EXPRESSION_DOC)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    enabled: bool | None = None
    delay_seconds: int | None = Field(
        default=None, ge=0, le=SQS_MAX_DELAY_SECONDS, description="0: each run starts at its fire"
    )


class ScheduleView(BaseModel):
    id: str
    name: str
    package: str
    job: str
    config: dict[str, Any]
    environment: str
    version: str | None = Field(description="the version each run gets; null: the newest the pin allows then")
    timeout_seconds: int
    max_attempts: int
    tags: dict[str, str] = Field(default_factory=dict, description="each run's tags")
    delay_seconds: int | None = Field(default=None, description="each run starts this long after its fire")
    expression: str = Field(description="as EventBridge Scheduler has it (canonical spelling)")
    timezone: str
    enabled: bool
    next_fire_times: list[datetime] = Field(description="the next times it fires (at most 5; none when disabled)")
    created_at: datetime
    created_by: str = Field(description="the API key that created it")
    updated_at: datetime
    last_fired_at: datetime | None = Field(
        default=None, description="the scheduled time of the last fire that enqueued a run"
    )
    last_run_id: str | None = Field(default=None, description="the run that fire enqueued")
    last_error: str | None = Field(
        default=None,
        description="why the last fire enqueued nothing (e.g. the package version no longer resolves); cleared by "
        "the next fire that enqueues",
    )
    last_error_at: datetime | None = None


class ScheduleList(BaseModel):
    items: list[ScheduleView]


class ScheduleFire(BaseModel):
    """What EventBridge Scheduler sends the fire function: the target's input (``schedule_input``) with the
    context attributes filled in. ``scheduled_time`` makes each fire idempotent: a retried invocation carries it
    again and enqueues nothing more."""

    schedule_id: str = Field(pattern=SCHEDULE_ID)
    scheduled_time: datetime
    execution_id: str | None = None
    attempt: int | None = Field(default=None, ge=1)

    @staticmethod
    def input_template(schedule_id: str) -> str:
        """The target input a schedule is created with; EventBridge Scheduler substitutes the attributes."""
        return json.dumps(
            {
                "schedule_id": schedule_id,
                "scheduled_time": SCHEDULED_TIME_ATTRIBUTE,
                "execution_id": EXECUTION_ID_ATTRIBUTE,
                "attempt": ATTEMPT_NUMBER_ATTRIBUTE,
            }
        )


class RunTimerFire(BaseModel):
    """What a delayed run's one-time timer (an ``at(...)`` schedule named after the run, ``functions.dal.schedules
    .RunTimers``) sends the fire function: the run's id, and the scheduled time as for a schedule's fire."""

    run_id: str = Field(pattern=r"^run_[A-Za-z0-9_-]{1,59}$")
    scheduled_time: datetime
    execution_id: str | None = None
    attempt: int | None = Field(default=None, ge=1)

    @staticmethod
    def input_template(run_id: str) -> str:
        """The target input a run's timer is created with; EventBridge Scheduler substitutes the attributes."""
        return json.dumps(
            {
                "run_id": run_id,
                "scheduled_time": SCHEDULED_TIME_ATTRIBUTE,
                "execution_id": EXECUTION_ID_ATTRIBUTE,
                "attempt": ATTEMPT_NUMBER_ATTRIBUTE,
            }
        )


# ---------------------------------------------------------------- batch enqueue (POST /runs/batch)

MAX_BATCH_RUNS = 100


class EnqueueBatchItem(EnqueueRunRequest):
    """One run of a batch: the body of ``POST /runs``, plus that request's Idempotency-Key header as a field."""

    idempotency_key: str | None = Field(
        default=None,
        pattern=IDEMPOTENCY_KEY,
        description="as the Idempotency-Key header of POST /runs: the same key and run give the same run (24 h, "
        "per API key); a key POST /runs used names the same run here, and the other way round",
    )

    def run_request(self) -> EnqueueRunRequest:
        """The run this item asks for, without its key: what the key's fingerprint covers, as for POST /runs."""
        return EnqueueRunRequest.model_validate(self.model_dump(exclude={"idempotency_key"}))


class EnqueueBatchRequest(Strict):
    runs: list[EnqueueBatchItem] = Field(
        min_length=1,
        max_length=MAX_BATCH_RUNS,
        description=f"1 to {MAX_BATCH_RUNS} runs, every one checked before any is recorded",
    )


class EnqueueBatchResponse(BaseModel):
    runs: list[RunView] = Field(description="the runs, in the order of the request")


# ---------------------------------------------------------------- variables and secrets of an environment
# Stored in SSM Parameter Store (runly_core.resources: VALUE_NAME, MAX_VALUE_BYTES); a job names those it needs in its
# manifest (JobSpec.variables, JobSpec.secrets) and gets them as environment variables of its process.


class ValueRequest(Strict):
    value: str = Field(
        min_length=1,
        description=f"the value: UTF-8 text of 1 to {MAX_VALUE_BYTES} bytes, no NUL character (it becomes an"
        " environment variable of the job process)",
    )


class VariableView(BaseModel):
    """A variable: a plain value, readable by every key that may read the environment."""

    environment: str
    name: str
    value: str
    version: int = Field(description="SSM's version of the parameter: 1 when created, +1 on each change")
    updated_at: datetime


class VariableList(BaseModel):
    items: list[VariableView] = Field(description="by name")


class SecretView(BaseModel):
    """A secret, as the API shows it: never its value (only the job process that declares it gets that)."""

    environment: str
    name: str
    version: int = Field(description="SSM's version of the parameter: 1 when created, +1 on each change")
    updated_at: datetime


class SecretList(BaseModel):
    items: list[SecretView] = Field(description="by name")
