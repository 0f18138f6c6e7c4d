"""Helpers of the runs and packages API tests: a module-wide moto stack, a caller, bundle registration."""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend

from runly.wire import JobSpec
from runly_cli.embedded.aws import create_resources
from runly_core import resources
from runly_core.bundle import sha256_file
from runly_core.contracts import Scope
from tests.support.api import Answer, api_event, clear_function_caches, invoke, point_functions_at
from tests.support.auth import as_caller
from tests.support.bundles import make_bundle

NAMES = resources.ResourceNames(
    stage="test", account=resources.LOCAL_ACCOUNT, region=resources.LOCAL_REGION, environments=("default", "staging")
)


GREET = {"package": "greeter", "job": "greet", "config": {"name": "Ada"}}


def is_package(item: dict[str, Any]) -> bool:
    """A registered package's item (kept between tests: registering is slow)."""
    return str(item["pk"]).startswith("PKG#") or item["pk"] == "PACKAGES"


def api_fixtures(
    *, keep: Callable[[dict[str, Any]], bool] = is_package, cleanup: Callable[[], None] | None = None
) -> tuple[Any, Any, Any]:
    """The fixtures of an API test module, as ``stack, aws, api = api_fixtures()``: the module's moto stack
    (created once), emptied after each test but for the items ``keep`` accepts (``cleanup`` first, for what
    the table does not hold), and an Api caller on it, with a fresh set of the functions' services per test."""

    @pytest.fixture(scope="module")
    def stack() -> Iterator[dict[str, str]]:
        with moto_stack(NAMES) as queue_urls:
            yield queue_urls

    @pytest.fixture
    def aws(stack: dict[str, str]) -> Iterator[dict[str, str]]:
        yield stack
        if cleanup is not None:
            cleanup()
        reset_stack(NAMES, stack, keep=keep)

    @pytest.fixture
    def api(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
        client = Api(NAMES, aws, monkeypatch)
        yield client
        client.close()

    return stack, aws, api


def registered_greeter(api: Api, tmp_path: Path) -> dict[str, Any]:
    """greeter 1.0.0, registered once per module (the table keeps package items between tests)."""
    registered = api("GET", "/packages/greeter/versions/1.0.0")
    return registered.body if registered.status == 200 else api.register(tmp_path)  # type: ignore[no-any-return]


@contextmanager
def moto_stack(names: resources.ResourceNames = NAMES) -> Iterator[dict[str, str]]:
    """In-process moto with the deployment's resources, for a whole test module: created once, emptied by
    ``reset_stack`` between tests (creating them is most of a test's time). Yields environment -> queue URL."""
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("AWS_"):
                patch.delenv(key)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", resources.LOCAL_REGION)
        # SQS allows one purge a minute; reset_stack purges between tests.
        patch.setenv("MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR", "false")
        with mock_aws():
            yield create_resources(names, boto3.session.Session())


def reset_stack(
    names: resources.ResourceNames, queue_urls: dict[str, str], *, keep: Callable[[dict[str, Any]], bool]
) -> None:
    """Empty the table (but for the items ``keep`` accepts), the queues and the run logs."""
    table = boto3.resource("dynamodb").Table(names.table)
    scan: dict[str, Any] = {"ProjectionExpression": "pk, sk"}
    with table.batch_writer() as batch:
        while True:
            page = table.scan(**scan)
            for item in page.get("Items", []):
                if not keep(item):
                    batch.delete_item(Key={"pk": item["pk"], "sk": item["sk"]})
            if "LastEvaluatedKey" not in page:
                break
            scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    sqs = boto3.client("sqs")
    for url in queue_urls.values():
        sqs.purge_queue(QueueUrl=url)
    s3 = boto3.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=names.feed_bucket, Prefix=resources.RUNS_PREFIX):
        for entry in page.get("Contents", []):
            s3.delete_object(Bucket=names.feed_bucket, Key=entry["Key"])


@contextmanager
def serialized_dynamodb() -> Iterator[None]:
    """Make moto's DynamoDB serve one request at a time, as DynamoDB makes each conditional write atomic.

    moto does not: a transaction copies the table to roll back, so two threads can both pass a condition, or
    one can restore a copy that drops the other's write. Tests of concurrent clients need the service's
    guarantee, not moto's lack of it: what they check is the protocol built on it.
    """
    lock = threading.RLock()
    names = ("put_item", "get_item", "update_item", "delete_item", "query", "transact_write_items")
    originals = {name: getattr(DynamoDBBackend, name) for name in names}

    def locked(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return method(*args, **kwargs)

        return call

    with pytest.MonkeyPatch.context() as patch:
        for name, method in originals.items():
            patch.setattr(DynamoDBBackend, name, locked(method))
        yield


class Api:
    """``api("GET", "/runs", query={...}, scope=Scope.READ)``: one request through the API function, as API
    Gateway passes it on once the authorizer allowed a key of ``scope`` (and ``environment``, for node keys)."""

    def __init__(self, names: resources.ResourceNames, queue_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch):
        point_functions_at(monkeypatch, names, queue_urls)
        self.names = names

    def close(self) -> None:
        clear_function_caches()

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        scope: Scope = Scope.ADMIN,
        environment: str | None = None,
        key_id: str = "test-key",
    ) -> Answer:
        pairs = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (query or {}).items()}
        event = api_event(
            method, path, body=body, query=urllib.parse.urlencode(pairs), headers=list((headers or {}).items())
        )
        return invoke(as_caller(event, scope, environment, key_id))

    def register(
        self, directory: Path, name: str = "greeter", version: str = "1.0.0", *, jobs: list[JobSpec] | None = None
    ) -> dict[str, Any]:
        """Upload (as the client's presigned PUT would) and register a hand-made bundle."""
        registered = self.upload_and_register(directory, name, version, jobs=jobs)
        assert registered.status == 201, registered.body
        return dict(registered.body)

    def upload_and_register(
        self, directory: Path, name: str = "greeter", version: str = "1.0.0", *, jobs: list[JobSpec] | None = None
    ) -> Answer:
        """Upload a hand-made bundle and ask to register it: the registration's answer, whatever it is."""
        bundle_dir = directory / f"{name}-{version}"
        bundle_dir.mkdir(parents=True, exist_ok=True)
        bundle = make_bundle(bundle_dir, name, version, jobs=jobs)
        stated = {"name": name, "version": version, "sha256": sha256_file(bundle), "size": bundle.stat().st_size}
        ticket = self("POST", "/packages/uploads", stated)
        assert ticket.status == 201, ticket.body
        boto3.client("s3").put_object(Bucket=self.names.feed_bucket, Key=ticket.body["key"], Body=bundle.read_bytes())
        return self("POST", "/packages", stated)


def error_field(answer: Answer) -> str | None:
    return answer.body.get("field") if isinstance(answer.body, dict) else None
