"""Hostile input over the real API handler on in-process moto (issue 13, findings 2 and 6): a config schema never
makes the API fetch a URL or read a file, nor take unbounded time, and no bad body, schema or job spec gets a 500
or shows an internal path."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from runly.wire import JobSpec
from runly_core.contracts import Scope
from runly_core.records import package_key
from runly_core.resources import MAX_JOB_SPEC_BYTES
from tests.support.api import Answer, api_event, invoke
from tests.support.auth import as_caller
from tests.support.bundles import GREETER_SCHEMA
from tests.support.run_api import GREET, NAMES, Api, api_fixtures, error_field, registered_greeter

stack, aws, api = api_fixtures()
answers: list[Answer] = []  # every answer of this module: none may show an internal path


class _Recorder(http.server.BaseHTTPRequestHandler):
    paths: list[str]

    def do_GET(self) -> None:  # a schema server would answer with a schema
        self.paths.append(self.path)
        body = json.dumps({"type": "string"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def schema_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request: the URL a hostile schema points at."""
    paths: list[str] = []
    handler = type("Recorder", (_Recorder,), {"paths": paths})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", paths
    server.shutdown()
    server.server_close()


def call(api: Api, method: str, path: str, body: Any = None, **kwargs: Any) -> Answer:
    answer = api(method, path, body, **kwargs)
    answers.append(answer)
    return answer


def raw(method: str, path: str, text: str) -> Answer:
    """A body sent as these very characters (json.dumps would refuse or change what a hostile client sends)."""
    answer = invoke(as_caller(api_event(method, path, raw_body=text.encode()), Scope.ADMIN, None, "test-key"))
    answers.append(answer)
    return answer


def job(schema: Any, name: str = "greet") -> JobSpec:
    return JobSpec(name=name, entry_point="greeter.jobs:Greet", config_schema=schema)


def store_schema(version: str, schema: Any) -> None:
    """The version's job schema as a registration before these checks could have stored it."""
    spec = job(GREETER_SCHEMA).model_dump(mode="json") | {"config_schema": schema}
    boto3.resource("dynamodb").Table(NAMES.table).update_item(
        Key=package_key("greeter", version),
        UpdateExpression="SET jobs_json = :jobs",
        ExpressionAttributeValues={":jobs": json.dumps([spec])},
    )


@pytest.fixture
def greeter(api: Api, tmp_path: Path) -> dict[str, Any]:
    return registered_greeter(api, tmp_path)


@pytest.fixture
def legacy(api: Api, tmp_path: Path) -> str:
    """greeter 9.0.0, registered once per module (package items are kept), whose stored schema each test sets."""
    if api("GET", "/packages/greeter/versions/9.0.0").status != 200:
        api.register(tmp_path, "greeter", "9.0.0")
    return "9.0.0"


# ---------------------------------------------------------------- schemas at registration


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"$ref": "{url}"}, "/$ref"),
        ({"type": "object", "properties": {"name": {"$ref": "{url}schema.json"}}}, "/properties/name/$ref"),
        ({"$id": "{url}", "properties": {"name": {"$ref": "other.json"}}}, "/properties/name/$ref"),
        ({"$defs": {"x": {"$id": "{url}x"}}, "$ref": "#/$defs/x"}, "/$defs/x/$id"),
        ({"$dynamicRef": "{url}#meta"}, "/$dynamicRef"),
        ({"$schema": "{url}meta"}, "/$schema"),
        ({"$ref": "#/x", "x": {"$ref": "{url}"}}, "/x/$ref"),
    ],
)
def test_a_schema_that_refers_outside_itself_is_refused_at_registration_and_nothing_is_fetched(
    api: Api, tmp_path: Path, schema_server: tuple[str, list[str]], schema: dict[str, Any], where: str
) -> None:
    url, requests_seen = schema_server
    hostile = json.loads(json.dumps(schema).replace("{url}", url))

    # When a package whose job's schema points at the local server is registered
    refused = api.upload_and_register(tmp_path, "greeter", "5.0.0", jobs=[job(hostile)])
    answers.append(refused)

    # Then it is refused naming the job and where in its schema, and the server never heard from the API
    assert refused.status == 422, refused.body
    assert "'greet'" in refused.body["message"] and where in refused.body["message"], refused.body
    assert error_field(refused) == "bundle.jobs[0].config_schema"
    assert requests_seen == []
    assert call(api, "GET", "/packages/greeter/versions/5.0.0").status == 404


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": 5}, "/type"),
        ({"properties": {"name": {"minimum": "x"}}}, "/properties/name/minimum"),
        ({"type": "string", "pattern": "^(a)\\1$"}, "/pattern"),
        ({"patternProperties": {"(?<=a)b": {}}}, "(?<=a)b"),
        ({"$ref": "#/$defs/missing"}, "does not resolve"),
        ({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}, "never descends"),
        ({"type": "array", "items": {"anyOf": [{"const": n} for n in range(100)]}}, "steps, over the limit"),
    ],
)
def test_a_schema_runly_cannot_use_is_refused_at_registration_naming_the_job_and_the_place(
    api: Api, tmp_path: Path, schema: dict[str, Any], words: str
) -> None:
    refused = api.upload_and_register(tmp_path, "greeter", "5.0.1", jobs=[job(schema)])
    answers.append(refused)
    assert refused.status == 422, refused.body
    assert "'greet'" in refused.body["message"] and words in refused.body["message"], refused.body


def test_an_oversized_job_spec_is_refused_at_registration_naming_the_job(api: Api, tmp_path: Path) -> None:
    # Given a job whose schema describes a thousand fields at length (over MAX_JOB_SPEC_BYTES as JSON)
    fields = {f"field_{n}": {"type": "string", "description": "x" * 100} for n in range(MAX_JOB_SPEC_BYTES // 100)}
    big = job({"type": "object", "properties": fields}, name="big")

    refused = api.upload_and_register(tmp_path, "greeter", "5.0.2", jobs=[job(GREETER_SCHEMA), big])
    answers.append(refused)

    assert refused.status == 413, refused.body
    assert "'big'" in refused.body["message"] and error_field(refused) == "bundle.jobs[1]"


def test_the_largest_spec_a_version_item_holds_is_registered(api: Api, tmp_path: Path) -> None:
    # Four jobs each just under the spec limit (MAX_JOBS_BYTES together): the version item fits in DynamoDB's 400 KB
    def near_limit(name: str) -> JobSpec:
        fields: dict[str, Any] = {}
        while len(job({"type": "object", "properties": fields}, name).model_dump_json()) < MAX_JOB_SPEC_BYTES - 300:
            fields[f"f{len(fields)}"] = {"type": "string", "description": "x" * 90}
        return job({"type": "object", "properties": fields}, name)

    jobs = [near_limit(f"job{n}") for n in range(4)]
    registered = api.upload_and_register(tmp_path, "greeter", "5.0.3", jobs=jobs)
    answers.append(registered)
    assert registered.status == 201, registered.body


# ---------------------------------------------------------------- schemas already stored, at enqueue


@pytest.mark.parametrize(
    "schema",
    [{"$ref": "{url}"}, {"properties": {"name": {"$ref": "file:///etc/passwd"}}}, {"$ref": "file:///etc/passwd"}],
)
def test_a_stored_schema_that_refers_outside_itself_fails_enqueue_with_409_and_nothing_is_read(
    api: Api, legacy: str, schema_server: tuple[str, list[str]], schema: dict[str, Any]
) -> None:
    url, requests_seen = schema_server
    store_schema(legacy, json.loads(json.dumps(schema).replace("{url}", url)))

    refused = call(api, "POST", "/runs", {**GREET, "version": legacy})

    assert refused.status == 409, refused.body
    assert "'greet'" in refused.body["message"] and error_field(refused) == "job"
    assert requests_seen == []
    assert "root:" not in json.dumps(refused.body)  # /etc/passwd's first line, on every Linux
    assert call(api, "GET", "/runs").body["items"] == []


def test_a_malformed_stored_schema_fails_enqueue_with_409_not_500(api: Api, legacy: str) -> None:
    store_schema(legacy, {"type": 5})
    refused = call(api, "POST", "/runs", {**GREET, "version": legacy})
    assert refused.status == 409, refused.body
    assert "/type" in refused.body["message"]


def test_a_stored_catastrophic_pattern_is_evaluated_in_linear_time(api: Api, legacy: str) -> None:
    # Given a schema stored with the pattern that took 5 s per enqueue (backtracking on a long run of 'a's)
    store_schema(legacy, {"type": "object", "properties": {"name": {"type": "string", "pattern": "^(a+)+$"}}})
    config = {"name": "a" * 60_000 + "!"}

    started = time.perf_counter()
    refused = call(api, "POST", "/runs", {**GREET, "version": legacy, "config": config})
    elapsed = time.perf_counter() - started

    assert refused.status == 422 and error_field(refused) == "config.name", refused.body
    assert elapsed < 1.0, f"{elapsed:.2f} s"  # the whole request, moto included; the pattern alone takes < 1 ms


# ---------------------------------------------------------------- bodies


def deep(levels: int) -> str:
    return "[" * (levels - 1) + "1" + "]" * (levels - 1)


ROUTES = [
    ("POST", "/runs", '{{"package":"greeter","job":"greet","config":{{"name":{value}}}}}', "config.name"),
    (
        "POST",
        "/runs/batch",
        '{{"runs":[{{"package":"greeter","job":"greet","config":{{"name":"x"}}}},'
        '{{"package":"greeter","job":"greet","config":{{"name":{value}}}}}]}}',
        "runs[1].config.name",
    ),
    (
        "POST",
        "/schedules",
        '{{"package":"greeter","job":"greet","expression":"cron(0 3 * * ? *)","config":{{"name":{value}}}}}',
        "config.name",
    ),
    ("POST", "/keys", '{{"name":{value},"scope":"read"}}', "name"),
    ("POST", "/packages/uploads", '{{"name":{value},"version":"1.0","sha256":"{sha}","size":1}}', "name"),
]
VALUES = [
    ('"\\ud800"', "lone surrogate"),
    ('"a\\udfffb"', "lone surrogate"),
    ("1" * 5000, "integer out of range"),
    (str(2**63), "integer out of range"),
    ("-" + str(2**63 + 1), "integer out of range"),
    ("1e400", "out of range"),
    ("NaN", "NaN is not a JSON number"),
    ("Infinity", "Infinity is not a JSON number"),
    ("-Infinity", "-Infinity is not a JSON number"),
    (deep(66), "nests deeper than 64"),  # 65 levels in the field itself: over 64 in every route
    (deep(260), "nests deeper than 64"),
    (deep(100_000), "nests deeper than 64"),
]


@pytest.mark.parametrize(("value", "problem"), VALUES, ids=[v[1] + f" {len(v[0])}" for v in VALUES])
@pytest.mark.parametrize(("method", "path", "template", "field"), ROUTES, ids=[r[1] for r in ROUTES])
def test_a_body_over_a_json_limit_gets_400_naming_the_field(
    greeter: dict[str, Any], method: str, path: str, template: str, field: str, value: str, problem: str
) -> None:
    answer = raw(method, path, template.format(value=value, sha="0" * 64))
    assert answer.status == 400, answer.body
    assert problem in answer.body["message"], answer.body
    if not problem.startswith("nests"):
        assert answer.body["field"] == field
    assert call_count_of_runs() == 0


def call_count_of_runs() -> int:
    items = boto3.resource("dynamodb").Table(NAMES.table).scan(ProjectionExpression="pk")["Items"]
    return sum(1 for item in items if str(item["pk"]).startswith("RUN#"))


def test_a_config_at_the_depth_limit_is_accepted_and_fits_what_a_job_process_reads(api: Api, legacy: str) -> None:
    # The body is an object holding config (2 levels): 62 more make the 64 levels allowed
    from runly.wire import RunSpec

    store_schema(legacy, {"type": "object"})
    config = {"name": json.loads(deep(63))}
    created = call(api, "POST", "/runs", {**GREET, "version": legacy, "config": config})
    assert created.status == 201, created.body

    # And the job host's reader (pydantic, whose JSON parser stops at 200 levels) takes the spec built from it
    spec = RunSpec(run_id="r", attempt=1, package="p", version="1", job="j", entry_point="m:C", config=config)
    assert RunSpec.model_validate_json(spec.model_dump_json()).config == config


def test_big_but_valid_numbers_and_paired_surrogates_are_accepted(greeter: dict[str, Any]) -> None:
    times = 2**63 - 1
    body = '{"package":"greeter","job":"greet","config":{"name":"\\ud83d\\ude00","times":' + f"{times}}}}}"
    created = raw("POST", "/runs", body)
    assert created.status == 201, created.body
    assert created.body["config"] == {"name": "\U0001f600", "times": 2**63 - 1}


def test_no_error_body_of_this_module_shows_an_internal_path() -> None:
    # Runs last (pytest keeps a file's order): every answer the tests above got
    if not answers:
        pytest.skip("no test above ran")
    errors = [json.dumps(a.body) for a in answers if a.status >= 400]
    assert errors
    for text in errors:
        assert "/tmp/" not in text and "/var/" not in text and ".venv" not in text and "site-packages" not in text, text
