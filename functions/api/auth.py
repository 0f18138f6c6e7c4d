"""Who is calling: the identity the Lambda authorizer put in the request context, and scope checks.

API Gateway (or the local gateway) runs the authorizer before the API function;
its context arrives as ``requestContext.authorizer.lambda``. The function checks
it again: a request that somehow arrives without it is refused, not trusted.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler.exceptions import ForbiddenError, UnauthorizedError
from pydantic import BaseModel, ValidationError

from runly.contracts import Scope

# What each scope may do, beyond itself.
_IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.ADMIN: frozenset({Scope.ADMIN, Scope.WRITE, Scope.READ}),
    Scope.WRITE: frozenset({Scope.WRITE, Scope.READ}),
    Scope.READ: frozenset({Scope.READ}),
    Scope.NODE: frozenset({Scope.NODE}),
}


class Caller(BaseModel):
    key_id: str
    scope: Scope
    environment: str | None = None  # node keys only: the one environment they act for

    def allows(self, needed: Scope) -> bool:
        return needed in _IMPLIES[self.scope]

    def can_see_environment(self, environment: str) -> bool:
        return self.environment is None or self.environment == environment


def caller_from_event(event: dict[str, Any]) -> Caller:
    context = (event.get("requestContext") or {}).get("authorizer", {}).get("lambda")
    if not context:
        raise UnauthorizedError("missing or invalid API key")
    try:
        return Caller.model_validate({k: v for k, v in context.items() if v not in ("", None)})
    except ValidationError as exc:
        raise UnauthorizedError("missing or invalid API key") from exc


def require(event: dict[str, Any], needed: Scope, *, environment: str | None = None) -> Caller:
    """The caller, if its key has the scope (and the environment) this operation needs; else 401/403."""
    caller = caller_from_event(event)
    if not caller.allows(needed):
        raise ForbiddenError(f"this operation needs a key with scope {needed.value}; yours is {caller.scope.value}")
    if environment is not None and not caller.can_see_environment(environment):
        raise ForbiddenError(f"this key is limited to environment {caller.environment!r}")
    return caller
