"""Per-environment settings: version pins of the feed, and the variables and secrets jobs get."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from functions.api.auth import require
from functions.api.dependencies import services, value_store
from functions.api.observability import count
from functions.api.openapi import declare
from functions.api.routers.packages import PackageNamePath
from functions.logic import pins, values
from runly.limits import VALUE_NAME
from runly_core.contracts import (
    Pin,
    PinList,
    PinRequest,
    Scope,
    SecretList,
    SecretView,
    ValueRequest,
    VariableList,
    VariableView,
    normalize_package_name,
)
from runly_core.resources import ENVIRONMENT_NAME, MAX_VALUE_BYTES

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


# ---------------------------------------------------------------- variables and secrets (functions/logic/values.py)

ValueNamePath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        description=f"the name: it becomes an environment variable of the job process ({VALUE_NAME.pattern})",
    ),
]


@router.get(
    "/<environment>/variables",
    summary="List an environment's variables, with their values",
    responses=declare(200, "The variables, by name", 404),
    tags=["environments"],
)
def list_variables(environment: EnvironmentPath) -> VariableList:
    require(router.current_event, Scope.READ, environment=environment)
    return VariableList(items=values.list_variables(environment, values=value_store(), queue=services().queue))


@router.get(
    "/<environment>/variables/<name>",
    summary="Show one variable of an environment",
    responses=declare(200, "The variable", 404, 422),
    tags=["environments"],
)
def get_variable(environment: EnvironmentPath, name: ValueNamePath) -> VariableView:
    require(router.current_event, Scope.READ, environment=environment)
    return values.get_variable(environment, name, values=value_store(), queue=services().queue)


@router.put(
    "/<environment>/variables/<name>",
    summary="Set a variable of an environment (create or replace)",
    description=f"A job that names it in its manifest (Job.variables) gets it as an environment variable of its "
    f"process, from its next run on. At most {MAX_VALUE_BYTES} bytes of UTF-8.",
    responses=declare(200, "The variable", 404, 409, 413, 422, 503),
    tags=["environments"],
)
def set_variable(environment: EnvironmentPath, name: ValueNamePath, body: ValueRequest) -> VariableView:
    require(router.current_event, Scope.ADMIN, environment=environment)
    variable = values.set_variable(environment, name, body, values=value_store(), queue=services().queue)
    count("VariablesSet")
    return variable


@router.delete(
    "/<environment>/variables/<name>",
    summary="Delete a variable of an environment",
    status_code=204,
    responses=declare(204, "Deleted", 404, 422, body=False),
    tags=["environments"],
)
def delete_variable(environment: EnvironmentPath, name: ValueNamePath) -> Response[None]:
    require(router.current_event, Scope.ADMIN, environment=environment)
    values.delete_value(environment, values.VARIABLES, name, values=value_store(), queue=services().queue)
    count("VariablesDeleted")
    return Response(status_code=204, body=None)


@router.get(
    "/<environment>/secrets",
    summary="List an environment's secrets: names, versions and update times, never a value",
    responses=declare(200, "The secrets, by name", 404),
    tags=["environments"],
)
def list_secrets(environment: EnvironmentPath) -> SecretList:
    require(router.current_event, Scope.READ, environment=environment)
    return SecretList(items=values.list_secrets(environment, values=value_store(), queue=services().queue))


@router.get(
    "/<environment>/secrets/<name>",
    summary="Show one secret of an environment: its name, version and update time, never its value",
    responses=declare(200, "The secret", 404, 422),
    tags=["environments"],
)
def get_secret(environment: EnvironmentPath, name: ValueNamePath) -> SecretView:
    require(router.current_event, Scope.READ, environment=environment)
    return values.get_secret(environment, name, values=value_store(), queue=services().queue)


@router.put(
    "/<environment>/secrets/<name>",
    summary="Set a secret of an environment (create or replace); write-only: the API never returns its value",
    description=f"Stored as an SSM SecureString (KMS-encrypted). A job that names it in its manifest (Job.secrets) "
    f"gets it as an environment variable of its process, and the agent redacts it from the run's shipped log. At "
    f"most {MAX_VALUE_BYTES} bytes of UTF-8.",
    responses=declare(200, "The secret (without its value)", 404, 409, 413, 422, 503),
    tags=["environments"],
)
def set_secret(environment: EnvironmentPath, name: ValueNamePath, body: ValueRequest) -> SecretView:
    require(router.current_event, Scope.ADMIN, environment=environment)
    secret = values.set_secret(environment, name, body, values=value_store(), queue=services().queue)
    count("SecretsSet")
    return secret


@router.delete(
    "/<environment>/secrets/<name>",
    summary="Delete a secret of an environment (runs of jobs that need it then fail before they start)",
    status_code=204,
    responses=declare(204, "Deleted", 404, 422, body=False),
    tags=["environments"],
)
def delete_secret(environment: EnvironmentPath, name: ValueNamePath) -> Response[None]:
    require(router.current_event, Scope.ADMIN, environment=environment)
    values.delete_value(environment, values.SECRETS, name, values=value_store(), queue=services().queue)
    count("SecretsDeleted")
    return Response(status_code=204, body=None)
