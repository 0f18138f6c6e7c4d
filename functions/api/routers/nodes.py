from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from functions.api.auth import require, require_environment
from functions.api.dependencies import node_store
from functions.api.observability import count
from functions.api.openapi import declare
from functions.logic import nodes
from runly_core.contracts import NodeList, NodeView, Scope
from runly_core.resources import ENVIRONMENT_NAME

router = APIGatewayHttpRouter()


@router.get("", summary="List nodes: online or offline, what they run, their capacity and version", tags=["nodes"])
def list_nodes(
    environment: Annotated[
        str | None, Query(pattern=ENVIRONMENT_NAME.pattern, description="only the nodes of this environment")
    ] = None,
) -> NodeList:
    caller = require(router.current_event, Scope.READ)
    if environment is not None:
        require_environment(caller, environment)
    # A node key sees its own environment's nodes, asked or not.
    return nodes.list_nodes(store=node_store(), environment=environment or caller.environment)


@router.post(
    "/<node_id>/drain",
    summary="Drain a node: it takes no new runs and stops once its running ones end",
    responses=declare(200, "The node, with drain_requested set", 404, 409),
    tags=["nodes"],
)
def drain_node(
    node_id: str,
    environment: Annotated[
        str | None,
        Query(pattern=ENVIRONMENT_NAME.pattern, description="the node's environment, if nodes of several share its id"),
    ] = None,
) -> NodeView:
    require(router.current_event, Scope.ADMIN)
    drained = nodes.drain(node_id, store=node_store(), environment=environment)
    count("NodeDrainsRequested")
    return drained
