"""The HTTP API's Lambda authorizer: REQUEST type, payload 2.0, simple responses.

API Gateway calls it before the API function with the request's headers (identity source:
``$request.header.Authorization``, so a request without that header is answered 401 without calling it). It
answers ``{"isAuthorized": bool, "context": {...}}``; API Gateway answers 403 on false and otherwise passes the
context to the API function as ``requestContext.authorizer.lambda``, where ``functions.api.auth`` reads it.

API Gateway caches each answer (allowed or refused, with its context) per Authorization header for
``runly_core.resources.AUTHORIZER_RESULT_TTL_SECONDS``, and the local gateway does the same: a revoked key keeps
working at most that long. The answer depends on the key alone, never on the route, so one cached answer is right
for every route; and a key's scope and environment never change, so the cached context cannot go stale. Nothing
is cached here besides: a second cache would add its TTL to the bound. Each call reads the key with a consistent
read.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.dal.keys import key_store_of
from functions.settings import get_authorizer_settings
from runly_core.key_store import KeyStore
from runly_core.keys import key_id_of, secret_matches
from runly_core.records import KeyRecord

SERVICE = "runly-authorizer"
logger = Logger(service=SERVICE)
metrics = Metrics(namespace="runly", service=SERVICE)


@lru_cache(maxsize=1)
def key_store() -> KeyStore:
    return key_store_of(get_authorizer_settings().table_name)


def bearer_secret(event: dict[str, Any]) -> str | None:
    """The secret of ``Authorization: Bearer <secret>`` (payload 2.0 headers are lower-case), or None."""
    value = (event.get("headers") or {}).get("authorization") or ""
    scheme, _, secret = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return secret.strip() or None


def allow(record: KeyRecord) -> dict[str, Any]:
    # Context values must be strings, numbers or booleans: "" stands for "no environment".
    return {
        "isAuthorized": True,
        "context": {"key_id": record.key_id, "scope": record.scope.value, "environment": record.environment or ""},
    }


def deny(reason: str, key_id: str | None = None) -> dict[str, Any]:
    logger.info("request denied", reason=reason, key_id=key_id)
    metrics.add_metric(name="RequestsDenied", unit=MetricUnit.Count, value=1)
    return {"isAuthorized": False}


def authorize(event: dict[str, Any], store: KeyStore) -> dict[str, Any]:
    secret = bearer_secret(event)
    if secret is None:
        return deny("no bearer token")
    key_id = key_id_of(secret)
    if key_id is None:
        return deny("not a runly API key")
    record = store.get(key_id)
    if record is None:
        return deny("unknown key", key_id)
    if not secret_matches(secret, record):
        return deny("wrong secret", key_id)
    if not record.active:
        return deny("revoked key", key_id)
    logger.append_keys(key_id=record.key_id, scope=record.scope.value)
    return allow(record)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        return authorize(event, key_store())
    finally:
        if metrics.metric_set:  # only denials add one; log_metrics would warn on every allowed request
            metrics.flush_metrics()
