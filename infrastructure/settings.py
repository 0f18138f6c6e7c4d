"""Stage settings: the `stages` block of cdk.json, selected with `-c stage=<name>`, as one typed model."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import aws_cdk as cdk
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runly_core.resources import ResourceNames

DEFAULT_STAGE = "dev"

RunEventsMode = Literal["all", "terminal", "off"]


class AlarmSettings(BaseModel):
    """Alarms always exist (they cost cents); where their notifications go is the operator's choice."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # An encrypted SNS topic that every alarm notifies (ALARM and OK); emails are subscribed to it (each address
    # confirms by mail). Without a topic the alarms only show in the console and on the dashboard.
    topic: bool = False
    emails: tuple[str, ...] = ()
    # A run's message stays in its queue (received, not visible) for as long as the run runs, so the age of the
    # oldest message is at least the age of the longest running run: set this above the longest run you expect.
    oldest_message_age_seconds: int = Field(default=3600, ge=60)
    # 5xx answers of the API in 5 minutes (503 is what the API answers when a dependency throttles).
    api_server_errors: int = Field(default=5, ge=1)

    @field_validator("emails")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            local, at, domain = address.partition("@")
            if not (local and at and "." in domain):
                raise ValueError(f"{address!r} is not an email address")
        return value

    @property
    def notify(self) -> bool:
        return self.topic or bool(self.emails)


class NodeGroupSettings(BaseModel):
    """The EC2 nodes of one environment: one Auto Scaling group."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str = "t3.small"
    min_nodes: int = Field(default=0, ge=0)  # 0: no instance (and no cost) while the queue is empty
    max_nodes: int = Field(default=2, ge=1, le=100)
    runs_per_node: int = Field(default=2, ge=1, le=256)  # the agent's capacity, and the scaling target per node
    volume_gib: int = Field(default=30, ge=8, le=1024)  # package environments are cached on it

    @model_validator(mode="after")
    def _min_within_max(self) -> NodeGroupSettings:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) exceeds max_nodes ({self.max_nodes})")
        return self


# A node being scaled in drains for `drain_timeout_seconds` (the agent's own deadline: then it checkpoints, stops
# its jobs and hands their runs back), systemd allows it that plus DRAIN_STOP_MARGIN_SECONDS before SIGKILL, and
# the lifecycle hook waits that plus DRAIN_HOOK_MARGIN_SECONDS; Auto Scaling lets a hook wait at most 7200 s.
DRAIN_STOP_MARGIN_SECONDS = 60
DRAIN_HOOK_MARGIN_SECONDS = 300
LIFECYCLE_HOOK_MAX_SECONDS = 7200
MAX_DRAIN_SECONDS = LIFECYCLE_HOOK_MAX_SECONDS - DRAIN_STOP_MARGIN_SECONDS - DRAIN_HOOK_MARGIN_SECONDS


class FleetSettings(BaseModel):
    """Optional EC2 nodes, in a small VPC of their own; absent from a stage unless it declares `fleet`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    environments: dict[str, NodeGroupSettings] = Field(min_length=1)
    # The agent's wheels (file names under the feed's agent/ prefix: runly-agent, runly-core and the runly SDK, as
    # `make dist` builds them), installed together with their other dependencies from PyPI at boot.
    agent_wheels: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+!-]+\.whl$")]] = Field(min_length=1, max_length=10)
    vpc_cidr: str = "10.80.0.0/22"
    # How long a node being scaled in lets its running runs finish (RUNLY_DRAIN_TIMEOUT_SECONDS of the agent).
    drain_timeout_seconds: int = Field(default=3600, ge=60, le=MAX_DRAIN_SECONDS)

    @field_validator("vpc_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        network = ipaddress.IPv4Network(value)  # ValueError names the mistake
        if network.prefixlen > 23:
            raise ValueError(f"{value} is too small for two /24 subnets")
        return value


class StageSettings(BaseModel):
    """One deployment (stage) of runly. Names are validated by `ResourceNames` when the stack is built."""

    # A misspelt key in cdk.json must fail the synth, not be silently ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str
    environments: tuple[str, ...] = ("default",)
    account: str | None = None
    region: str | None = None
    # False (`-c bundle=false`) ships only the source, without installing the runtime dependencies:
    # fast, for tests and quick synths. A deployable asset needs True.
    bundle_dependencies: bool = True
    # API Gateway stage throttling; HTTP API has no per-client keys yet, so this protects the table and the bill.
    api_throttle_rate_limit: float = Field(default=50, gt=0)
    api_throttle_burst_limit: int = Field(default=100, gt=0)
    alarms: AlarmSettings = AlarmSettings()
    fleet: FleetSettings | None = None
    # Which run state changes are published as EventBridge events (docs/events.md): every state a run enters,
    # only the terminal ones (one event per run, the default), or none (no bus, no publisher, no stream mapping).
    run_events: RunEventsMode = "terminal"

    @model_validator(mode="after")
    def _fleet_joins_known_environments(self) -> StageSettings:
        if self.fleet is not None:
            unknown = sorted(set(self.fleet.environments) - set(self.environments))
            if unknown:
                raise ValueError(f"fleet environments {unknown} are not environments of stage {self.stage!r}")
        return self

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> StageSettings:
        """Build from CDK context values: `stage`, `stages` (from cdk.json) and the optional `bundle` flag."""
        stage = context.get("stage") or DEFAULT_STAGE
        stages = context.get("stages") or {}
        if stage not in stages:
            raise ValueError(
                f"stage {stage!r} is not declared in the cdk.json context 'stages' (known: {sorted(stages)})"
            )
        values: dict[str, Any] = {**stages[stage], "stage": stage}
        if context.get("bundle") is not None:
            # `-c bundle=false` arrives as the string "false"; pydantic parses it.
            values["bundle_dependencies"] = context["bundle"]
        return cls.model_validate(values)

    def cdk_environment(self) -> cdk.Environment | None:
        """The stack's target; None (environment-agnostic) unless cdk.json names the account or region."""
        if self.account is None and self.region is None:
            return None
        return cdk.Environment(account=self.account, region=self.region)

    def resource_names(self, *, account: str, region: str) -> ResourceNames:
        return ResourceNames(stage=self.stage, account=account, region=region, environments=self.environments)
