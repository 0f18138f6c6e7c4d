"""The items of the DynamoDB table, as both the API functions and the node agent
read and write them: one shape, one key layout.

JSON payloads (config, output, error) are stored as JSON strings so that floats
and nested values round-trip exactly (DynamoDB numbers would come back as Decimal).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from runly.contracts import AttemptView, JobSpec, PackageVersionView, Progress, RunError, RunState, RunView
from runly.resources import PARTITION_KEY, RUNS_BY_ENVIRONMENT, RUNS_BY_LEASE, SORT_KEY

LEASED = "LEASED"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_key(run_id: str) -> dict[str, str]:
    return {PARTITION_KEY: f"RUN#{run_id}", SORT_KEY: "RUN"}


def checkpoint_key(run_id: str) -> dict[str, str]:
    """The run's last checkpoint: its own item, so the run item stays small; written only by the lease holder."""
    return {PARTITION_KEY: f"RUN#{run_id}", SORT_KEY: "CHECKPOINT"}


def package_key(name: str, version: str) -> dict[str, str]:
    return {PARTITION_KEY: f"PKG#{name}", SORT_KEY: f"VER#{version}"}


def package_partition(name: str) -> str:
    return f"PKG#{name}"


def lease_sort_key(lease_until_ms: int) -> str:
    # Zero-padded so that string order is time order in the lease index.
    return f"{lease_until_ms:015d}"


class RunRecord(BaseModel):
    """A run item. ``attempt`` is the fencing token: the number of the attempt that holds the lease."""

    run_id: str
    state: RunState
    package: str
    version: str
    job: str
    entry_point: str
    environment: str
    config_json: str
    timeout_seconds: int
    max_attempts: int
    bundle_key: str
    bundle_sha256: str
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    attempt: int = 0
    lease_owner: str | None = None
    lease_until_ms: int | None = None
    attempts: list[AttemptView] = Field(default_factory=list)
    output_json: str | None = None
    error_json: str | None = None
    progress_json: str | None = None  # latest Progress, written by the agent's heartbeat
    requeued_from: str | None = None  # the run this one was requeued from

    def to_item(self) -> dict[str, Any]:
        item = self.model_dump(mode="json", exclude_none=True)
        item.update(run_key(self.run_id))
        item[RUNS_BY_ENVIRONMENT.partition_key] = f"ENV#{self.environment}"
        item[RUNS_BY_ENVIRONMENT.sort_key] = f"{self.created_at}#{self.run_id}"
        if self.lease_until_ms is not None and not self.state.terminal:
            item[RUNS_BY_LEASE.partition_key] = LEASED
            item[RUNS_BY_LEASE.sort_key] = lease_sort_key(self.lease_until_ms)
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> RunRecord:
        return cls.model_validate(item)

    def view(self) -> RunView:
        return RunView(
            id=self.run_id,
            state=self.state,
            package=self.package,
            version=self.version,
            job=self.job,
            environment=self.environment,
            config=json.loads(self.config_json),
            timeout_seconds=self.timeout_seconds,
            max_attempts=self.max_attempts,
            created_at=datetime.fromisoformat(self.created_at),
            started_at=datetime.fromisoformat(self.started_at) if self.started_at else None,
            finished_at=datetime.fromisoformat(self.finished_at) if self.finished_at else None,
            attempts=self.attempts,
            output=json.loads(self.output_json) if self.output_json is not None else None,
            error=RunError.model_validate_json(self.error_json) if self.error_json else None,
            progress=Progress.model_validate_json(self.progress_json) if self.progress_json else None,
        )


class PackageRecord(BaseModel):
    name: str
    version: str
    sha256: str
    size: int
    key: str
    requires_python: str | None = None
    jobs_json: str
    created_at: str

    def to_item(self) -> dict[str, Any]:
        item = self.model_dump(mode="json", exclude_none=True)
        item.update(package_key(self.name, self.version))
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> PackageRecord:
        return cls.model_validate(item)

    @property
    def jobs(self) -> list[JobSpec]:
        return [JobSpec.model_validate(job) for job in json.loads(self.jobs_json)]

    def view(self) -> PackageVersionView:
        return PackageVersionView(
            name=self.name,
            version=self.version,
            sha256=self.sha256,
            size=self.size,
            key=self.key,
            requires_python=self.requires_python,
            jobs=self.jobs,
            created_at=datetime.fromisoformat(self.created_at),
        )


def node_key(node_id: str) -> dict[str, str]:
    return {PARTITION_KEY: f"NODE#{node_id}", SORT_KEY: "NODE"}


class NodeRecord(BaseModel):
    """A node's registration, kept fresh by its heartbeat; DynamoDB TTL removes a dead node's record."""

    node_id: str
    host: str
    environment: str
    capacity: int
    running: list[str] = Field(default_factory=list)
    agent_version: str
    state: str
    started_at: str
    last_seen: str
    expires_at: int  # epoch seconds: the table's TTL attribute
    drain_requested: bool = False  # set by the API (drain a node); the agent reads it on its heartbeat

    def to_item(self) -> dict[str, Any]:
        item = self.model_dump(mode="json")
        item.update(node_key(self.node_id))
        return item
