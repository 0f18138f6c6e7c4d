"""The agent's settings: environment variables (RUNLY_*) or a .env-style file, validated at start."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNLY_", env_file=None, extra="ignore")

    environment: str = Field(default="default", description="the environment this node joins")
    queue_url: str = Field(description="URL of the environment's run queue")
    table_name: str
    feed_bucket: str
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
    retry_base_seconds: int = Field(default=5, ge=0, description="first retry delay; doubles per attempt")
    retry_max_seconds: int = Field(default=900, ge=0, le=43200)
    work_dir: Path = Field(default=Path.home() / ".cache" / "runly" / "node")
    package_cache_dir: Path | None = Field(
        default=None, description="where package environments live; default work_dir/packages"
    )
    cache_budget_bytes: int = Field(default=5 * 1024**3, gt=0)

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
        return self
