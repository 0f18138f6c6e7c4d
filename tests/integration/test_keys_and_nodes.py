"""Keys, nodes and environment isolation, through the authorizer and the API function as API Gateway chains
them (the local gateway's ``handle``, in-process), against in-process moto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from runly_cli.commands.keys import bootstrap_admin_key
from runly_cli.embedded.gateway import Gateway
from runly_core import resources
from runly_core.contracts import Scope
from runly_core.records import NodeRecord, iso, key_key, node_key, utcnow
from tests.support.api import api_event, function_env  # noqa: F401  (fixture)
from tests.support.runs import put_run, queued_run


class Clock:
    """The gateway's monotonic clock (its authorizer cache's), stepped by the tests."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    gateway: Gateway
    admin: str
    clock: Clock

    def __call__(self, method: str, path: str, key: str | None, body: Any = None, query: str = "") -> tuple[int, Any]:
        event = api_event(
            method, path, body=body, query=query, headers=[("authorization", f"Bearer {key}")] if key else []
        )
        status, _, raw = self.gateway.handle(event)
        return status, json.loads(raw) if raw else None

    def new_key(self, scope: Scope, environment: str | None = None, name: str = "test") -> dict[str, Any]:
        body = {"name": name, "scope": scope.value, **({"environment": environment} if environment else {})}
        status, created = self("POST", "/keys", self.admin, body)
        assert status == 201, created
        return created


@pytest.fixture
def api(function_env: dict[str, str], names: resources.ResourceNames) -> Iterator[Api]:  # noqa: F811
    _, admin = bootstrap_admin_key(names.table)
    # The handlers the stack deploys, chained as API Gateway chains them; no HTTP server needed.
    clock = Clock()
    gateway = Gateway(resources.API_FUNCTION_HANDLER, authorizer=resources.AUTHORIZER_FUNCTION_HANDLER, clock=clock)
    yield Api(gateway, admin, clock)


def _item(names: resources.ResourceNames, key: dict[str, str]) -> dict[str, Any]:
    return boto3.resource("dynamodb").Table(names.table).get_item(Key=key)["Item"]


# ---------------------------------------------------------------- keys


def test_key_lifecycle_create_use_list_revoke(api: Api, names: resources.ResourceNames) -> None:
    # Given a write key created by the admin
    created = api.new_key(Scope.WRITE, name="ci pipeline")
    secret = created["secret"]
    assert (
        created["scope"] == "write"
        and created["prefix"] == f"rly_{created['id']}_"
        and secret.startswith(created["prefix"])
    )

    # Then it works within its scope, and not beyond
    assert api("GET", "/runs", secret)[0] == 200
    assert api("GET", "/keys", secret)[0] == 403

    # And only a hash of it is stored
    item = _item(names, key_key(created["id"]))
    assert secret not in json.dumps(item, default=str) and len(item["secret_sha256"]) == 64

    # When the keys are listed, no secret (nor its hash) is shown
    status, listed = api("GET", "/keys", api.admin)
    assert status == 200
    assert {key["id"] for key in listed["items"]} >= {created["id"]}
    assert all("secret" not in key and "secret_sha256" not in key for key in listed["items"])
    assert secret not in json.dumps(listed)

    # When it is revoked, it keeps working until its cached authorizer answer expires, then is refused
    assert api("DELETE", f"/keys/{created['id']}", api.admin) == (204, None)
    assert api("GET", "/runs", secret)[0] == 200
    api.clock.now += resources.AUTHORIZER_RESULT_TTL_SECONDS
    status, refused = api("GET", "/runs", secret)
    assert (status, refused["code"]) == (403, "forbidden")
    revoked = next(key for key in api("GET", "/keys", api.admin)[1]["items"] if key["id"] == created["id"])
    assert revoked["revoked_at"] is not None
    # Revoking again changes nothing; an unknown key is a 404
    assert api("DELETE", f"/keys/{created['id']}", api.admin)[0] == 204
    assert api("DELETE", "/keys/0123456789abcdef", api.admin)[0] == 404
    assert api("DELETE", "/keys/not-a-key-id", api.admin)[0] == 404


def test_requests_without_a_key_are_401_and_with_a_bad_key_403(api: Api) -> None:
    assert api("GET", "/runs", None)[1]["code"] == "unauthorized"
    assert api("GET", "/runs", None)[0] == 401
    assert api("GET", "/runs", "rly_0123456789abcdef_" + "a" * 43)[0] == 403
    assert api("GET", "/runs", api.admin[:-2] + "xx")[0] == 403


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"name": "n", "scope": "node"}, 422, "environment"),
        ({"name": "n", "scope": "read", "environment": "default"}, 422, "environment"),
        ({"name": "n", "scope": "node", "environment": "elsewhere"}, 404, "environment"),
        ({"name": "n", "scope": "root"}, 422, "scope"),
        ({"name": "", "scope": "read"}, 422, "name"),
        ({"name": "n", "scope": "read", "secret": "mine"}, 422, "secret"),
    ],
)
def test_invalid_key_requests_name_the_field(api: Api, body: dict[str, Any], status: int, field: str) -> None:
    answer = api("POST", "/keys", api.admin, body)
    assert (answer[0], answer[1]["field"]) == (status, field)


def test_keys_record_who_created_them(api: Api) -> None:
    admin_id = api.admin.split("_")[1]
    other_admin = api.new_key(Scope.ADMIN)
    made = api("POST", "/keys", other_admin["secret"], {"name": "by the second admin", "scope": "read"})[1]
    assert other_admin["created_by"] == admin_id and made["created_by"] == other_admin["id"]


# ---------------------------------------------------------------- nodes


def _register_node(names: resources.ResourceNames, node_id: str, environment: str, *, online: bool) -> NodeRecord:
    now = utcnow()
    record = NodeRecord(
        node_id=node_id,
        host=f"{node_id}.internal",
        environment=environment,
        capacity=4,
        running=["run_default_a"],
        agent_version="0.1.0",
        state="busy",
        started_at=iso(now),
        last_seen=iso(now),
        expires_at=int(now.timestamp()) + (31 if online else -1),
    )
    # As the agent writes it: an update of every field but the id, the environment (both in the key) and
    # drain_requested.
    fields = record.model_dump(mode="json", exclude={"node_id", "environment", "drain_requested"})
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key=node_key(environment, node_id),
        UpdateExpression="SET " + ", ".join(f"#{name} = :{name}" for name in fields),
        ExpressionAttributeNames={f"#{name}": name for name in fields},
        ExpressionAttributeValues={f":{name}": value for name, value in fields.items()},
    )
    return record


def test_nodes_are_listed_with_status_derived_from_their_expiry(api: Api, names: resources.ResourceNames) -> None:
    _register_node(names, "eu-1", "default", online=True)
    _register_node(names, "eu-2", "default", online=False)
    _register_node(names, "st-1", "staging", online=True)

    status, listed = api("GET", "/nodes", api.admin)
    assert status == 200
    by_id = {node["id"]: node for node in listed["items"]}
    assert set(by_id) == {"eu-1", "eu-2", "st-1"}
    assert (by_id["eu-1"]["status"], by_id["eu-2"]["status"]) == ("online", "offline")
    assert by_id["eu-1"] | {"last_seen": None, "started_at": None, "expires_at": None} == {
        "id": "eu-1",
        "host": "eu-1.internal",
        "environment": "default",
        "status": "online",
        "state": "busy",
        "capacity": 4,
        "running": ["run_default_a"],
        "agent_version": "0.1.0",
        "started_at": None,
        "last_seen": None,
        "expires_at": None,
        "drain_requested": False,
    }
    staging = api("GET", "/nodes", api.admin, query="environment=staging")[1]["items"]
    assert [node["id"] for node in staging] == ["st-1"]
    assert api("GET", "/nodes", api.admin, query="environment=Not%20An%20Env")[0] == 422


def test_drain_sets_only_drain_requested(api: Api, names: resources.ResourceNames) -> None:
    _register_node(names, "eu-1", "default", online=True)
    before = _item(names, node_key("default", "eu-1"))

    status, drained = api("POST", "/nodes/eu-1/drain", api.admin)

    assert status == 200 and drained["drain_requested"] is True and drained["id"] == "eu-1"
    after = _item(names, node_key("default", "eu-1"))
    assert after == {**before, "drain_requested": True}
    assert api("POST", "/nodes/nowhere/drain", api.admin)[0] == 404
    assert api("POST", "/nodes/eu-1/drain", api.new_key(Scope.WRITE)["secret"])[0] == 403
    assert not [item for item in _scan(names) if "nowhere" in item["pk"]], "drain must not create a node"


def test_a_node_id_registered_in_two_environments_is_drained_by_naming_one(
    api: Api, names: resources.ResourceNames
) -> None:
    _register_node(names, "twin", "default", online=True)
    _register_node(names, "twin", "staging", online=True)

    status, body = api("POST", "/nodes/twin/drain", api.admin)
    assert status == 409 and body["field"] == "environment"

    status, drained = api("POST", "/nodes/twin/drain", api.admin, query="environment=staging")
    assert status == 200 and drained["environment"] == "staging" and drained["drain_requested"] is True
    assert _item(names, node_key("default", "twin")).get("drain_requested") is None


def test_a_node_is_listed_in_the_environment_of_its_key_not_of_what_it_wrote(
    api: Api, names: resources.ResourceNames
) -> None:
    # Given a node of staging whose item says default (a node writes its items-by-kind keys)
    _register_node(names, "liar", "staging", online=True)
    boto3.resource("dynamodb").Table(names.table).update_item(
        Key=node_key("staging", "liar"),
        UpdateExpression="SET gsi3sk = :other, environment = :env",
        ExpressionAttributeValues={":other": "default#liar", ":env": "default"},
    )

    # Then default's nodes do not include it, and nowhere is it shown as default's
    default = api("GET", "/nodes", api.admin, query="environment=default")[1]["items"]
    assert "liar" not in [node["id"] for node in default]
    everywhere = api("GET", "/nodes", api.admin)[1]["items"]
    assert all(node["environment"] != "default" for node in everywhere if node["id"] == "liar")


def _scan(names: resources.ResourceNames) -> list[dict[str, Any]]:
    return boto3.resource("dynamodb").Table(names.table).scan()["Items"]


# ---------------------------------------------------------------- environment isolation


def test_a_node_key_sees_only_its_own_environment(api: Api, names: resources.ResourceNames) -> None:
    # Given runs and nodes in two environments, and a node key of "default"
    mine = queued_run(names, "run_default_0")
    theirs = queued_run(names, "run_staging_1").model_copy(update={"environment": "staging"})
    put_run(boto3.resource("dynamodb").Table(names.table), theirs)
    _register_node(names, "eu-1", "default", online=True)
    _register_node(names, "st-1", "staging", online=True)
    node_key_secret = api.new_key(Scope.NODE, "default")["secret"]

    # Then it reads its environment's run, not the other's
    assert api("GET", f"/runs/{mine.run_id}", node_key_secret)[0] == 200
    status, refused = api("GET", f"/runs/{theirs.run_id}", node_key_secret)
    assert (status, refused["code"]) == (403, "forbidden")
    # Nor does a search or a node listing show the other environment
    assert api("GET", "/runs", node_key_secret, query="environment=staging")[0] == 403
    assert {run["id"] for run in api("GET", "/runs", node_key_secret)[1]["items"]} == {mine.run_id}
    assert api("GET", "/nodes", node_key_secret, query="environment=staging")[0] == 403
    assert [node["id"] for node in api("GET", "/nodes", node_key_secret)[1]["items"]] == ["eu-1"]
    # And it may not act on runs at all
    assert api("POST", f"/runs/{mine.run_id}/cancel", node_key_secret)[0] == 403
    # While a read key sees both
    read_secret = api.new_key(Scope.READ)["secret"]
    assert api("GET", f"/runs/{theirs.run_id}", read_secret)[0] == 200
