"""Use cases of nodes: list them with their status, ask one to drain."""

from __future__ import annotations

from datetime import UTC, datetime

from functions.dal.nodes import NodeAmbiguous, NodeNotFound, NodeStore
from runly_core.contracts import NodeList, NodeStatus, NodeView
from runly_core.records import NodeRecord, utcnow

from .errors import Conflict, NotFound

# DynamoDB keys hold at most 2048 bytes; no node id comes near this.
_MAX_NODE_ID_BYTES = 1024


def view(record: NodeRecord, *, now: datetime) -> NodeView:
    # The agent pushes expires_at past its next heartbeat each time it beats: past it, the node is gone or stuck.
    expires_at = datetime.fromtimestamp(record.expires_at, tz=UTC)
    return NodeView(
        id=record.node_id,
        host=record.host,
        environment=record.environment,
        status=NodeStatus.ONLINE if expires_at > now else NodeStatus.OFFLINE,
        state=record.state,
        capacity=record.capacity,
        running=record.running,
        agent_version=record.agent_version,
        started_at=datetime.fromisoformat(record.started_at),
        last_seen=datetime.fromisoformat(record.last_seen),
        expires_at=expires_at,
        drain_requested=record.drain_requested,
    )


def list_nodes(*, store: NodeStore, environment: str | None, now: datetime | None = None) -> NodeList:
    moment = now or utcnow()
    return NodeList(items=[view(record, now=moment) for record in store.list(environment)])


def drain(node_id: str, *, store: NodeStore, environment: str | None = None, now: datetime | None = None) -> NodeView:
    """Ask a node to drain: it takes no new runs and stops once its running ones end (read on its heartbeat).
    A node's item is keyed by its environment: without ``environment`` the node is looked up in each."""
    if not 0 < len(node_id.encode()) <= _MAX_NODE_ID_BYTES:
        raise NotFound(f"no node {node_id[:64]!r}", field="node_id")
    try:
        record = store.request_drain(node_id, environment)
    except NodeNotFound as exc:
        raise NotFound(f"no node {node_id!r}", field="node_id") from exc
    except NodeAmbiguous as exc:
        raise Conflict(f"{exc}: say which with ?environment=", field="environment") from exc
    return view(record, now=now or utcnow())
