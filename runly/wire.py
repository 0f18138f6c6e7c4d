"""The contracts of the job process channel: what the agent hands a job process and the messages
between them, plus the models the job SDK itself uses (progress, checkpoints, a job's spec).

They live apart from :mod:`runly_core.contracts`, which re-exports every name here, because a job
process imports only these: building all the API's models (and importing what their validators
need) took a large share of a job process's start-up, which is most of a dispatch.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runly.limits import MAX_JOB_VALUES, value_name_problem

__all__ = [
    "JOB_NAME",
    "AckMessage",
    "AgentMessage",
    "ChannelMessage",
    "Checkpoint",
    "CheckpointMessage",
    "ErrorMessage",
    "HelloMessage",
    "JobSpec",
    "LeaseMessage",
    "Progress",
    "ProgressMessage",
    "ResultMessage",
    "RunSpec",
    "Strict",
]

JOB_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"

# The job process's environment variables that carry the run to it (the agent and `runly run-local` set them; the
# job process's runner reads them): the RunSpec's JSON file, the job -> agent channel's fd, the agent -> job fd.
SPEC_ENV = "RUNLY_RUN_SPEC"
CHANNEL_ENV = "RUNLY_CHANNEL_FD"
ACK_ENV = "RUNLY_ACK_FD"
# The run's W3C trace context (runly.tracing), whose parent is the agent's span of the job's run: the name
# OpenTelemetry's proposal for environment-variable carriers uses, so tools the job starts continue the trace too.
TRACEPARENT_ENV = "TRACEPARENT"


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
    variables: list[str] = Field(
        default_factory=list,
        max_length=MAX_JOB_VALUES,
        description="names of the environment's variables the job gets as environment variables of its process",
    )
    secrets: list[str] = Field(
        default_factory=list,
        max_length=MAX_JOB_VALUES,
        description="names of the environment's secrets the job gets as environment variables of its process (a run"
        " fails before the job starts when one is missing)",
    )

    @model_validator(mode="after")
    def _value_names(self) -> JobSpec:
        names = [*self.variables, *self.secrets]
        if len(names) > MAX_JOB_VALUES:
            raise ValueError(f"a job declares at most {MAX_JOB_VALUES} variables and secrets together")
        for field_name in ("variables", "secrets"):
            for name in getattr(self, field_name):
                problem = value_name_problem(name)
                if problem is not None:
                    raise ValueError(f"{field_name}: {name!r} {problem}")
        if len(set(names)) != len(names):
            raise ValueError("a name is declared twice (among variables and secrets: each is one environment variable)")
        return self


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


class LeaseMessage(BaseModel):
    """agent -> job: how long this attempt holds its run (runly.fencing). Sent in the run spec as of the claim, then
    on the ack pipe after every renewal the agent wrote durably (once the job sent a HelloMessage).

    ``deadline_monotonic`` is the lease's end on this node's CLOCK_MONOTONIC (Python's ``time.monotonic()``), the
    clock every process of the machine shares: an instant, not a duration, so a message read late (a frozen agent,
    a slow start) names the same deadline, and no wall-clock step moves it. The job must be gone by
    ``deadline_monotonic - margin_seconds`` (``stop_at``): the margin covers the clock skew between nodes that the
    lease protocol allows (node_agent.aws.FENCE_MARGIN_MS); a takeover waits as long past the lease's end.
    """

    kind: Literal["lease"] = "lease"
    deadline_monotonic: float
    margin_seconds: float = Field(ge=0)

    @property
    def stop_at(self) -> float:
        return self.deadline_monotonic - self.margin_seconds


class RunSpec(BaseModel):
    """What the agent hands the job process (a JSON file named by RUNLY_RUN_SPEC).

    Job -> agent messages go, one JSON line each, to the fd in RUNLY_CHANNEL_FD;
    the agent answers checkpoints with an AckMessage line on the fd in RUNLY_ACK_FD, where it also sends
    LeaseMessages once the job said HelloMessage (only a job that hears them may be sent them: a bundle embeds the
    SDK it was packed with, which may be older than the agent).
    """

    run_id: str
    attempt: int
    package: str
    version: str
    job: str
    entry_point: str
    config: dict[str, Any]
    checkpoint: Checkpoint | None = Field(default=None, description="where a resumed attempt starts")
    lease: LeaseMessage | None = Field(
        default=None, description="the lease as of the claim; present when the agent sends renewals (runly.fencing)"
    )


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


class HelloMessage(BaseModel):
    """job -> agent, first on the channel of a job whose spec has a lease: send me every renewal (LeaseMessage)."""

    kind: Literal["hello"] = "hello"


class ResultMessage(BaseModel):
    kind: Literal["result"] = "result"
    output: Any = None


class ErrorMessage(BaseModel):
    kind: Literal["error"] = "error"
    type: str
    message: str
    traceback: str


ChannelMessage = Annotated[
    ResultMessage | ErrorMessage | ProgressMessage | CheckpointMessage | HelloMessage, Field(discriminator="kind")
]
"""job -> agent."""

AgentMessage = Annotated[AckMessage | LeaseMessage, Field(discriminator="kind")]
"""agent -> job, on the ack pipe."""
