"""The agent's settings: environment variables (RUNLY_*) or a .env-style file, validated at start.

A plain pydantic model filled by ``AgentSettings.load``, not pydantic-settings: that package and the source
providers it imports cost an idle agent about 9 MB of its memory, for reading a few strings.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from runly_core.resources import (
    FENCE_MARGIN_MS,
    LEASE_MARGIN_MS,
    MESSAGE_IN_FLIGHT_LIMIT_SECONDS,
    SQS_MAX_IN_FLIGHT_SECONDS,
    values_path_of_table,
)

ENV_PREFIX = "RUNLY_"


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class _SettingsConfig(ConfigDict, total=False):
    env_prefix: str  # where each setting is read from: ENV_PREFIX + its name, in any case


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (``export`` before the key, quotes around the value and ``#`` comments allowed).

    A file that does not exist reads as empty, as it did with pydantic-settings: the settings it would have
    given are then reported missing.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()  # a comment after an unquoted value
        values[key.strip()] = value
    return values


class AgentSettings(BaseModel):
    # Errors name the setting and why, not the values given: a whole-model error would print the node key.
    model_config = _SettingsConfig(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    environment: str = Field(default="default", description="the environment this node joins")
    queue_url: str = Field(description="URL of the environment's run queue")
    table_name: str
    feed_bucket: str
    values_path: str | None = Field(
        default=None,
        pattern=r"^/[A-Za-z0-9_.-]{1,64}$",
        description="the SSM path of the deployment's variables and secrets (default: the one table_name implies,"
        " /runly-{stage} for runly-{stage}-store)",
    )
    node_id: str = Field(default_factory=_default_node_id)
    api_url: str | None = Field(default=None, description="the runly API; with node_key, the source of AWS credentials")
    node_key: SecretStr | None = Field(
        default=None, description="a node-scoped API key: exchanged for short-lived AWS credentials (on-premises nodes)"
    )
    region: str | None = Field(default=None, description="AWS region (defaults to the AWS SDK's own settings)")
    capacity: int = Field(default=2, ge=1, le=256, description="runs at once")
    lease_seconds: int = Field(default=60, ge=2, le=43200)
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    poll_wait_seconds: int = Field(default=20, ge=0, le=20, description="SQS long-poll wait")
    kill_grace_seconds: float = Field(default=10.0, ge=0)
    drain_timeout_seconds: int = Field(
        default=3600, ge=0, description="on a first stop signal, how long running jobs may take before they are stopped"
    )
    idle_refresh_seconds: float = Field(
        default=600.0,
        gt=0,
        description="while the node runs nothing, how often it rewrites its node record (else every heartbeat)",
    )
    retry_base_seconds: int = Field(default=5, ge=0, description="first retry delay; doubles per attempt")
    retry_max_seconds: int = Field(default=900, ge=0, le=43200)
    max_in_flight_seconds: int = Field(
        default=MESSAGE_IN_FLIGHT_LIMIT_SECONDS,
        ge=4,
        le=SQS_MAX_IN_FLIGHT_SECONDS,
        description="how long a run's message is kept before it is replaced by a fresh one (SQS's in-flight cap"
        " is 12 hours from a receipt; lowered only by tests)",
    )
    work_dir: Path = Field(default=Path.home() / ".cache" / "runly" / "node")
    package_cache_dir: Path | None = Field(
        default=None, description="where package environments live; default work_dir/packages"
    )
    cache_budget_bytes: int = Field(default=5 * 1024**3, gt=0)
    warm_hosts: bool = Field(
        default=True,
        description="fork each run from a warm host process of its package version (false: a new interpreter per run)",
    )
    max_warm_hosts: int = Field(
        default=4, ge=1, le=64, description="warm hosts kept at once (the least recently used stops first)"
    )
    warm_host_idle_seconds: float = Field(
        default=600.0, gt=0, description="a warm host that started no run for this long is stopped"
    )
    memory_limit_bytes: int = Field(
        default=4 * 1024**3,
        ge=64 * 1024**2,
        description="a run's memory limit (a job's memory_limit_mb may lower it, never raise it)",
    )
    pids_limit: int = Field(
        default=4096, ge=8, description="a run's process limit (a job's max_processes may lower it, never raise it)"
    )
    job_user: str = Field(
        default="runly-job",
        description="the unprivileged user job processes run as (empty: the agent's own user, which exposes it)",
    )

    @property
    def values_root(self) -> str:
        return self.values_path or values_path_of_table(self.table_name)

    @classmethod
    def load(cls, env_file: Path | None = None, environ: Mapping[str, str] | None = None) -> AgentSettings:
        """The settings from ``RUNLY_*`` environment variables, then ``env_file``; raises ValidationError."""
        found: dict[str, Any] = {}
        # The file first, so that an environment variable wins over it; names in any case, as before.
        for source in (read_env_file(env_file) if env_file else {}, os.environ if environ is None else environ):
            for key, value in source.items():
                name = key.lower()
                if name.startswith(ENV_PREFIX.lower()) and name[len(ENV_PREFIX) :] in cls.model_fields:
                    found[name[len(ENV_PREFIX) :]] = value
        return cls.model_validate(found)

    @model_validator(mode="after")
    def _node_key_needs_api(self) -> AgentSettings:
        if self.node_key is not None and not self.api_url:
            raise ValueError("node_key needs api_url: the key is exchanged there for AWS credentials")
        return self

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> AgentSettings:
        # Several heartbeats must fit in a lease, or one slow beat would lose it.
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be at most half"
                f" of lease_seconds ({self.lease_seconds})"
            )
        # A job stops itself the two margins before its lease ends (runly.fencing): a renewal must reach it first.
        margins = (LEASE_MARGIN_MS + FENCE_MARGIN_MS) / 1000
        if self.lease_seconds - margins <= self.heartbeat_seconds:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds}) must exceed heartbeat_seconds ({self.heartbeat_seconds}) by more"
                f" than {margins:g} s: a job stops itself that long before its lease ends, unless renewed"
            )
        return self

    @model_validator(mode="after")
    def _lease_inside_in_flight_limit(self) -> AgentSettings:
        # A message is replaced once a full lease no longer fits before its limit: a limit under two leases
        # would replace every message about as soon as it arrives.
        if self.max_in_flight_seconds < 2 * self.lease_seconds:
            raise ValueError(
                f"max_in_flight_seconds ({self.max_in_flight_seconds}) must be at least twice"
                f" lease_seconds ({self.lease_seconds})"
            )
        return self
