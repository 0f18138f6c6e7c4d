from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from functions.api.dependencies import services
from functions.logic import packages
from runly.contracts import PackageVersionView, RegisterPackageRequest, UploadRequest, UploadTicket

router = APIGatewayHttpRouter()


@router.post("/uploads", summary="Request a presigned upload URL for a bundle")
def request_upload(body: UploadRequest) -> tuple[UploadTicket, int]:
    deps = services()
    return packages.request_upload(body, store=deps.store, feed=deps.feed), 201


@router.post("", summary="Register an uploaded bundle (verified server-side)")
def register(body: RegisterPackageRequest) -> tuple[PackageVersionView, int]:
    deps = services()
    return packages.register(body, store=deps.store, feed=deps.feed), 201
