from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from functions.api.auth import require
from functions.api.dependencies import services
from functions.api.observability import count
from functions.api.openapi import declare
from functions.logic import packages
from runly_core.contracts import (
    PackageSummaryList,
    PackageVersionList,
    PackageVersionView,
    RegisterPackageRequest,
    Scope,
    UploadRequest,
    UploadTicket,
    normalize_package_name,
)

router = APIGatewayHttpRouter()

# Any spelling of a package name; PEP 503 normalisation (``My_Pkg`` is ``my-pkg``) follows.
PackageNamePath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$", description="the package's name")
]
VersionPath = Annotated[str, Path(min_length=1, max_length=64, description="a PEP 440 version, e.g. 1.2.0")]


@router.post(
    "/uploads",
    summary="Request a presigned upload URL for a bundle",
    status_code=201,
    responses=declare(201, "Where and how to PUT the bundle", 409, 422),
    tags=["packages"],
)
def request_upload(body: UploadRequest) -> tuple[UploadTicket, int]:
    require(router.current_event, Scope.WRITE)
    deps = services()
    return packages.request_upload(body, store=deps.store, feed=deps.feed), 201


@router.post(
    "",
    summary="Register an uploaded bundle (verified server-side)",
    status_code=201,
    description="The bundle is downloaded and verified (sizes, SHA-256 of every file, what its wheels unpack to), "
    "and every job's config_schema checked: JSON Schema 2020-12, references only within the schema (never fetched), "
    "patterns a linear-time engine compiles, a bounded cost of validating a config (docs/api.md). 422 names the job "
    "and the place in its schema; 413 a job spec over its byte limit; 503 when the feed cannot be read.",
    responses=declare(201, "The registered version", 404, 409, 422, 503),
    tags=["packages"],
)
def register(body: RegisterPackageRequest) -> tuple[PackageVersionView, int]:
    require(router.current_event, Scope.WRITE)
    deps = services()
    registered = packages.register(body, store=deps.store, feed=deps.feed)
    count("PackagesRegistered")
    return registered, 201


@router.get(
    "",
    summary="List packages: latest version, number of versions, last registration",
    responses=declare(200, "Every package of the feed, by name"),
    tags=["packages"],
)
def list_packages() -> PackageSummaryList:
    require(router.current_event, Scope.READ)
    return PackageSummaryList(items=packages.list_packages(store=services().store))


@router.get(
    "/<name>/versions",
    summary="List a package's versions, newest first (PEP 440 ordering)",
    responses=declare(200, "The versions, newest first", 404),
    tags=["packages"],
)
def list_versions(name: PackageNamePath) -> PackageVersionList:
    require(router.current_event, Scope.READ)
    return PackageVersionList(items=packages.list_versions(normalize_package_name(name), store=services().store))


@router.get(
    "/<name>/versions/<version>",
    summary="Show one version: its jobs, their config JSON schemas and default configs",
    responses=declare(200, "The version", 404),
    tags=["packages"],
)
def get_version(name: PackageNamePath, version: VersionPath) -> PackageVersionView:
    require(router.current_event, Scope.READ)
    return packages.get_version(normalize_package_name(name), version, store=services().store)
