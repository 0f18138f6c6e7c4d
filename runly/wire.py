"""The contracts of the job process channel: what the agent hands a job process and the messages
between them, plus the models the job SDK itself uses (progress, checkpoints, a job's spec).

They live apart from :mod:`runly.contracts`, which re-exports every name here, because a job
process imports only these: building all the API's models (and importing what their validators
need) took a large share of a job process's start-up, which is most of a dispatch.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "JOB_NAME",
    "AckMessage",
    "ChannelMessage",
    "Checkpoint",
    "CheckpointMessage",
    "ErrorMessage",
    "JobSpec",
    "Progress",
    "ProgressMessage",
    "ResultMessage",
    "RunSpec",
    "Strict",
]

JOB_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSpec(Strict):
    name: str = Field(pattern=JOB_NAME, description="the job's name within its package")
    entry_point: str = Field(description="module:Class of the job")
    config_schema: dict[str, Any] = Field(description="JSON schema of the job's config")
    default_config: dict[str, Any] | None = Field(
        default=None, description="the config with every default filled in, or null when some field is required"
    )
    memory_limit_mb: int | None = Field(
        default=None,
        ge=16,
        le=1 << 24,
        description="the most memory a run of this job may use, in MiB (null: the node's limit; never above it)",
    )
    max_processes: int | None = Field(
        default=None,
        ge=1,
        le=1 << 22,
        description="the most processes a run of this job may have at once (null: the node's limit; never above it)",
    )


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
    """The agent's answer to a checkpoint: ``ok`` false means the lease is lost and the job must stop, or, with a
    ``reason`` (``checkpoint_too_large``), that the checkpoint is over its limit and the run fails for it."""

    kind: Literal["ack"] = "ack"
    seq: int
    ok: bool
    error: str | None = None
    reason: str | None = None


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
