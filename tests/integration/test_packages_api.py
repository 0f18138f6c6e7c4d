"""The package feed and version pins over the real API handler on in-process moto."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from functions.dal.feed import Feed
from runly_core import resources
from runly_core.bundle import sha256_file
from runly_core.contracts import Scope
from runly_core.records import RunRecord, package_key
from runly_core.run_store import run_key
from tests.support.bundles import make_bundle
from tests.support.run_api import NAMES, Api, api_fixtures, error_field
from tests.support.zip_bombs import bomb_bundle, zeros


@pytest.fixture
def names() -> resources.ResourceNames:
    return NAMES


stack, aws, api = api_fixtures(keep=lambda item: False)


def enqueue(api: Api, **fields: Any) -> Any:
    return api("POST", "/runs", {"package": "greeter", "job": "greet", "config": {"name": "Ada"}, **fields})


# ---------------------------------------------------------------- the feed


def test_the_feed_lists_packages_and_versions_newest_first(api: Api, tmp_path: Path) -> None:
    # Given versions registered out of order, one of them a pre-release
    for version in ("1.2.0", "1.10.0", "1.9.0", "2.0.0rc1"):
        api.register(tmp_path, "greeter", version)
    api.register(tmp_path, "mailer", "0.1.0")

    # When the feed is listed
    listing = api("GET", "/packages", scope=Scope.READ)

    # Then each package shows its newest final release (not the pre-release) and how many versions it has
    assert listing.status == 200
    summaries = {item["name"]: item for item in listing.body["items"]}
    assert [item["name"] for item in listing.body["items"]] == ["greeter", "mailer"]
    assert (summaries["greeter"]["latest_version"], summaries["greeter"]["version_count"]) == ("1.10.0", 4)
    assert (summaries["mailer"]["latest_version"], summaries["mailer"]["version_count"]) == ("0.1.0", 1)
    assert summaries["greeter"]["updated_at"]

    # And versions come newest first by PEP 440, not by string order
    versions = api("GET", "/packages/Greeter/versions", scope=Scope.READ).body["items"]
    assert [v["version"] for v in versions] == ["2.0.0rc1", "1.10.0", "1.9.0", "1.2.0"]

    # And one version shows its jobs with their config schema and default config
    shown = api("GET", "/packages/greeter/versions/1.10", scope=Scope.READ)  # 1.10 == 1.10.0 under PEP 440
    assert shown.status == 200 and shown.body["version"] == "1.10.0"
    job = shown.body["jobs"][0]
    assert job["name"] == "greet" and job["config_schema"]["required"] == ["name"] and "default_config" in job


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/packages/nope/versions", 404, "name"),
        ("/packages/-bad-/versions", 422, "name"),
        ("/packages/greeter/versions/9.9", 404, "version"),
        ("/packages/greeter/versions/not-a-version", 422, "version"),
        ("/packages/greeter/versions/" + "1" * 65, 422, "version"),
    ],
)
def test_bad_feed_requests_name_the_field(api: Api, tmp_path: Path, path: str, status: int, field: str) -> None:
    api.register(tmp_path)
    answer = api("GET", path)
    assert (answer.status, error_field(answer)) == (status, field), answer.body


# ---------------------------------------------------------------- pins


def test_pins_are_set_listed_shown_and_removed(api: Api) -> None:
    # When an admin pins a package in staging (the package need not be registered yet)
    pinned = api("PUT", "/environments/staging/pins/My_Pkg", {"specifier": ">=1.2, <2"})

    # Then the pin is stored under the normalized name, with its normalized specifier and who set it
    assert pinned.status == 200, pinned.body
    assert pinned.body["package"] == "my-pkg" and pinned.body["environment"] == "staging"
    assert pinned.body["specifier"] in ("<2,>=1.2", ">=1.2,<2") and pinned.body["updated_by"] == "test-key"
    assert api("GET", "/environments/staging/pins/my-pkg", scope=Scope.READ).body == pinned.body
    assert api("GET", "/environments/staging/pins").body["items"] == [pinned.body]
    assert api("GET", "/environments/default/pins").body["items"] == []

    # And replacing it keeps one pin
    replaced = api("PUT", "/environments/staging/pins/my-pkg", {"specifier": "==1.4.*"})
    assert [p["specifier"] for p in api("GET", "/environments/staging/pins").body["items"]] == ["==1.4.*"]
    assert replaced.status == 200

    # When it is removed, it is gone
    removed = api("DELETE", "/environments/staging/pins/my-pkg")
    assert removed.status == 204 and removed.body in (None, "")
    assert api("GET", "/environments/staging/pins/my-pkg").status == 404
    assert api("DELETE", "/environments/staging/pins/my-pkg").status == 404


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/environments/default/pins/greeter", {"specifier": "banana"}, 422, "specifier"),
        ("/environments/default/pins/greeter", {"specifier": "~=1"}, 422, "specifier"),
        ("/environments/default/pins/greeter", {"specifier": "  "}, 422, "specifier"),
        ("/environments/default/pins/greeter", {"specifier": ""}, 422, "specifier"),
        ("/environments/default/pins/greeter", {}, 422, "specifier"),
        ("/environments/default/pins/greeter", {"specifier": ">=1", "note": "x"}, 422, "note"),
        ("/environments/prod/pins/greeter", {"specifier": ">=1"}, 404, "environment"),
        ("/environments/Bad%20Env/pins/greeter", {"specifier": ">=1"}, 422, "environment"),
        ("/environments/default/pins/..", {"specifier": ">=1"}, 422, "package"),
    ],
)
def test_bad_pins_name_the_field(api: Api, path: str, body: dict[str, Any], status: int, field: str) -> None:
    answer = api("PUT", path, body)
    assert (answer.status, error_field(answer)) == (status, field), answer.body


def test_pins_need_an_admin_key_to_change_and_stay_in_a_node_keys_environment(api: Api) -> None:
    assert api("PUT", "/environments/default/pins/greeter", {"specifier": ">=1"}, scope=Scope.WRITE).status == 403
    assert api("DELETE", "/environments/default/pins/greeter", scope=Scope.WRITE).status == 403
    assert api("GET", "/environments/staging/pins", scope=Scope.NODE, environment="staging").status == 200
    assert api("GET", "/environments/default/pins", scope=Scope.NODE, environment="staging").status == 403
    assert api("GET", "/environments/prod/pins").status == 404


# ---------------------------------------------------------------- which version a run gets


@pytest.fixture
def four_versions(api: Api, tmp_path: Path) -> None:
    for version in ("1.0.0", "1.5.0", "2.0.0", "2.1.0rc1"):
        api.register(tmp_path, "greeter", version)


def test_a_run_gets_the_newest_version_its_environments_pin_allows(api: Api, four_versions: None) -> None:
    # Without a pin: the newest final release (a pre-release is not chosen unasked)
    assert enqueue(api).body["version"] == "2.0.0"

    # Given production... here staging, pinned below 2
    api("PUT", "/environments/staging/pins/greeter", {"specifier": ">=1,<2"})

    # Then a run that names no version gets the newest 1.x, in staging only
    assert enqueue(api, environment="staging").body["version"] == "1.5.0"
    assert enqueue(api, environment="default").body["version"] == "2.0.0"
    # And a run may name an older version the pin allows
    assert enqueue(api, environment="staging", version="1.0").body["version"] == "1.0.0"

    # A specifier that names a pre-release lets pre-releases in
    api("PUT", "/environments/staging/pins/greeter", {"specifier": ">=2.1.0rc1"})
    assert enqueue(api, environment="staging").body["version"] == "2.1.0rc1"


def test_a_version_outside_the_pin_is_refused_with_the_pin_named(api: Api, four_versions: None) -> None:
    api("PUT", "/environments/staging/pins/greeter", {"specifier": ">=1,<2"})

    # A run that names a version outside the pin
    outside = enqueue(api, environment="staging", version="2.0.0")
    assert outside.status == 409 and error_field(outside) == "version"
    assert "<2" in outside.body["message"] and "staging" in outside.body["message"]

    # A pin that no registered version satisfies
    api("PUT", "/environments/staging/pins/greeter", {"specifier": ">=3"})
    nothing = enqueue(api, environment="staging")
    assert nothing.status == 409 and error_field(nothing) == "version"
    assert ">=3" in nothing.body["message"] and "2.0.0" in nothing.body["message"]

    # Naming a pre-release explicitly is asking for it: allowed when inside the range
    api("PUT", "/environments/staging/pins/greeter", {"specifier": ">=2"})
    assert enqueue(api, environment="staging", version="2.1.0rc1").body["version"] == "2.1.0rc1"


def test_a_package_with_only_pre_releases_runs_its_newest(api: Api, tmp_path: Path) -> None:
    api.register(tmp_path, "greeter", "0.1.0a1")
    api.register(tmp_path, "greeter", "0.1.0b2")
    assert enqueue(api).body["version"] == "0.1.0b2"
    assert api("GET", "/packages").body["items"][0]["latest_version"] == "0.1.0b2"


# ---------------------------------------------------------------- uploads: immutable, bounded, never a 500


def _ticket(api: Api, bundle: Path, name: str = "greeter", version: str = "1.0.0") -> dict[str, Any]:
    stated = {"name": name, "version": version, "sha256": sha256_file(bundle), "size": bundle.stat().st_size}
    ticket = api("POST", "/packages/uploads", stated)
    assert ticket.status == 201, ticket.body
    return {**ticket.body, "stated": stated}


def _put(ticket: dict[str, Any], body: bytes) -> int:
    """The client's PUT to the presigned URL, with the headers the ticket names (S3 refuses a request that
    leaves out a header the URL signs; moto, which checks no signature, answers it here in-process)."""
    return requests.put(ticket["url"], data=body, headers=ticket["headers"], timeout=30).status_code


def _feed_object(api: Api, key: str) -> bytes:
    return bytes(boto3.client("s3").get_object(Bucket=api.names.feed_bucket, Key=key)["Body"].read())


def test_an_upload_url_issued_before_registration_cannot_change_what_nodes_download(api: Api, tmp_path: Path) -> None:
    # Given two upload URLs for greeter 3.0.0, both issued before it is registered: one for bundle A, one for B
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    bundle_a = make_bundle(first, version="3.0.0")
    bundle_b = make_bundle(second, version="3.0.0", tamper=True)  # other bytes, same name and version
    ticket_a, ticket_b = _ticket(api, bundle_a, version="3.0.0"), _ticket(api, bundle_b, version="3.0.0")

    # When A is uploaded and registered
    assert _put(ticket_a, bundle_a.read_bytes()) == 200
    registered = api("POST", "/packages", ticket_a["stated"])
    assert registered.status == 201, registered.body

    # And then B is uploaded with the other URL, and A's URL is used again to upload B
    _put(ticket_b, bundle_b.read_bytes())
    assert _put(ticket_a, bundle_b.read_bytes()) == 412  # the PUT creates only

    # Then the version names, and a run of it downloads, exactly the bytes registered
    version = api("GET", "/packages/greeter/versions/3.0.0").body
    assert version["sha256"] == sha256_file(bundle_a)
    assert hashlib.sha256(_feed_object(api, version["key"])).hexdigest() == sha256_file(bundle_a)
    run = enqueue(api, version="3.0.0")
    assert run.status == 201, run.body
    item = boto3.resource("dynamodb").Table(api.names.table).get_item(Key=run_key(run.body["id"]))["Item"]
    assert RunRecord.from_item(item).bundle_key == version["key"]
    assert RunRecord.from_item(item).bundle_sha256 == sha256_file(bundle_a)
    # And registration recorded which S3 object it verified
    record = boto3.resource("dynamodb").Table(api.names.table).get_item(Key=package_key("greeter", "3.0.0"))["Item"]
    head = boto3.client("s3").head_object(Bucket=api.names.feed_bucket, Key=version["key"])
    assert (record["etag"], record["object_version"]) == (head["ETag"], head["VersionId"])


def test_a_bundle_whose_wheel_inflates_to_gigabytes_is_refused_at_registration(api: Api, tmp_path: Path) -> None:
    # Given a 2 MB bundle, correctly hashed and listed, whose wheel holds 2 GiB of zeros
    bomb = bomb_bundle(tmp_path, "greeter", "1.0.0", [zeros("greeter/zeros.bin", 2048)])
    ticket = _ticket(api, bomb)
    assert _put(ticket, bomb.read_bytes()) == 200

    # When it is registered, it is refused, naming the wheel, the sizes and the bundle by name (no scratch path)
    refused = api("POST", "/packages", ticket["stated"])
    assert (refused.status, error_field(refused)) == (422, "bundle"), refused.body
    message = refused.body["message"]
    assert "greeter-1.0.0.runly: wheels/greeter-1.0.0-py3-none-any.whl" in message
    assert "to 2147483648 bytes" in message and "/tmp" not in message and tempfile.gettempdir() not in message
    assert api("GET", "/packages/greeter/versions/1.0.0").status == 404


@pytest.mark.parametrize(
    "failure",
    [
        ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, "GetObject"),
        OSError(28, "No space left on device", "/tmp/tmpabc123/bundle.runly"),
    ],
    ids=["throttled", "disk-full"],
)
def test_a_download_failure_during_registration_is_a_503_without_internal_paths(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    # Given an uploaded bundle, and a feed whose download fails
    bundle = make_bundle(tmp_path, version="3.1.0")
    ticket = _ticket(api, bundle, version="3.1.0")
    assert _put(ticket, bundle.read_bytes()) in (200, 412)  # 412: the other case uploaded these bytes

    def fail(self: Feed, key: str, destination: Path, **options: Any) -> None:
        raise failure

    monkeypatch.setattr(Feed, "download", fail)

    # When it is registered: 503, nothing registered, no path of the function in the answer
    answer = api("POST", "/packages", ticket["stated"])
    assert answer.status == 503, answer.body
    assert answer.body["code"] == "unavailable" and "retry" in answer.body["message"]
    assert "/tmp" not in json.dumps(answer.body)
    assert api("GET", "/packages/greeter/versions/3.1.0").status == 404
