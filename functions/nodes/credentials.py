"""Short-lived AWS credentials for on-premises nodes, in exchange for a node key.

``POST /nodes/credentials`` (its own Lambda function behind the HTTP API): the Lambda authorizer has checked the
node key and put its scope and environment in the request context; this function assumes the environment's
``NodeRole`` with a session policy limited to that environment (``functions.nodes.policy``) for 15 minutes, the
least STS allows, so a revoked node key's last credentials stop working within 15 minutes of its last exchange.
The agent calls it again about five minutes before ``expiration`` (node_agent.credentials); no long-lived AWS key
ever sits on the node.
"""

from __future__ import annotations

import json
import re
import uuid
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import ForbiddenError, ServiceError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field

from functions.api.auth import require
from functions.nodes.policy import node_policy_document, without_sids
from functions.nodes.sts import RoleAssumer
from functions.settings import EnvSettings
from runly_core.contracts import ErrorBody, NodeCredentials, Scope

SERVICE = "runly-node-credentials"
ROUTE = "/nodes/credentials"
# STS's minimum: how long credentials issued for a node key outlive the key's revocation, at most.
CREDENTIALS_SECONDS = 900
_SESSION_NAME_UNSAFE = re.compile(r"[^\w+=,.@-]")

logger = Logger(service=SERVICE)


class NodeRoleTarget(BaseModel):
    role_arn: str = Field(description="the environment's NodeRole, which this function may assume")
    queue_arn: str = Field(description="the environment's run queue")


class CredentialsSettings(EnvSettings):
    """The credentials function's environment, validated at cold start."""

    table_arn: str = Field(min_length=20)
    feed_bucket_arn: str = Field(min_length=16)
    parameters_arn: str = Field(
        min_length=20, description="the ARN of the deployment's values path (functions.nodes.policy.parameters_arn)"
    )
    node_roles: dict[str, NodeRoleTarget] = Field(
        min_length=1, description="environment name -> its NodeRole and run queue (JSON)"
    )


class UnknownEnvironment(Exception):
    pass


@lru_cache(maxsize=1)
def get_settings() -> CredentialsSettings:
    return CredentialsSettings.from_environ()


@lru_cache(maxsize=1)
def role_assumer() -> RoleAssumer:
    return RoleAssumer()


def session_name(node_key_id: str) -> str:
    """Names the session after the node key, so CloudTrail shows which key every node call came from."""
    return _SESSION_NAME_UNSAFE.sub("-", f"runly-node-{node_key_id}")[:64]


def session_policy(environment: str, settings: CredentialsSettings) -> str:
    target = settings.node_roles[environment]
    document = node_policy_document(
        environment=environment,
        queue_arn=target.queue_arn,
        feed_bucket_arn=settings.feed_bucket_arn,
        table_arn=settings.table_arn,
        parameters_arn=settings.parameters_arn,
    )
    return json.dumps(without_sids(document), separators=(",", ":"))


def issue_credentials(
    environment: str,
    node_key_id: str,
    *,
    settings: CredentialsSettings | None = None,
    assumer: RoleAssumer | None = None,
) -> NodeCredentials:
    """Credentials for a node of ``environment``, valid for 15 minutes; UnknownEnvironment if the deployment has no
    such environment (a node key outliving its environment)."""
    settings = settings or get_settings()
    if environment not in settings.node_roles:
        raise UnknownEnvironment(environment)
    assumed = (assumer or role_assumer()).assume(
        role_arn=settings.node_roles[environment].role_arn,
        session_name=session_name(node_key_id),
        policy_json=session_policy(environment, settings),
        duration_seconds=CREDENTIALS_SECONDS,
    )
    logger.info("node credentials issued", environment=environment, key_id=node_key_id, expiration=assumed.expiration)
    return NodeCredentials(environment=environment, **assumed.model_dump())


# ---------------------------------------------------------------- the route

app = APIGatewayHttpResolver(enable_validation=True)


@app.post(ROUTE)
def post_credentials() -> NodeCredentials:
    caller = require(app.current_event, Scope.NODE)
    if caller.environment is None:
        raise ForbiddenError("a node key names the environment its agents join; this one names none")
    try:
        return issue_credentials(caller.environment, caller.key_id)
    except UnknownEnvironment as exc:
        raise ForbiddenError(f"this deployment has no environment {caller.environment!r}") from exc


def _error(status: int, body: ErrorBody) -> Response[Any]:
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body.model_dump_json(exclude_none=True)
    )


_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found"}


@app.exception_handler(ServiceError)
def _service_error(exc: ServiceError) -> Response[Any]:
    return _error(exc.status_code, ErrorBody(code=_CODES.get(exc.status_code, "error"), message=str(exc.msg)))


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[Any]:
    correlation_id = str(uuid.uuid4())
    logger.exception("unhandled error", correlation_id=correlation_id)
    return _error(500, ErrorBody(code="internal_error", message="internal error", correlation_id=correlation_id))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
