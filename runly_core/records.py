"""The items of the DynamoDB table, as both the API functions and the node agent
read and write them: one shape, one key layout. A run item's keys, index attributes and
every write to it are the run store's (runly_core.run_store).

JSON payloads (config, output, error) are stored as JSON strings so that floats
and nested values round-trip exactly (DynamoDB numbers would come back as Decimal).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, Field, computed_field, field_validator

from runly.tracing import TraceParent
from runly.wire import JobSpec, Progress
from runly_core.contracts import (
    AttemptView,
    KeyView,
    PackageVersionView,
    Pin,
    RunError,
    RunState,
    RunView,
    ScheduleView,
    Scope,
)
from runly_core.resources import (
    ENVIRONMENT_NAME,
    ITEMS_BY_KIND,
    PARTITION_KEY,
    RUNS_PREFIX,
    SORT_KEY,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- the environment in the keys (docs/store.md)
# Every item a node may touch lives under a partition key that starts with its environment, ``ENV#{environment}#``,
# so IAM can bound a node's credentials to one environment (dynamodb:LeadingKeys, functions.nodes.policy). Environment
# names match runly_core.resources.ENVIRONMENT_NAME: no "#", "_", "*" or "?", so "ENV#{name}#" prefixes exactly that
# environment's items and no pattern built from a name matches another's.
ENVIRONMENT_PREFIX = "ENV#"
NODE_PARTITION = "NODE#"
# ``run_{environment}_{unique}``: the id names its environment, so the API finds a run's item from the id alone.
# An environment name holds no "_", so the first "_" after "run_" ends it: no two environments share an id.
RUN_ID = re.compile(r"run_(?P<environment>[a-z][a-z0-9-]{0,30})_(?P<unique>[0-9A-Za-z_-]{1,64})")
assert ENVIRONMENT_NAME.pattern == r"^[a-z][a-z0-9-]{0,30}$", "RUN_ID embeds the environment name pattern"


class MalformedRunId(ValueError):
    """A run id that no run can have (not ``run_{environment}_{unique}``)."""


def run_environment(run_id: str) -> str:
    """The environment a run id names; MalformedRunId if it is not a run id."""
    match = RUN_ID.fullmatch(run_id)
    if match is None:
        raise MalformedRunId(f"{run_id[:80]!r} is not a run id (run_<environment>_<unique>)")
    return match["environment"]


def is_run_id(value: str) -> bool:
    return RUN_ID.fullmatch(value) is not None


def environment_prefix(environment: str) -> str:
    """``ENV#{environment}#``: what every partition key of the environment's items starts with."""
    return f"{ENVIRONMENT_PREFIX}{environment}#"


def environment_of_partition(partition: str) -> str | None:
    """The environment of an ``ENV#{environment}#...`` partition key (None for any other key)."""
    if not partition.startswith(ENVIRONMENT_PREFIX):
        return None
    name, sep, _ = partition[len(ENVIRONMENT_PREFIX) :].partition("#")
    return name if sep and ENVIRONMENT_NAME.match(name) else None


def run_objects_prefix(run_id: str) -> str:
    """Where a run's objects go in the feed bucket: ``runs/{environment}/{run_id}/`` (its logs, its output and
    checkpoints beyond their inline sizes: runly_core.run_objects), so a node's credentials can be bounded to its
    environment's runs by prefix."""
    return f"{environment_runs_prefix(run_environment(run_id))}{run_id}/"


def run_log_prefix(run_id: str, attempt: int) -> str:
    """Where an attempt's log chunks go: ``runs/{environment}/{run_id}/logs/{attempt:04d}/``."""
    return f"{run_objects_prefix(run_id)}logs/{attempt:04d}/"


def environment_runs_prefix(environment: str) -> str:
    return f"{RUNS_PREFIX}{environment}/"


def package_key(name: str, version: str) -> dict[str, str]:
    return {PARTITION_KEY: f"PKG#{name}", SORT_KEY: f"VER#{version}"}


def package_partition(name: str) -> str:
    return f"PKG#{name}"


class ObjectRef(BaseModel):
    """What an item keeps of a value stored in S3 (runly_core.run_objects): its bytes' sha256 (hex), their length."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=1)


class RunRecord(BaseModel):
    """A run item. ``attempt`` is the fencing token: the number of the attempt that holds the lease."""

    run_id: str
    state: RunState
    package: str
    version: str
    job: str
    entry_point: str
    environment: str
    # The config lives in the run's CONFIG item (runly_core.run_store.config_item), written once beside the run, so
    # the item every heartbeat rewrites keeps only its size: ``config_json`` is None on a record read from the run
    # item alone, and set on one the API created or read with its config (RunStore.get_with_config, a claim).
    config_json: str | None = None
    config_bytes: int | None = None  # the UTF-8 size of config_json, on the run item
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
    # An output over runly_core.run_objects.OUTPUT_INLINE_BYTES: in S3, named by its sha256 (output_json absent).
    output_ref: ObjectRef | None = None
    error_json: str | None = None
    progress_json: str | None = None  # latest Progress, written by the agent's heartbeat
    requeued_from: str | None = None  # the run this one was requeued from
    retry_at: str | None = None  # when a Queued run that failed an attempt becomes visible again (agent)
    schedule_id: str | None = None  # the schedule that enqueued it
    tags: dict[str, str] | None = None  # written once by the API (contracts.Tags); none: no attribute
    not_before: str | None = None  # a delayed run starts no earlier than this (the API writes it once)
    # The run's W3C trace context (runly.tracing): written once by the API, read by the agent that claims it; no
    # node writes it (functions.nodes.policy.RUN_ATTRIBUTES), no heartbeat touches it.
    traceparent: str | None = None

    @field_validator("traceparent")
    @classmethod
    def _trace_context(cls, value: str | None) -> str | None:
        if value is not None:
            TraceParent.parse(value)  # an InvalidTraceParent is a ValueError: the item is no valid run record
        return value

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
            config=json.loads(self.required_config_json),
            timeout_seconds=self.timeout_seconds,
            max_attempts=self.max_attempts,
            created_at=datetime.fromisoformat(self.created_at),
            started_at=datetime.fromisoformat(self.started_at) if self.started_at else None,
            finished_at=datetime.fromisoformat(self.finished_at) if self.finished_at else None,
            attempts=self.attempts,
            output=json.loads(self.output_json) if self.output_json is not None else None,
            error=RunError.model_validate_json(self.error_json) if self.error_json else None,
            progress=Progress.model_validate_json(self.progress_json) if self.progress_json else None,
            requeued_from=self.requeued_from,
            schedule_id=self.schedule_id,
            tags=self.tags or {},
            not_before=datetime.fromisoformat(self.not_before) if self.not_before else None,
            trace_id=self.trace.trace_id if self.trace else None,
        )

    @property
    def required_config_json(self) -> str:
        """The config, which a record read from the run item alone does not hold (a caller's mistake, said so)."""
        if self.config_json is None:
            raise ValueError(f"run {self.run_id}: its config was not read (the run's CONFIG item)")
        return self.config_json

    @property
    def trace(self) -> TraceParent | None:
        """The trace context the run continues (None for a run recorded before runs had one)."""
        return TraceParent.parse(self.traceparent) if self.traceparent else None


class PackageRecord(BaseModel):
    name: str
    version: str
    sha256: str
    size: int
    key: str
    requires_python: str | None = None
    jobs_json: str
    created_at: str
    # The very S3 object registration verified (its key is unique to its bytes and created once).
    etag: str | None = None
    object_version: str | None = None

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


def node_partition(environment: str, node_id: str) -> str:
    return f"{environment_prefix(environment)}{NODE_PARTITION}{node_id}"


def node_key(environment: str, node_id: str) -> dict[str, str]:
    return {PARTITION_KEY: node_partition(environment, node_id), SORT_KEY: "NODE"}


def node_of_partition(partition: str) -> tuple[str, str] | None:
    """(environment, node id) of a node's partition key, or None."""
    environment = environment_of_partition(partition)
    if environment is None:
        return None
    node_id = partition.removeprefix(f"{environment_prefix(environment)}{NODE_PARTITION}")
    return (environment, node_id) if node_id != partition and node_id else None


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

    # Its place in the items-by-kind index (runly_core.resources.ITEMS_BY_KIND), so the API lists nodes by environment
    # without scanning the table. Computed fields are part of model_dump, so the agent's heartbeat writes them.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def gsi3pk(self) -> str:
        return NODE_KIND

    @computed_field  # type: ignore[prop-decorator]
    @property
    def gsi3sk(self) -> str:
        return node_kind_sort_key(self.environment, self.node_id)

    def to_item(self) -> dict[str, Any]:
        item = self.model_dump(mode="json")
        item.update(node_key(self.environment, self.node_id))
        return item


# ---------------------------------------------------------------- items listed by kind (ITEMS_BY_KIND)

NODE_KIND = "NODE"
KEY_KIND = "KEY"


def node_kind_sort_key(environment: str, node_id: str) -> str:
    # Environment names cannot contain "#", so "<environment>#" prefixes exactly that environment's nodes.
    return f"{environment}#{node_id}"


# ---------------------------------------------------------------- API keys

KEY_SECRET_PREFIX = "rly"


def key_key(key_id: str) -> dict[str, str]:
    return {PARTITION_KEY: f"KEY#{key_id}", SORT_KEY: "KEY"}


class KeyRecord(BaseModel):
    """An API key. The secret (``rly_<key_id>_<random>``) is never stored: only its SHA-256."""

    key_id: str
    name: str
    scope: Scope
    environment: str | None = None  # node keys only
    secret_sha256: str
    created_at: str
    created_by: str  # the key that created it, or "bootstrap"
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_item(self) -> dict[str, Any]:
        item = self.model_dump(mode="json", exclude_none=True)
        item.update(key_key(self.key_id))
        item[ITEMS_BY_KIND.partition_key] = KEY_KIND
        item[ITEMS_BY_KIND.sort_key] = f"{self.created_at}#{self.key_id}"
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> KeyRecord:
        return cls.model_validate(item)

    def view(self) -> KeyView:
        return KeyView(
            id=self.key_id,
            name=self.name,
            scope=self.scope,
            environment=self.environment,
            prefix=f"{KEY_SECRET_PREFIX}_{self.key_id}_",
            created_at=datetime.fromisoformat(self.created_at),
            created_by=self.created_by,
            revoked_at=datetime.fromisoformat(self.revoked_at) if self.revoked_at else None,
        )


# ---------------------------------------------------------------- pins, idempotency, the package index
# (API issue 3: appended.)

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
PACKAGE_INDEX_PARTITION = "PACKAGES"


def environment_partition(environment: str) -> str:
    """``ENV#{environment}``: the table partition of an environment's own items (its pins). Written by the API
    only: a node's policy allows ``ENV#{environment}#RUN#*`` and ``ENV#{environment}#NODE#*``, which this key
    does not match."""
    return f"{ENVIRONMENT_PREFIX}{environment}"


def pin_key(environment: str, package: str) -> dict[str, str]:
    return {PARTITION_KEY: environment_partition(environment), SORT_KEY: f"PIN#{package}"}


class PinRecord(BaseModel):
    environment: str
    package: str
    specifier: str
    updated_at: str
    updated_by: str | None = None

    def to_item(self) -> dict[str, Any]:
        item = self.model_dump(mode="json", exclude_none=True)
        item.update(pin_key(self.environment, self.package))
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> PinRecord:
        return cls.model_validate(item)

    def view(self) -> Pin:
        return Pin(
            environment=self.environment,
            package=self.package,
            specifier=self.specifier,
            updated_at=datetime.fromisoformat(self.updated_at),
            updated_by=self.updated_by,
        )


def idempotency_key(owner: str, key: str) -> dict[str, str]:
    """One caller's Idempotency-Key: two keys (API keys) never share a namespace."""
    return {PARTITION_KEY: f"IDEM#{owner}#{key}", SORT_KEY: "IDEM"}


class IdempotencyRecord(BaseModel):
    """The run an ``Idempotency-Key`` created, and a fingerprint of the request that created it.

    ``expires_at`` is the table's TTL attribute; DynamoDB deletes expired items lazily (up to days
    late), so readers treat an item past it as absent.
    """

    owner: str
    key: str
    fingerprint: str
    run_id: str
    created_at: str
    expires_at: int
    dispatched: bool = False  # set once the run's message is sent; a replay re-sends it if it never was

    def to_item(self) -> dict[str, Any]:
        item = self.model_dump(mode="json")
        item.update(idempotency_key(self.owner, self.key))
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> IdempotencyRecord:
        return cls.model_validate(item)


def package_index_key(name: str) -> dict[str, str]:
    """One item per package in one partition, so listing packages reads that partition, never the table."""
    return {PARTITION_KEY: PACKAGE_INDEX_PARTITION, SORT_KEY: f"PKG#{name}"}


class PackageIndexRecord(BaseModel):
    """A package's entry in the package index; ``versions`` is a string set grown with ADD (race-free)."""

    name: str
    versions: set[str]
    updated_at: str

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> PackageIndexRecord:
        return cls.model_validate(item)


# ---------------------------------------------------------------- schedules
# (infrastructure issue 6, schedules: appended.)

SCHEDULE_KIND = "SCHEDULE"


def schedule_key(schedule_id: str) -> dict[str, str]:
    return {PARTITION_KEY: f"SCHEDULE#{schedule_id}", SORT_KEY: "SCHEDULE"}


def schedule_kind_sort_key(environment: str, created_at: str = "", schedule_id: str = "") -> str:
    # "<environment>#" prefixes exactly that environment's schedules (names cannot hold "#"); oldest first within.
    return f"{environment}#{created_at}#{schedule_id}" if created_at else f"{environment}#"


class ScheduleRecord(BaseModel):
    """A schedule: a job template (what ``POST /runs`` would take) and its recurrence. The recurrence itself lives
    in EventBridge Scheduler too (a schedule named ``schedule_id`` in the deployment's group), which fires it."""

    schedule_id: str
    name: str
    package: str
    job: str
    config_json: str
    environment: str
    version: str | None = None
    timeout_seconds: int
    max_attempts: int
    tags: dict[str, str] | None = None  # each run's tags
    delay_seconds: int | None = None  # each run's SQS delay after its fire
    expression: str  # canonical (functions.logic.schedule_expression)
    timezone: str
    enabled: bool
    start_at: str | None = None  # rate schedules: the first occurrence (EventBridge's StartDate)
    created_at: str
    created_by: str
    updated_at: str
    revision: int = 1  # each change of the definition increments it; changes are conditional on it
    # Written by the fire function only:
    last_fired_at: str | None = None
    last_run_id: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None

    # What a change of the definition writes; the fire function's fields are never part of it.
    FIRE_FIELDS: ClassVar[frozenset[str]] = frozenset({"last_fired_at", "last_run_id", "last_error", "last_error_at"})

    def to_item(self) -> dict[str, Any]:
        item = self.model_dump(mode="json", exclude_none=True)
        item.update(schedule_key(self.schedule_id))
        item[ITEMS_BY_KIND.partition_key] = SCHEDULE_KIND
        item[ITEMS_BY_KIND.sort_key] = schedule_kind_sort_key(self.environment, self.created_at, self.schedule_id)
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ScheduleRecord:
        return cls.model_validate(item)

    def view(self, next_fire_times: list[datetime]) -> ScheduleView:
        def moment(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        return ScheduleView(
            id=self.schedule_id,
            name=self.name,
            package=self.package,
            job=self.job,
            config=json.loads(self.config_json),
            environment=self.environment,
            version=self.version,
            timeout_seconds=self.timeout_seconds,
            max_attempts=self.max_attempts,
            tags=self.tags or {},
            delay_seconds=self.delay_seconds,
            expression=self.expression,
            timezone=self.timezone,
            enabled=self.enabled,
            next_fire_times=next_fire_times,
            created_at=datetime.fromisoformat(self.created_at),
            created_by=self.created_by,
            updated_at=datetime.fromisoformat(self.updated_at),
            last_fired_at=moment(self.last_fired_at),
            last_run_id=self.last_run_id,
            last_error=self.last_error,
            last_error_at=moment(self.last_error_at),
        )
