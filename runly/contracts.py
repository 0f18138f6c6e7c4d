"""Wire contracts shared by the API functions, the node agent, the SDK and the CLI.

Everything that crosses a process boundary (HTTP bodies, SQS messages, the
package manifest, the job process channel) is one of these models.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from packaging.version import InvalidVersion, Version
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from runly.resources import ENVIRONMENT_NAME

PACKAGE_NAME = r"^[a-z0-9]([a-z0-9._-]{0,98}[a-z0-9])?$"
JOB_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"
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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    PACKAGE_ERROR = "package_error"  # download, verification or install failed: not retried
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


# ---------------------------------------------------------------- packages


class JobSpec(Strict):
    name: str = Field(pattern=JOB_NAME, description="the job's name within its package")
    entry_point: str = Field(description="module:Class of the job")
    config_schema: dict[str, Any] = Field(description="JSON schema of the job's config")
    default_config: dict[str, Any] | None = Field(
        default=None, description="the config with every default filled in, or null when some field is required"
    )


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


class AttemptView(BaseModel):
    number: int
    node_id: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: RunState | None = None
    reason: FailureReason | None = None
    error: str | None = None


class Progress(BaseModel):
    """Counts of a run's items; ``total`` is known when the items are countable."""

    total: int | None = None
    succeeded: int = 0
    failed: int = 0
    failed_by_category: dict[str, int] = Field(default_factory=dict)
    message: str | None = None


class Checkpoint(BaseModel):
    """Durable progress of a run. Every item before ``watermark`` (a count, in the job's stable item
    order) is done; ``state`` is the job's own blob. A resumed attempt starts from it."""

    watermark: int | None = Field(default=None, ge=0)
    last_item_id: str | None = None
    state: Any = None
    attempt: int = Field(ge=1)
    written_at: datetime


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


# ---------------------------------------------------------------- job process channel


class RunSpec(BaseModel):
    """What the agent hands the job process (a JSON file named by RUNLY_RUN_SPEC).

    Job -> agent messages go, one JSON line each, to the fd in RUNLY_CHANNEL_FD;
    the agent answers checkpoints with an AckMessage line on the fd in RUNLY_ACK_FD.
    """

    run_id: str
    attempt: int
    package: str
    version: str
    job: str
    entry_point: str
    config: dict[str, Any]
    checkpoint: Checkpoint | None = Field(default=None, description="where a resumed attempt starts")


class ProgressMessage(BaseModel):
    """Latest counts; the agent keeps only the newest and writes it on its heartbeat (coalesced)."""

    kind: Literal["progress"] = "progress"
    progress: Progress


class CheckpointMessage(BaseModel):
    """Asks the agent to write a checkpoint now; the job waits for the AckMessage with the same ``seq``."""

    kind: Literal["checkpoint"] = "checkpoint"
    seq: int
    watermark: int | None = Field(default=None, ge=0)
    last_item_id: str | None = None
    state: Any = None


class AckMessage(BaseModel):
    """The agent's answer to a checkpoint: ``ok`` false means the lease is lost and the job must stop."""

    kind: Literal["ack"] = "ack"
    seq: int
    ok: bool
    error: str | None = None


class ResultMessage(BaseModel):
    kind: Literal["result"] = "result"
    output: Any = None


class ErrorMessage(BaseModel):
    kind: Literal["error"] = "error"
    type: str
    message: str
    traceback: str


ChannelMessage = Annotated[
    ResultMessage | ErrorMessage | ProgressMessage | CheckpointMessage, Field(discriminator="kind")
]
