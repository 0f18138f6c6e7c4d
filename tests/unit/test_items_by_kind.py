"""Keys and nodes are listed through the sparse items-by-kind index: their items must carry its attributes."""

from __future__ import annotations

from runly_core.contracts import Scope
from runly_core.keys import new_key
from runly_core.records import NodeRecord
from runly_core.resources import ITEMS_BY_KIND


def test_a_node_writes_its_index_attributes_even_through_the_agents_partial_update() -> None:
    node = NodeRecord(
        node_id="eu-1",
        host="h",
        environment="production",
        capacity=2,
        agent_version="0.1.0",
        state="idle",
        started_at="2026-01-01T00:00:00.000Z",
        last_seen="2026-01-01T00:00:00.000Z",
        expires_at=1,
    )
    # The agent writes model_dump() minus a few fields with UpdateItem, not to_item(): both must carry them.
    for written in (node.to_item(), node.model_dump(mode="json", exclude={"node_id", "drain_requested"})):
        assert written[ITEMS_BY_KIND.partition_key] == "NODE"
        assert written[ITEMS_BY_KIND.sort_key] == "production#eu-1"


def test_a_key_item_carries_its_index_attributes() -> None:
    record, _ = new_key(name="k", scope=Scope.READ, environment=None, created_by="bootstrap")
    item = record.to_item()
    assert item[ITEMS_BY_KIND.partition_key] == "KEY"
    assert item[ITEMS_BY_KIND.sort_key] == f"{record.created_at}#{record.key_id}"
