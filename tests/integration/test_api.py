"""The API handler in-process, with API Gateway payload 2.0 events, against in-process moto."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from functions.api import app as api_app
from runly_cli.embedded.aws import schedule_settings
from runly_cli.embedded.gateway import build_event
from runly_core import resources
from runly_core.bundle import sha256_file
from runly_core.contracts import RunMessage, Scope
from tests.support.api import clear_function_caches
from tests.support.auth import as_caller
from tests.support.bundles import make_bundle

Call = Callable[..., tuple[int, dict[str, Any]]]


class FakeContext:
    function_name = "runly-api"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:runly-api"
    memory_limit_in_mb = 512
    aws_request_id = "req-1"
    log_group_name = "/aws/lambda/runly-api"
    log_stream_name = "stream"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


@pytest.fixture
def call(aws: dict[str, str], names: resources.ResourceNames, monkeypatch: pytest.MonkeyPatch) -> Iterator[Call]:
    monkeypatch.setenv("RUNLY_TABLE_NAME", names.table)
    monkeypatch.setenv("RUNLY_FEED_BUCKET", names.feed_bucket)
    monkeypatch.setenv("RUNLY_QUEUE_URLS", json.dumps(aws))
    for name, value in schedule_settings(names).items():
        monkeypatch.setenv(name, value)
    clear_function_caches()

    def invoke(method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        raw = b"" if body is None else json.dumps(body).encode()
        event = build_event(
            method=method,
            raw_path=path,
            raw_query="",
            headers=[("content-type", "application/json")],
            body=raw,
            source_ip="127.0.0.1",
        )
        response = api_app.lambda_handler(as_caller(event, Scope.ADMIN), FakeContext())  # type: ignore[arg-type]
        return response["statusCode"], json.loads(response["body"]) if response.get("body") else {}

    yield invoke
    clear_function_caches()


def _register(call: Call, names: resources.ResourceNames, bundle: Path) -> tuple[int, dict[str, Any]]:
    digest, size = sha256_file(bundle), bundle.stat().st_size
    status, ticket = call(
        "POST", "/packages/uploads", {"name": "greeter", "version": "1.0.0", "sha256": digest, "size": size}
    )
    assert status == 201, ticket
    # The client PUTs to the presigned URL; in-process moto cannot take urllib's request, so store it as S3 would.
    boto3.client("s3").put_object(Bucket=names.feed_bucket, Key=ticket["key"], Body=bundle.read_bytes())
    return call("POST", "/packages", {"name": "greeter", "version": "1.0.0", "sha256": digest, "size": size})


def test_upload_ticket_binds_length_and_checksum(call: Call, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    status, ticket = call(
        "POST", "/packages/uploads", {"name": "greeter", "version": "1.0.0", "sha256": sha256_file(bundle), "size": 10}
    )
    assert status == 201
    assert ticket["method"] == "PUT"
    assert "x-amz-checksum-sha256" in ticket["headers"]
    # The checksum header is part of the signature, so S3 rejects a body with another hash.
    assert "x-amz-checksum-sha256" in ticket["url"].lower() or "x-amz-signedheaders" in ticket["url"].lower()


def test_register_then_enqueue_dispatches_one_message(
    call: Call, names: resources.ResourceNames, aws: dict[str, str], tmp_path: Path
) -> None:
    # Given a registered package
    status, package = _register(call, names, make_bundle(tmp_path))
    assert status == 201, package
    assert [job["name"] for job in package["jobs"]] == ["greet"]

    # When a run of its job is enqueued
    status, run = call("POST", "/runs", {"package": "greeter", "job": "greet", "config": {"name": "Ada"}})

    # Then it is Queued with the newest version, and exactly one message names it
    assert status == 201, run
    assert run["state"] == "Queued" and run["version"] == "1.0.0" and run["config"] == {"name": "Ada"}
    messages = boto3.client("sqs").receive_message(QueueUrl=aws["default"], MaxNumberOfMessages=10, WaitTimeSeconds=0)[
        "Messages"
    ]
    assert [RunMessage.model_validate_json(m["Body"]).run_id for m in messages] == [run["id"]]
    status, fetched = call("GET", f"/runs/{run['id']}")
    assert status == 200 and fetched["id"] == run["id"] and fetched["attempts"] == []


def test_register_rejects_a_bundle_whose_hash_differs(
    call: Call, names: resources.ResourceNames, tmp_path: Path
) -> None:
    good = make_bundle(tmp_path)
    digest, size = sha256_file(good), good.stat().st_size
    status, ticket = call(
        "POST", "/packages/uploads", {"name": "greeter", "version": "1.0.0", "sha256": digest, "size": size}
    )
    tampered = good.read_bytes().replace(b"not really", b"NOT really")
    boto3.client("s3").put_object(Bucket=names.feed_bucket, Key=ticket["key"], Body=tampered)

    status, error = call("POST", "/packages", {"name": "greeter", "version": "1.0.0", "sha256": digest, "size": size})

    assert status == 422
    assert error["field"] == "sha256"
    assert call("GET", "/runs/none")[0] == 404


def test_register_rejects_a_bundle_with_a_tampered_file(
    call: Call, names: resources.ResourceNames, tmp_path: Path
) -> None:
    status, error = _register(call, names, make_bundle(tmp_path, tamper=True))
    assert status == 422
    assert error["field"] == "bundle"


def test_a_version_is_registered_once(call: Call, names: resources.ResourceNames, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    assert _register(call, names, bundle)[0] == 201
    status, error = call(
        "POST", "/packages/uploads", {"name": "greeter", "version": "1.0", "sha256": sha256_file(bundle), "size": 5}
    )
    assert status == 409 and error["field"] == "version"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"job": "greet"}, "package"),
        ({"package": "greeter"}, "job"),
        ({"package": "greeter", "job": "greet", "timeout_seconds": 0}, "timeout_seconds"),
        ({"package": "greeter", "job": "greet", "environment": "Bad Env"}, "environment"),
        ({"package": "greeter", "job": "greet", "surprise": 1}, "surprise"),
    ],
)
def test_invalid_enqueue_bodies_name_the_field(
    call: Call, aws: dict[str, str], body: dict[str, Any], field: str
) -> None:
    status, error = call("POST", "/runs", body)
    assert status == 422, error
    assert error["code"] == "invalid_request" and error["field"] == field
    assert "Messages" not in boto3.client("sqs").receive_message(QueueUrl=aws["default"], WaitTimeSeconds=0)


def test_config_is_validated_against_the_jobs_schema(
    call: Call, names: resources.ResourceNames, aws: dict[str, str], tmp_path: Path
) -> None:
    _register(call, names, make_bundle(tmp_path))
    status, error = call("POST", "/runs", {"package": "greeter", "job": "greet", "config": {"name": "Ada", "times": 0}})
    assert status == 422
    assert error["field"] == "config.times"
    assert "Messages" not in boto3.client("sqs").receive_message(QueueUrl=aws["default"], WaitTimeSeconds=0)


def test_enqueue_names_what_is_missing(call: Call, names: resources.ResourceNames, tmp_path: Path) -> None:
    assert call("POST", "/runs", {"package": "nope", "job": "greet"}) == (
        404,
        {"code": "not_found", "message": "no package named 'nope' in the feed", "field": "package"},
    )
    _register(call, names, make_bundle(tmp_path))
    assert call("POST", "/runs", {"package": "greeter", "job": "other"})[1]["field"] == "job"
    assert call("POST", "/runs", {"package": "greeter", "job": "greet", "version": "2.0"})[1]["field"] == "version"
    assert (
        call("POST", "/runs", {"package": "greeter", "job": "greet", "environment": "prod"})[1]["field"]
        == "environment"
    )


def test_malformed_json_is_a_client_error(call: Call) -> None:
    event = build_event(
        method="POST",
        raw_path="/runs",
        raw_query="",
        headers=[("content-type", "application/json")],
        body=b"{not json",
        source_ip="127.0.0.1",
    )
    response = api_app.lambda_handler(as_caller(event, Scope.WRITE), FakeContext())  # type: ignore[arg-type]
    assert 400 <= response["statusCode"] < 500
    assert "Traceback" not in response["body"]
