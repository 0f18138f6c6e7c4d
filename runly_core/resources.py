"""Names and settings of the AWS resources, in one place.

The CDK stack (``infrastructure/``) and the embedded stack (``runly_cli.embedded``)
both read this module, so a queue, table or bucket created locally has the same
name and attributes as the one ``cdk deploy`` creates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENVIRONMENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")

# DynamoDB: one table, generic keys, sparse GSIs.
PARTITION_KEY = "pk"
SORT_KEY = "sk"
TTL_ATTRIBUTE = "expires_at"


class IndexSpec(BaseModel):
    """A global secondary index: its keys and what it projects (docs/store.md, "The indexes"). Every index write is
    billed by the size of its projected entry, so an index projects only what its query reads: KEYS_ONLY (the
    reader reads the items it needs from the table) or INCLUDE of ``non_key_attributes``."""

    model_config = ConfigDict(frozen=True)

    name: str
    partition_key: str
    sort_key: str
    projection: Literal["KEYS_ONLY", "INCLUDE", "ALL"] = "KEYS_ONLY"
    non_key_attributes: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _attributes_only_with_include(self) -> IndexSpec:
        if (self.projection == "INCLUDE") != bool(self.non_key_attributes):
            raise ValueError(f"index {self.name}: non_key_attributes go with (and only with) an INCLUDE projection")
        return self

    @property
    def projected(self) -> dict[str, Any]:
        """The index's Projection as DynamoDB's CreateTable takes it."""
        projection: dict[str, Any] = {"ProjectionType": self.projection}
        if self.non_key_attributes:
            projection["NonKeyAttributes"] = list(self.non_key_attributes)
        return projection


# What the search reads of a run without reading the run: the attributes its filters test (functions.logic.run_search).
# tag_set: a tagged run's "key=value" string set (runly_core.run_store.TAG_SET), written once, at creation.
RUN_SEARCH_ATTRIBUTES = ("state", "package", "job", "schedule_id", "tag_set")
# Runs of an environment, newest first, spread over shards (runly_core.run_store.RUN_INDEX_SHARDS; search, dashboard).
# INCLUDE, not ALL: an index entry is rewritten only when a filtered attribute changes (a state change), at a few
# hundred bytes, and the search reads the page's runs from the table afterwards (BatchGetItem).
RUNS_BY_ENVIRONMENT = IndexSpec(
    name="runs-by-environment",
    partition_key="gsi1pk",
    sort_key="gsi1sk",
    projection="INCLUDE",
    non_key_attributes=RUN_SEARCH_ATTRIBUTES,
)
# Runs that hold a lease, by the lease expiry written at claim (the reaper's query), sharded like the runs. Sparse:
# only leased runs carry it. KEYS_ONLY: the reaper reads the candidates' rows and decides by their real lease; a
# heartbeat moves the indexed expiry only every few minutes (runly_core.run_store.LEASE_INDEX_REFRESH_MS).
RUNS_BY_LEASE = IndexSpec(name="runs-by-lease", partition_key="gsi2pk", sort_key="gsi2sk", projection="KEYS_ONLY")
# Small sets of items listed whole, by kind (API keys, nodes, schedules), so listing them never scans the runs.
# Sparse: only the items that list themselves carry it (see runly_core.records). KEYS_ONLY: a listing reads the
# items it found from the table (BatchGetItem), so a node's heartbeat (which rewrites its record) writes no index item.
ITEMS_BY_KIND = IndexSpec(name="items-by-kind", partition_key="gsi3pk", sort_key="gsi3sk", projection="ALL")
TABLE_INDEXES: tuple[IndexSpec, ...] = (RUNS_BY_ENVIRONMENT, RUNS_BY_LEASE, ITEMS_BY_KIND)
TABLE_BILLING_MODE = "PAY_PER_REQUEST"


def table_definition(table_name: str) -> dict[str, Any]:
    """The table's keys, indexes and billing as DynamoDB's CreateTable takes them: the embedded stack creates the
    table from it (runly_cli.embedded.aws) and the CDK construct builds its table from it (infrastructure.run_store),
    so the two cannot disagree on a key, an index or a projection. Every key attribute is a string."""
    attributes = {PARTITION_KEY, SORT_KEY}
    for index in TABLE_INDEXES:
        attributes |= {index.partition_key, index.sort_key}
    return {
        "TableName": table_name,
        "BillingMode": TABLE_BILLING_MODE,
        "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"} for name in sorted(attributes)],
        "KeySchema": [
            {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
            {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index.name,
                "KeySchema": [
                    {"AttributeName": index.partition_key, "KeyType": "HASH"},
                    {"AttributeName": index.sort_key, "KeyType": "RANGE"},
                ],
                "Projection": index.projected,
            }
            for index in TABLE_INDEXES
        ],
    }


# SQS: one queue and one dead-letter queue per environment.
QUEUE_VISIBILITY_TIMEOUT_SECONDS = 60  # the first lease; agents extend it by heartbeat
QUEUE_RECEIVE_WAIT_SECONDS = 20  # long polling
QUEUE_RETENTION_SECONDS = 14 * 24 * 3600
# Every receive counts, including retries delayed by visibility, so this is
# well above the largest per-run max_attempts the API accepts.
QUEUE_MAX_RECEIVE_COUNT = 30
# SQS keeps a message in flight at most 12 hours in total from its receipt and refuses a visibility change past
# that; a delay (DelaySeconds) is at most 15 minutes.
SQS_MAX_IN_FLIGHT_SECONDS = 12 * 3600
SQS_MAX_DELAY_SECONDS = 15 * 60
# How long an agent keeps one received message before it replaces it with a fresh one (node_agent.run_messages):
# the cap less a margin for the time between SQS's receipt and the agent's clock reading (taken before the
# receive call, so already early) and for clock drift over 12 hours.
MESSAGE_IN_FLIGHT_LIMIT_SECONDS = SQS_MAX_IN_FLIGHT_SECONDS - 10 * 60

# The lease ends this much before the message becomes visible again (both are renewed on each heartbeat), so when a
# node dies, the next node to receive the message finds the lease already expired and takes the run at once,
# instead of being told to come back a second later.
LEASE_MARGIN_MS = 1000
# The clock skew between nodes the lease protocol allows for, used twice (docs/agent.md, "Self-fencing"): a job
# process ends itself this long before its lease ends by its node's clock (runly.fencing), and a takeover claims an
# expired lease only once it ended this long ago by the claimer's clock (node_agent.aws). With clocks at most this
# far apart the old job is gone a full margin before the new one starts; up to twice this far apart, still before.
FENCE_MARGIN_MS = 1000

# S3 feed layout.
PACKAGES_PREFIX = "packages/"
# A run's objects: its log chunks, its output and checkpoints beyond the run item's inline sizes, all under
# runs/{environment}/{run_id}/ (runly_core.records.run_objects_prefix), so a node's grant is one prefix.
RUNS_PREFIX = "runs/"
MAX_PACKAGE_BYTES = 200 * 1024 * 1024
UPLOAD_URL_EXPIRY_SECONDS = 900
# What the wheels inside a bundle may unpack to, checked at registration and again on the node before anything
# is extracted (runly_core.bundle): every file of every wheel counts, by the size its compressed data really inflates
# to (a wheel that declares less than it holds is refused). An install takes about this much disk, plus the venv.
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
MAX_UNPACKED_FILES = 100_000  # files in all the wheels together (a large scientific stack has ~20,000)
MAX_BUNDLE_WHEELS = 1_000  # wheels in one bundle
# No file inside a wheel over 1 MiB may inflate more than this many times its compressed size: source and
# binaries inflate 2-10x; a run of zeros inflates ~1000x under deflate.
MAX_FILE_EXPANSION = 200
FILE_EXPANSION_FLOOR_BYTES = 1024 * 1024

# Lambda / API
API_FUNCTION_HANDLER = "functions.api.app.lambda_handler"
# The HTTP API's Lambda REQUEST authorizer (payload 2.0, simple responses); the local gateway runs it too.
AUTHORIZER_FUNCTION_HANDLER = "functions.authorizer.app.lambda_handler"
# API Gateway (and the local gateway) caches an authorizer's answer, allowed or refused with its context, per
# Authorization header for this long: the bound on how long a revoked key keeps working (docs/api.md). A key's
# scope and environment never change, so the cached context cannot go stale; only revocation can. At most 60 s
# (issue 15); 0 would run the authorizer and its key GetItem on every request.
AUTHORIZER_RESULT_TTL_SECONDS = 30
AUTHORIZATION_HEADER = "Authorization"
# The routes that answer without an API key (method, path as an API Gateway route key: ``{name}`` is one path
# segment); every other route runs the authorizer first. Read by the CDK construct (routes without an authorizer),
# the local gateway (no authorizer call) and the API function (no identity expected): the OpenAPI document, Swagger
# UI, and the dashboard's static page and assets (they hold no data: the page calls the API with the key its user
# enters).
OPEN_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/"),
    ("GET", "/dashboard/{asset}"),
)


def _route_pattern(path: str) -> re.Pattern[str]:
    return re.compile(
        "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{\w+\})", path))
    )


def is_open_route(method: str, path: str, routes: Iterable[tuple[str, str]] = OPEN_ROUTES) -> bool:
    """Whether a request (method, raw path) matches one of ``routes`` as API Gateway matches route keys."""
    return any(
        method.upper() == route_method and _route_pattern(route_path).fullmatch(path)
        for route_method, route_path in routes
    )


# A package version's jobs are stored in its feed item (one DynamoDB item, at most 400 KB): each job's spec (name,
# entry point, config schema, default config) as compact UTF-8 JSON is at most MAX_JOB_SPEC_BYTES, all of them
# together at most MAX_JOBS_BYTES (the rest of the item takes a few hundred bytes). Registration refuses more (413).
MAX_JOB_SPEC_BYTES = 64 * 1024
MAX_JOBS_BYTES = 256 * 1024

# Largest request body the API function accepts (413 above it); bundles go straight to S3, not through the API.
MAX_API_BODY_BYTES = 256 * 1024
FUNCTIONS_MEMORY_MB = 512
FUNCTIONS_TIMEOUT_SECONDS = 29

LOCAL_ACCOUNT = "123456789012"
LOCAL_REGION = "us-east-1"


class QueueNames(BaseModel):
    model_config = ConfigDict(frozen=True)

    queue: str
    dead_letter_queue: str


class ResourceNames(BaseModel):
    """Physical names of one deployment (a stage) of runly."""

    model_config = ConfigDict(frozen=True)

    stage: str = Field(pattern=r"^[a-z][a-z0-9-]{0,20}$")
    account: str
    region: str
    environments: tuple[str, ...] = ("default",)

    @field_validator("environments")
    @classmethod
    def _valid_environments(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one environment is required")
        for name in value:
            if not ENVIRONMENT_NAME.match(name):
                raise ValueError(f"environment {name!r} must match {ENVIRONMENT_NAME.pattern}")
        if len(set(value)) != len(value):
            raise ValueError("environment names must be unique")
        return value

    @property
    def prefix(self) -> str:
        return f"runly-{self.stage}"

    @property
    def table(self) -> str:
        return f"{self.prefix}-store"

    @property
    def feed_bucket(self) -> str:
        # Bucket names are global: the account and region keep them unique.
        return f"{self.prefix}-feed-{self.account}-{self.region}"

    @property
    def event_bus(self) -> str:
        """The custom EventBridge bus that every run state change is published to."""
        return self.prefix

    @property
    def scheduler_group(self) -> str:
        """The EventBridge Scheduler schedule group that holds the deployment's schedules (one per runly schedule)."""
        return self.prefix

    @property
    def values_path(self) -> str:
        """The SSM Parameter Store path under which the environments' variables and secrets live
        (``{values_path}/{environment}/{kind}/{name}``: runly_core.resources.value_parameter)."""
        return f"/{self.prefix}"

    def queues(self, environment: str) -> QueueNames:
        if environment not in self.environments:
            raise KeyError(f"unknown environment {environment!r}")
        return QueueNames(queue=f"{self.prefix}-{environment}", dead_letter_queue=f"{self.prefix}-{environment}-dlq")


# ---------------------------------------------------------------- variables and secrets of an environment
# Both live in SSM Parameter Store, one parameter each, ``{values_path}/{environment}/{kind}/{name}`` (a variable is a
# String, a secret a SecureString encrypted with the AWS-managed key aws/ssm: docs/api.md). A name becomes an
# environment variable of the job process, so it is one: letters, digits and "_", not starting with a digit, at
# most 128 characters (SSM allows 1,011 for the whole name; the path takes at most 1 + 27 + 1 + 31 + 8 + 1).
VALUE_KINDS = ("variables", "secrets")
# SSM's value limits: 4 KB for a standard parameter, 8 KB for an advanced one. Parameters are written with the
# Intelligent-Tiering tier: standard (free) up to 4 KB, advanced (charged per parameter and month) above it.
MAX_VALUE_BYTES = 8 * 1024
SSM_STANDARD_VALUE_BYTES = 4 * 1024
SSM_TIER = "Intelligent-Tiering"
# SSM GetParameters takes at most 10 names a call.
SSM_GET_PARAMETERS_BATCH = 10


def value_parameter(values_path: str, environment: str, kind: str, name: str) -> str:
    """The SSM parameter of one variable or secret (``kind``: one of VALUE_KINDS)."""
    return f"{environment_values_path(values_path, environment)}{kind}/{name}"


def environment_values_path(values_path: str, environment: str) -> str:
    """``{values_path}/{environment}/``: every value of the environment; a node's credentials reach this path only."""
    return f"{values_path.rstrip('/')}/{environment}/"


def values_path_of_table(table_name: str) -> str:
    """The values path of the deployment whose table is ``table_name`` (ResourceNames: ``runly-{stage}-store`` ->
    ``/runly-{stage}``), for settings that do not name it."""
    return "/" + table_name.removesuffix("-store")
