"""Use cases of the package feed: request an upload, register an uploaded bundle, list, resolve a version."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from functions.dal.feed import Feed
from functions.dal.store import AlreadyExists, Store
from runly.sizes import NotJson, stored_json, utf8_size
from runly.wire import JobSpec
from runly_core.bundle import BUNDLE_SUFFIX, PackageError, bundle_file_name, sha256_file, verify_bundle
from runly_core.contracts import PackageSummary, PackageVersionView, RegisterPackageRequest, UploadRequest, UploadTicket
from runly_core.records import PackageIndexRecord, PackageRecord, PinRecord, iso, utcnow
from runly_core.resources import (
    MAX_JOB_SPEC_BYTES,
    MAX_JOBS_BYTES,
    MAX_PACKAGE_BYTES,
    PACKAGES_PREFIX,
    UPLOAD_URL_EXPIRY_SECONDS,
)

from .config_schemas import SchemaRefused, check_schema
from .errors import Conflict, NotFound, TooLarge, Unavailable, Unprocessable

log = logging.getLogger(__name__)


def bundle_key(name: str, version: str, sha256: str) -> str:
    """Where an upload of these bytes goes: one key per content, so no upload can replace the object another
    registered (the key names its bytes; S3 checks the checksum of the PUT, and the PUT creates only)."""
    return f"{PACKAGES_PREFIX}{name}/{version}/{sha256}{BUNDLE_SUFFIX}"


def _ensure_new(store: Store, name: str, version: str) -> None:
    if any(Version(r.version) == Version(version) for r in store.package_versions(name)):
        raise Conflict(f"package {name} {version} is already registered; versions are immutable", field="version")


def request_upload(request: UploadRequest, *, store: Store, feed: Feed) -> UploadTicket:
    if request.size > MAX_PACKAGE_BYTES:
        raise Unprocessable(f"bundle is {request.size} bytes; the limit is {MAX_PACKAGE_BYTES}", field="size")
    _ensure_new(store, request.name, request.version)
    key = bundle_key(request.name, request.version, request.sha256)
    url, headers = feed.presign_put(
        key, sha256_hex=request.sha256, size=request.size, expires_in=UPLOAD_URL_EXPIRY_SECONDS
    )
    return UploadTicket(
        url=url, headers=headers, key=key, expires_at=utcnow() + timedelta(seconds=UPLOAD_URL_EXPIRY_SECONDS)
    )


def register(request: RegisterPackageRequest, *, store: Store, feed: Feed) -> PackageVersionView:
    """Verify the uploaded bundle ourselves (size, SHA-256, manifest, every file, what its wheels unpack to)
    before anyone can run it, and bind the version to that very object (key, ETag, S3 version)."""
    _ensure_new(store, request.name, request.version)
    key = bundle_key(request.name, request.version, request.sha256)
    try:
        stored = feed.head(key)
    except Exception as exc:
        log.warning("reading %s from the package feed failed", key, exc_info=True)
        raise Unavailable("the package feed could not be read; nothing was registered, retry") from exc
    if stored is None:
        raise NotFound(
            f"no upload found for {request.name} {request.version} with that sha256; request an upload first"
        )
    if stored.size != request.size:
        raise Unprocessable(f"uploaded bundle is {stored.size} bytes, not the {request.size} stated", field="size")
    shown = bundle_file_name(request.name, request.version)  # what messages call it: not this function's scratch path
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / shown
        try:
            feed.download(key, path, version_id=stored.version_id)
        except Exception as exc:
            log.warning("downloading %s from the package feed failed", key, exc_info=True)
            raise Unavailable(
                "the uploaded bundle could not be downloaded from the feed; nothing was registered, retry"
            ) from exc
        actual = sha256_file(path)
        if actual != request.sha256:
            raise Unprocessable(f"uploaded bundle has SHA-256 {actual}, not the one stated", field="sha256")
        try:
            # The whole file's hash was checked just above: verification need not hash it again.
            manifest = verify_bundle(path, None, shown=shown)
        except PackageError as exc:
            raise Unprocessable(f"invalid bundle: {exc}", field="bundle") from exc
    if (manifest.name, Version(manifest.version)) != (request.name, Version(request.version)):
        raise Unprocessable(
            f"bundle manifest is {manifest.name} {manifest.version}, not {request.name} {request.version}",
            field="name",
        )
    jobs_json = _checked_jobs(manifest.jobs)
    record = PackageRecord(
        name=request.name,
        version=request.version,
        sha256=request.sha256,
        size=stored.size,
        key=key,
        requires_python=manifest.requires_python,
        jobs_json=jobs_json,
        created_at=iso(utcnow()),
        etag=stored.etag,
        object_version=stored.version_id,
    )
    try:
        store.put_new_package(record)
    except AlreadyExists as exc:
        raise Conflict(f"package {request.name} {request.version} is already registered", field="version") from exc
    return record.view()


def _checked_jobs(jobs: list[JobSpec]) -> str:
    """The jobs as the version's item stores them, once each job's spec is within its size and its config schema
    is one runly can validate configs against (functions.logic.config_schemas): 413 or 422 naming the job."""
    specs = []
    for index, job in enumerate(jobs):
        field = f"bundle.jobs[{index}]"
        try:
            spec = stored_json(job.model_dump(mode="json"), f"the spec of job {job.name!r}")
        except NotJson as exc:
            raise Unprocessable(f"invalid bundle: {exc}", field=field) from exc
        size = utf8_size(spec)
        if size > MAX_JOB_SPEC_BYTES:
            raise TooLarge(
                f"the spec of job {job.name!r} (its config schema and default config) is {size} bytes as JSON; "
                f"the limit is {MAX_JOB_SPEC_BYTES}",
                field=field,
            )
        try:
            check_schema(job.config_schema)
        except SchemaRefused as exc:
            raise Unprocessable(f"invalid bundle: {exc.describe(job.name)}", field=f"{field}.config_schema") from exc
        specs.append(spec)
    jobs_json = "[" + ",".join(specs) + "]"
    if utf8_size(jobs_json) > MAX_JOBS_BYTES:
        raise TooLarge(
            f"the specs of the bundle's {len(specs)} jobs are {utf8_size(jobs_json)} bytes as JSON together; the "
            f"limit is {MAX_JOBS_BYTES}",
            field="bundle.jobs",
        )
    return jobs_json


def newest(versions: Iterable[Version]) -> Version | None:
    """The newest final release; the newest pre-release only when there is no final one (as pip chooses)."""
    ordered = sorted(versions)
    if not ordered:
        return None
    finals = [version for version in ordered if not version.is_prerelease]
    return (finals or ordered)[-1]


def allowed_by(pin: PinRecord, version: Version, *, explicit: bool) -> bool:
    """Whether the pin allows a version. A pre-release counts only if the specifier names one, or the run
    names that very version (asking for ``2.0rc1`` explicitly is asking for a pre-release)."""
    specifier = SpecifierSet(pin.specifier)
    return specifier.contains(version, prereleases=True if explicit else bool(specifier.prereleases))


def _named_version(name: str, wanted: Version, *, store: Store) -> PackageRecord:
    # Versions are stored as registered, in normal form (runly_core.contracts.PackageVersion), as requests are; the
    # index is read only when that misses (no such version, or one spelt otherwise: 1.0 is 1.0.0).
    record = store.get_package(name, str(wanted))
    if record is not None:
        return record
    return _spelt_otherwise(name, wanted, store=store)


def _spelt_otherwise(name: str, wanted: Version, *, store: Store) -> PackageRecord:
    """The version ``wanted`` when no item has its normal form as key: one spelt otherwise, from the index."""
    index = store.get_package_index(name)
    if index is None:
        raise NotFound(f"no package named {name!r} in the feed", field="package")
    spelt = next((v for v in index.versions if Version(v) == wanted and v != str(wanted)), None)
    record = store.get_package(name, spelt) if spelt is not None else None
    if record is None:
        raise NotFound(f"package {name!r} has no version {wanted}", field="version")
    return record


def _allowed_named(name: str, version: str, record: PackageRecord, *, pin: PinRecord | None) -> PackageRecord:
    if pin is not None and not allowed_by(pin, Version(record.version), explicit=True):
        raise Conflict(
            f"version {version} of {name!r} is outside the pin {pin.specifier!r} of environment "
            f"{pin.environment!r}; omit the version or change the pin",
            field="version",
        )
    return record


def _newest_allowed(
    name: str, index: PackageIndexRecord | None, *, store: Store, pin: PinRecord | None
) -> PackageRecord:
    if index is None or not index.versions:
        raise NotFound(f"no package named {name!r} in the feed", field="package")
    registered = {Version(v): v for v in index.versions}
    candidates = [v for v in registered if pin is None or allowed_by(pin, v, explicit=False)]
    chosen = newest(candidates)
    if chosen is None:
        assert pin is not None  # without a pin every registered version is a candidate
        listed = ", ".join(str(v) for v in sorted(registered))
        raise Conflict(
            f"no version of {name!r} satisfies the pin {pin.specifier!r} of environment {pin.environment!r} "
            f"(registered: {listed})",
            field="version",
        )
    newest_allowed = store.get_package(name, registered[chosen])
    if newest_allowed is None:  # only if the index and the version items disagree, which registration rules out
        raise NotFound(f"package {name!r} has no version {chosen}", field="version")
    return newest_allowed


def resolve_version(name: str, version: str | None, *, store: Store, pin: PinRecord | None = None) -> PackageRecord:
    """The version a run gets: the one named (if the environment's pin allows it), else the newest allowed.

    Reads one version item, never every version's (whose job schemas make them the feed's large items): the one
    named, or the one chosen from the package's index entry (its versions, nothing else). Registration writes both
    in one transaction, so a version the index names exists.
    """
    if version is not None:
        record = _named_version(name, Version(version), store=store)
        return _allowed_named(name, version, record, pin=pin)
    return _newest_allowed(name, store.get_package_index(name), store=store, pin=pin)


def resolve_in_environment(environment: str, name: str, version: str | None, *, store: Store) -> PackageRecord:
    """``resolve_version`` under the environment's pin, the pin read in the same round trip (one BatchGetItem) as
    what resolution reads first: the version named (none when the Store has it in memory), else the index entry.

    So a run that names a version costs one read (three when it is spelt otherwise: 1.0 for 1.0.0), one that
    names none two (the chosen version's item, unless in memory). The pin is read on every call, never kept.
    """
    if version is not None:
        wanted = Version(version)
        read = store.get_pin_and_package(environment, name, version=str(wanted))
        record = read.version or _spelt_otherwise(name, wanted, store=store)
        return _allowed_named(name, version, record, pin=read.pin)
    read = store.get_pin_and_package(environment, name, index=True)
    return _newest_allowed(name, read.index, store=store, pin=read.pin)


# ---------------------------------------------------------------- the feed, read


def list_packages(*, store: Store) -> list[PackageSummary]:
    summaries = []
    for entry in sorted(store.package_index(), key=lambda e: e.name):
        latest = newest(Version(v) for v in entry.versions)
        if latest is None:
            continue
        summaries.append(
            PackageSummary(
                name=entry.name,
                latest_version=str(latest),
                version_count=len(entry.versions),
                updated_at=datetime.fromisoformat(entry.updated_at),
            )
        )
    return summaries


def list_versions(name: str, *, store: Store) -> list[PackageVersionView]:
    records = store.package_versions(name)
    if not records:
        raise NotFound(f"no package named {name!r} in the feed", field="name")
    return [record.view() for record in sorted(records, key=lambda r: Version(r.version), reverse=True)]


def get_version(name: str, version: str, *, store: Store) -> PackageVersionView:
    records = store.package_versions(name)
    if not records:
        raise NotFound(f"no package named {name!r} in the feed", field="name")
    try:
        wanted = Version(version)
    except InvalidVersion:
        raise Unprocessable(f"{version!r} is not a PEP 440 version", field="version") from None
    for record in records:
        if Version(record.version) == wanted:
            return record.view()
    raise NotFound(f"package {name!r} has no version {version}", field="version")
