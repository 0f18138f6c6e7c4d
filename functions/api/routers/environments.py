"""Per-environment settings of the feed: version pins."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from functions.api.auth import require
from functions.api.dependencies import services
from functions.api.observability import count
from functions.api.openapi import declare
from functions.api.routers.packages import PackageNamePath
from functions.logic import pins
from runly_core.contracts import Pin, PinList, PinRequest, Scope, normalize_package_name
from runly_core.resources import ENVIRONMENT_NAME

router = APIGatewayHttpRouter()

EnvironmentPath = Annotated[str, Path(pattern=ENVIRONMENT_NAME.pattern, description="an environment's name")]


@router.get(
    "/<environment>/pins",
    summary="List an environment's version pins",
    responses=declare(200, "The pins, by package", 404),
    tags=["environments"],
)
def list_pins(environment: EnvironmentPath) -> PinList:
    require(router.current_event, Scope.READ, environment=environment)
    deps = services()
    return PinList(items=pins.list_pins(environment, store=deps.store, queue=deps.queue))


@router.get(
    "/<environment>/pins/<package>",
    summary="Show the pin of one package in an environment",
    responses=declare(200, "The pin", 404),
    tags=["environments"],
)
def get_pin(environment: EnvironmentPath, package: PackageNamePath) -> Pin:
    require(router.current_event, Scope.READ, environment=environment)
    deps = services()
    return pins.get_pin(environment, normalize_package_name(package), store=deps.store, queue=deps.queue)


@router.put(
    "/<environment>/pins/<package>",
    summary="Pin a package to a PEP 440 version specifier in an environment (create or replace)",
    description="Runs in the environment that name no version get the newest registered version the specifier "
    "allows (pre-releases only when it names one); a run that names a version outside it is refused with 409.",
    responses=declare(200, "The pin", 404),
    tags=["environments"],
)
def set_pin(environment: EnvironmentPath, package: PackageNamePath, body: PinRequest) -> Pin:
    caller = require(router.current_event, Scope.ADMIN, environment=environment)
    deps = services()
    pin = pins.set_pin(
        environment,
        normalize_package_name(package),
        body,
        updated_by=caller.key_id,
        store=deps.store,
        queue=deps.queue,
    )
    count("PinsSet")
    return pin


@router.delete(
    "/<environment>/pins/<package>",
    summary="Remove a package's pin from an environment: every version is allowed again",
    status_code=204,
    responses=declare(204, "Removed", 404, body=False),
    tags=["environments"],
)
def delete_pin(environment: EnvironmentPath, package: PackageNamePath) -> Response[None]:
    require(router.current_event, Scope.ADMIN, environment=environment)
    deps = services()
    pins.delete_pin(environment, normalize_package_name(package), store=deps.store, queue=deps.queue)
    count("PinsDeleted")
    return Response(status_code=204, body=None)
