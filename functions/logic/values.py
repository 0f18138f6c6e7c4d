"""Use cases of an environment's variables and secrets (functions/dal/values.py stores them).

A variable is read back whole; a secret never is: the API answers its name, version and update time only, and no
code path here asks the store for a secret's value. Names and values are checked here before SSM sees them, each
refusal naming its field: names by runly.limits.value_name_problem, values by their UTF-8 size
(runly_core.resources.MAX_VALUE_BYTES, SSM's advanced-parameter limit) and for NUL characters (an environment variable
cannot hold one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from functions.dal.queue import RunQueue
from functions.dal.values import StoredValue, ValueLimitReached, ValueStore, ValuesUnavailable
from runly.limits import value_name_problem
from runly_core.contracts import SecretView, ValueRequest, VariableView
from runly_core.resources import MAX_VALUE_BYTES

from .errors import Conflict, NotFound, TooLarge, Unavailable, Unprocessable
from .pins import ensure_environment

VARIABLES, SECRETS = "variables", "secrets"
T = TypeVar("T")


def check_name(name: str) -> None:
    problem = value_name_problem(name)
    if problem is not None:
        raise Unprocessable(f"name {name!r} {problem}", field="name")


def check_value(request: ValueRequest) -> str:
    try:
        size = len(request.value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise Unprocessable("the value is not valid Unicode text (a lone surrogate)", field="value") from exc
    if size > MAX_VALUE_BYTES:
        raise TooLarge(f"the value is {size} bytes of UTF-8; at most {MAX_VALUE_BYTES} are stored", field="value")
    if "\x00" in request.value:
        raise Unprocessable("the value holds a NUL character, which an environment variable cannot", field="value")
    return request.value


def _variable(environment: str, stored: StoredValue) -> VariableView:
    assert stored.value is not None
    return VariableView(
        environment=environment, name=stored.name, value=stored.value, version=stored.version,
        updated_at=stored.updated_at,
    )  # fmt: skip


def _secret(environment: str, stored: StoredValue) -> SecretView:
    return SecretView(environment=environment, name=stored.name, version=stored.version, updated_at=stored.updated_at)


def _put(environment: str, kind: str, name: str, value: str, values: ValueStore) -> None:
    try:
        values.put(environment, kind, name, value, secure=kind == SECRETS)
    except ValueLimitReached as exc:
        raise Conflict(f"SSM Parameter Store refused another parameter or version ({exc})", field="name") from exc
    except ValuesUnavailable as exc:
        raise Unavailable(f"SSM Parameter Store failed ({exc}); nothing was changed, try again") from exc


def _guarded(call: Callable[[], T]) -> T:
    try:
        return call()
    except ValuesUnavailable as exc:
        raise Unavailable(f"SSM Parameter Store failed ({exc}); try again") from exc


def set_variable(
    environment: str, name: str, request: ValueRequest, *, values: ValueStore, queue: RunQueue
) -> VariableView:
    ensure_environment(environment, queue)
    check_name(name)
    value = check_value(request)
    _put(environment, VARIABLES, name, value, values)
    return get_variable(environment, name, values=values, queue=queue)


def get_variable(environment: str, name: str, *, values: ValueStore, queue: RunQueue) -> VariableView:
    ensure_environment(environment, queue)
    check_name(name)
    stored = _guarded(lambda: values.get_variable(environment, name))
    if stored is None:
        raise NotFound(f"environment {environment!r} has no variable {name!r}", field="name")
    return _variable(environment, stored)


def list_variables(environment: str, *, values: ValueStore, queue: RunQueue) -> list[VariableView]:
    ensure_environment(environment, queue)
    return [_variable(environment, stored) for stored in _guarded(lambda: values.variables(environment))]


def set_secret(
    environment: str, name: str, request: ValueRequest, *, values: ValueStore, queue: RunQueue
) -> SecretView:
    ensure_environment(environment, queue)
    check_name(name)
    value = check_value(request)
    _put(environment, SECRETS, name, value, values)
    return get_secret(environment, name, values=values, queue=queue)


def get_secret(environment: str, name: str, *, values: ValueStore, queue: RunQueue) -> SecretView:
    ensure_environment(environment, queue)
    check_name(name)
    found = _guarded(lambda: values.describe(environment, SECRETS, name))
    if not found:
        raise NotFound(f"environment {environment!r} has no secret {name!r}", field="name")
    return _secret(environment, found[0])


def list_secrets(environment: str, *, values: ValueStore, queue: RunQueue) -> list[SecretView]:
    ensure_environment(environment, queue)
    return [_secret(environment, stored) for stored in _guarded(lambda: values.describe(environment, SECRETS))]


def delete_value(environment: str, kind: str, name: str, *, values: ValueStore, queue: RunQueue) -> None:
    ensure_environment(environment, queue)
    check_name(name)
    if not _guarded(lambda: values.delete(environment, kind, name)):
        singular = kind.removesuffix("s")
        raise NotFound(f"environment {environment!r} has no {singular} {name!r}", field="name")
