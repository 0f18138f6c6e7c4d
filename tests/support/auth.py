"""API events as API Gateway passes them on once the authorizer has allowed the request."""

from __future__ import annotations

from typing import Any

from runly_core.contracts import Scope


def authorizer_context(
    scope: Scope | str = Scope.ADMIN, environment: str | None = None, key_id: str = "test-key"
) -> dict[str, str]:
    return {"key_id": key_id, "scope": str(Scope(scope).value), "environment": environment or ""}


def as_caller(
    event: dict[str, Any], scope: Scope | str = Scope.ADMIN, environment: str | None = None, key_id: str = "test-key"
) -> dict[str, Any]:
    """``event`` with the authorizer's context at ``requestContext.authorizer.lambda``, as API Gateway adds it."""
    event["requestContext"]["authorizer"] = {"lambda": authorizer_context(scope, environment, key_id)}
    return event
