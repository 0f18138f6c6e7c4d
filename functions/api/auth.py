"""Who is calling: the identity the Lambda authorizer put in the request context, and scope checks.

API Gateway (or the local gateway) runs the authorizer before the API function;
its context arrives as ``requestContext.authorizer.lambda``. The function checks
it again: a request that somehow arrives without it is refused, not trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.event_handler.exceptions import ForbiddenError, UnauthorizedError
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent
from pydantic import BaseModel, ValidationError

from runly_core.contracts import Scope

# What each scope may do, beyond itself.
_IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.ADMIN: frozenset({Scope.ADMIN, Scope.WRITE, Scope.READ}),
    Scope.WRITE: frozenset({Scope.WRITE, Scope.READ}),
    Scope.READ: frozenset({Scope.READ}),
    # A node key reads what its agents need (runs, packages, nodes), in its own environment only.
    Scope.NODE: frozenset({Scope.NODE, Scope.READ}),
}


class Caller(BaseModel):
    key_id: str
    scope: Scope
    environment: str | None = None  # node keys only: the one environment they act for

    def allows(self, needed: Scope) -> bool:
        return needed in _IMPLIES[self.scope]

    def can_see_environment(self, environment: str) -> bool:
        return self.environment is None or self.environment == environment


Event = Mapping[str, Any] | BaseProxyEvent


def caller_from_event(event: Event) -> Caller:
    """The caller the authorizer identified (``requestContext.authorizer.lambda``); 401 when there is none."""
    raw = event.raw_event if isinstance(event, BaseProxyEvent) else event
    context = ((raw.get("requestContext") or {}).get("authorizer") or {}).get("lambda")
    if not context:
        raise UnauthorizedError("missing or invalid API key")
    try:
        return Caller.model_validate({k: v for k, v in context.items() if v not in ("", None)})
    except ValidationError as exc:
        raise UnauthorizedError("missing or invalid API key") from exc


def require(event: Event, needed: Scope, *, environment: str | None = None) -> Caller:
    """The caller, if its key has the scope (and the environment) this operation needs; else 401/403.

    ``event`` is the raw event or the resolver's ``current_event`` (``router.current_event`` in a router).
    """
    caller = caller_from_event(event)
    if not caller.allows(needed):
        raise ForbiddenError(f"this operation needs a key with scope {needed.value}; yours is {caller.scope.value}")
    if environment is not None:
        require_environment(caller, environment)
    return caller


def require_environment(caller: Caller, environment: str) -> None:
    """403 unless the caller may act in ``environment`` (for operations whose environment is known only after a
    lookup, e.g. the run named in the path)."""
    if not caller.can_see_environment(environment):
        raise ForbiddenError(f"this key is limited to environment {caller.environment!r}")
