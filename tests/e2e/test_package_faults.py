"""Packages on a real node: what cannot run fails once with package_error and the node keeps serving; what was
registered is what runs.

A job whose module raises or exits while it is imported, or whose entry point names nothing, fails the same way
on every attempt: no retry. A bundle that inflates to gigabytes, pushed past the API straight into the feed and
the table, is refused by the node before anything is extracted. An upload URL issued before a version was
registered cannot change the bytes that version's runs get.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from runly.wire import JobSpec
from runly_cli.embedded.stack import EmbeddedStack
from runly_cli.pack import pack_project
from runly_client.client import RunlyClient
from runly_core.bundle import read_manifest, sha256_file, write_bundle
from runly_core.contracts import EnqueueRunRequest, FailureReason, PackageVersionView, RunState
from runly_core.records import PackageRecord, iso, utcnow
from tests.support.zip_bombs import bomb_bundle, zeros

BROKEN_PROJECT = Path(__file__).parent / "projects" / "brokenjobs"

# Jobs the manifest names whose class cannot be loaded on a node (job name -> entry point).
UNLOADABLE = {
    "raises": "brokenjobs.raises_at_import:Raises",
    "exits": "brokenjobs.exits_at_import:Exits",
    "no-class": "brokenjobs.ok:Missing",
    "no-module": "brokenjobs.absent:Job",
    "not-a-job": "brokenjobs.ok:NOT_A_JOB",
}


def _rebundled(packed: Path, dest: Path, jobs: list[JobSpec]) -> Path:
    """The packed bundle's wheels under a manifest listing ``jobs`` instead."""
    manifest = read_manifest(packed)
    wheels = dest / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(packed) as archive:
        for name in manifest.files:
            (wheels / Path(name).name).write_bytes(archive.read(name))
    bundle = dest / packed.name
    write_bundle(
        bundle,
        name=manifest.name,
        version=manifest.version,
        requires_python=manifest.requires_python,
        project_wheel=manifest.project_wheel,
        jobs=jobs,
        wheels=sorted(wheels.glob("*.whl")),
    )
    return bundle


@pytest.fixture(scope="module")
def brokenjobs(client: RunlyClient, tmp_path_factory: pytest.TempPathFactory) -> PackageVersionView:
    """brokenjobs packed (its one declared job loads), then its manifest given the jobs that cannot load, as a
    package whose imports depend on what the node has would present them; pushed through the API."""
    packed = pack_project(BROKEN_PROJECT, tmp_path_factory.mktemp("dist"))
    (ok,) = read_manifest(packed).jobs
    extra = [ok.model_copy(update={"name": name, "entry_point": target}) for name, target in UNLOADABLE.items()]
    return client.push(_rebundled(packed, tmp_path_factory.mktemp("broken"), [ok, *extra]))


@pytest.mark.parametrize("job", sorted(UNLOADABLE))
def test_a_job_that_cannot_be_loaded_fails_once_as_a_package_error(
    client: RunlyClient, brokenjobs: PackageVersionView, job: str
) -> None:
    # Given a run that may take three attempts, of a job whose class cannot be loaded
    run = client.enqueue(EnqueueRunRequest(package="brokenjobs", job=job, max_attempts=3))

    # When the node runs it
    run = client.wait(run.id, timeout=120)

    # Then it failed at its first attempt, as a package error naming the entry point, and was not retried
    assert run.state is RunState.FAILED, run
    assert [attempt.reason for attempt in run.attempts] == [FailureReason.PACKAGE_ERROR]
    assert run.error is not None and run.error.reason is FailureReason.PACKAGE_ERROR
    assert run.error.type == "JobNotLoaded"
    assert UNLOADABLE[job] in run.error.message

    # And the node still serves: the package's job that loads runs at once
    ok = client.wait(client.enqueue(EnqueueRunRequest(package="brokenjobs", job="ok")).id, timeout=120)
    assert ok.state is RunState.SUCCEEDED and ok.output == {"ok": True}


def _write_bytes_of(pid: int) -> int:
    """Bytes the process passed to write() so far (files, pipes, sockets): /proc/<pid>/io's wchar."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/io has no wchar")


def test_a_bundle_that_inflates_to_gigabytes_pushed_past_the_api_is_refused_by_the_node(
    stack: EmbeddedStack, client: RunlyClient, hello: PackageVersionView, tmp_path: Path
) -> None:
    # Given a 2 MB bundle whose wheel holds 2 GiB of zeros, written straight into the feed and the table (as
    # someone holding the API's own S3 and DynamoDB rights could), so registration never saw it
    bomb = bomb_bundle(tmp_path, "bombjobs", "1.0.0", [zeros("bombjobs/zeros.bin", 2048)])
    assert bomb.stat().st_size < 3 * 1024 * 1024
    digest = sha256_file(bomb)
    key = f"packages/bombjobs/1.0.0/{digest}.runly"
    stack.client("s3").put_object(Bucket=stack.names.feed_bucket, Key=key, Body=bomb.read_bytes())
    greet = JobSpec(name="greet", entry_point="bombjobs.jobs:Greet", config_schema={"type": "object"})
    record = PackageRecord(
        name="bombjobs", version="1.0.0", sha256=digest, size=bomb.stat().st_size, key=key,
        requires_python=">=3.11", jobs_json=f"[{greet.model_dump_json()}]", created_at=iso(utcnow()),
    )  # fmt: skip
    dynamodb = stack.session().resource("dynamodb", endpoint_url=stack.endpoint)
    dynamodb.Table(stack.names.table).put_item(Item=record.to_item())
    (agent,) = (child for child in stack.children if child.name.startswith("local-node"))
    written_before = _write_bytes_of(agent.process.pid)

    # When a run of it is enqueued
    run = client.wait(
        client.enqueue(EnqueueRunRequest(package="bombjobs", version="1.0.0", job="greet", max_attempts=3)).id,
        timeout=120,
    )

    # Then the node refused the package before extracting it: one attempt, package_error, the sizes named
    assert run.state is RunState.FAILED, run
    assert [attempt.reason for attempt in run.attempts] == [FailureReason.PACKAGE_ERROR]
    assert run.error is not None and "inflates from" in run.error.message and "2147483648 bytes" in run.error.message
    assert str(stack.state_dir) not in run.error.message  # the bundle is named by its hash, not a node's path
    # And what the agent wrote meanwhile is the download and its bookkeeping, not gigabytes
    assert _write_bytes_of(agent.process.pid) - written_before < 64 * 1024 * 1024
    cache = stack.state_dir / "package-cache"
    assert not (cache / "envs" / digest).exists()
    assert [p.name for p in (cache / "tmp").iterdir() if p.name.startswith(digest)] == []

    # And the node still serves
    hello_run = client.wait(
        client.enqueue(EnqueueRunRequest(package="hello", job="hello", config={"name": "Ada", "times": 1})).id,
        timeout=120,
    )
    assert hello_run.state is RunState.SUCCEEDED, hello_run.error


def _api(client: RunlyClient, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        client.base_url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {client.api_key}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _upload(ticket: dict[str, Any], bundle: Path) -> int:
    """The PUT a client makes with a ticket: to its URL, with exactly its headers."""
    request = urllib.request.Request(ticket["url"], data=bundle.read_bytes(), method="PUT", headers=ticket["headers"])
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_an_upload_url_issued_before_registration_cannot_change_what_runs(client: RunlyClient, tmp_path: Path) -> None:
    # Given brokenjobs 1.0.1 as two bundles, A and B (the same wheels, manifests that differ), and an upload URL
    # for each, both issued before the version is registered
    project = shutil.copytree(BROKEN_PROJECT, tmp_path / "project", ignore=shutil.ignore_patterns("*.egg-info"))
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "1.0.0"', 'version = "1.0.1"'))
    packed = pack_project(project, tmp_path / "dist")
    (ok,) = read_manifest(packed).jobs
    bundle_a = _rebundled(packed, tmp_path / "a", [ok])
    bundle_b = _rebundled(packed, tmp_path / "b", [ok, ok.model_copy(update={"name": "second"})])
    stated = {
        bundle: {"name": "brokenjobs", "version": "1.0.1", "sha256": sha256_file(bundle), "size": bundle.stat().st_size}
        for bundle in (bundle_a, bundle_b)
    }
    ticket_a = _api(client, "/packages/uploads", stated[bundle_a])
    ticket_b = _api(client, "/packages/uploads", stated[bundle_b])

    # When A is uploaded and registered, then B is uploaded with its own URL
    assert _upload(ticket_a, bundle_a) == 200
    registered = _api(client, "/packages", stated[bundle_a])
    _upload(ticket_b, bundle_b)

    # Then the version is A, and a run of it on the node gets A's bytes (the node checks their SHA-256) and runs
    assert registered["sha256"] == client.get_version("brokenjobs", "1.0.1").sha256 == sha256_file(bundle_a)
    run = client.wait(
        client.enqueue(EnqueueRunRequest(package="brokenjobs", version="1.0.1", job="ok")).id, timeout=120
    )
    assert run.state is RunState.SUCCEEDED, run.error
    assert [job.name for job in client.get_version("brokenjobs", "1.0.1").jobs] == ["ok"]

    # And A's own URL cannot replace A either: it creates its object once
    assert _upload(ticket_a, bundle_b) == 412
