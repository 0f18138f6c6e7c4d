"""Use cases of the package feed: request an upload, register an uploaded bundle, resolve a version."""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path

from packaging.version import Version

from functions.dal.feed import Feed
from functions.dal.store import AlreadyExists, Store
from runly.bundle import PackageError, sha256_file, verify_bundle
from runly.contracts import PackageVersionView, RegisterPackageRequest, UploadRequest, UploadTicket
from runly.records import PackageRecord, iso, utcnow
from runly.resources import MAX_PACKAGE_BYTES, PACKAGES_PREFIX, UPLOAD_URL_EXPIRY_SECONDS

from .errors import Conflict, NotFound, Unprocessable


def bundle_key(name: str, version: str) -> str:
    return f"{PACKAGES_PREFIX}{name}/{version}/{name}-{version}.runly"


def _ensure_new(store: Store, name: str, version: str) -> None:
    if any(Version(r.version) == Version(version) for r in store.package_versions(name)):
        raise Conflict(f"package {name} {version} is already registered; versions are immutable", field="version")


def request_upload(request: UploadRequest, *, store: Store, feed: Feed) -> UploadTicket:
    if request.size > MAX_PACKAGE_BYTES:
        raise Unprocessable(f"bundle is {request.size} bytes; the limit is {MAX_PACKAGE_BYTES}", field="size")
    _ensure_new(store, request.name, request.version)
    key = bundle_key(request.name, request.version)
    url, headers = feed.presign_put(
        key, sha256_hex=request.sha256, size=request.size, expires_in=UPLOAD_URL_EXPIRY_SECONDS
    )
    return UploadTicket(
        url=url, headers=headers, key=key, expires_at=utcnow() + timedelta(seconds=UPLOAD_URL_EXPIRY_SECONDS)
    )


def register(request: RegisterPackageRequest, *, store: Store, feed: Feed) -> PackageVersionView:
    """Verify the uploaded bundle ourselves (size, SHA-256, manifest, every file) before anyone can run it."""
    _ensure_new(store, request.name, request.version)
    key = bundle_key(request.name, request.version)
    size = feed.size_of(key)
    if size is None:
        raise NotFound(f"no upload found for {request.name} {request.version}; request an upload first")
    if size != request.size:
        raise Unprocessable(f"uploaded bundle is {size} bytes, not the {request.size} stated", field="size")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "bundle.runly"
        feed.download(key, path)
        actual = sha256_file(path)
        if actual != request.sha256:
            raise Unprocessable(f"uploaded bundle has SHA-256 {actual}, not the one stated", field="sha256")
        try:
            manifest = verify_bundle(path, request.sha256)
        except PackageError as exc:
            raise Unprocessable(f"invalid bundle: {exc}", field="bundle") from exc
    if (manifest.name, Version(manifest.version)) != (request.name, Version(request.version)):
        raise Unprocessable(
            f"bundle manifest is {manifest.name} {manifest.version}, not {request.name} {request.version}",
            field="name",
        )
    record = PackageRecord(
        name=request.name,
        version=request.version,
        sha256=request.sha256,
        size=size,
        key=key,
        requires_python=manifest.requires_python,
        jobs_json=json.dumps([job.model_dump(mode="json") for job in manifest.jobs]),
        created_at=iso(utcnow()),
    )
    try:
        store.put_new_package(record)
    except AlreadyExists as exc:
        raise Conflict(f"package {request.name} {request.version} is already registered", field="version") from exc
    return record.view()


def resolve_version(name: str, version: str | None, *, store: Store) -> PackageRecord:
    """The exact version asked for, or the newest registered one."""
    records = store.package_versions(name)
    if not records:
        raise NotFound(f"no package named {name!r} in the feed", field="package")
    if version is None:
        return max(records, key=lambda r: Version(r.version))
    for record in records:
        if Version(record.version) == Version(version):
            return record
    raise NotFound(f"package {name!r} has no version {version}", field="version")
