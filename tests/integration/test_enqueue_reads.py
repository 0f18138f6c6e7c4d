"""What POST /runs (and POST /runs/batch) reads before it records a run, counted with a botocore hook on the
store's DynamoDB client: the pin with the version named in one BatchGetItem, the pin with the index entry then the
chosen version when none is named, version items from memory once read (they never change), pins never."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from functions.api.dependencies import services
from functions.dal import store as store_module
from functions.dal.store import Store
from runly_core.records import PackageRecord
from tests.support.run_api import GREET, Api, api_fixtures, error_field

WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
Call = tuple[str, frozenset[str]]  # operation, what it read ("pin staging", "version 1.0.0", "index"; empty: a write)


stack, aws, api = api_fixtures()  # a new Store per test: its memory of version items starts empty


@pytest.fixture
def greeter(api: Api, tmp_path: Path) -> None:
    """greeter 1.0.0 and 1.5.0, registered once for the module (the table keeps package items between tests)."""
    for version in ("1.0.0", "1.5.0"):
        if api("GET", f"/packages/greeter/versions/{version}").status != 200:
            api.register(tmp_path, "greeter", version)


def _what(key: dict[str, Any]) -> str:
    pk, sk = key["pk"]["S"], key["sk"]["S"]
    if pk == "PACKAGES":
        return "index"
    if sk.startswith("PIN#"):
        return f"pin {pk.removeprefix('ENV#')}"
    if sk.startswith("VER#"):
        return f"version {sk.removeprefix('VER#')}"
    return f"{pk}/{sk}"


@contextmanager
def dynamodb_calls(store: Store) -> Iterator[list[Call]]:
    """Every call the store's client makes meanwhile, in order; every read asserted strongly consistent."""
    calls: list[Call] = []

    def record(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
        body = json.loads(params.get("body") or b"{}")
        if model.name == "GetItem":
            assert body.get("ConsistentRead") is True
            calls.append((model.name, frozenset({_what(body["Key"])})))
        elif model.name == "BatchGetItem":
            (request,) = body["RequestItems"].values()
            assert request.get("ConsistentRead") is True
            calls.append((model.name, frozenset(_what(key) for key in request["Keys"])))
        else:
            calls.append((model.name, frozenset()))

    events = store._client.meta.events  # the Table's client too
    events.register("before-call.dynamodb", record)
    try:
        yield calls
    finally:
        events.unregister("before-call.dynamodb", record)


def reads_before_writing(calls: list[Call]) -> list[Call]:
    first_write = next((index for index, (operation, _) in enumerate(calls) if operation in WRITES), len(calls))
    return calls[:first_write]


def enqueue(api: Api, **fields: Any) -> Any:
    return api("POST", "/runs", {**GREET, **fields})


def test_a_named_version_is_read_with_the_pin_in_one_round_trip_then_from_memory(api: Api, greeter: None) -> None:
    api("PUT", "/environments/staging/pins/greeter", {"specifier": ">=1"})
    store = services().store

    # The first run naming a version: the pin and the version in one BatchGetItem, then the PutItems of the run's
    # config and of the run
    with dynamodb_calls(store) as calls:
        assert enqueue(api, environment="staging", version="1.0.0").body["version"] == "1.0.0"
    assert calls == [("BatchGetItem", {"pin staging", "version 1.0.0"}), ("PutItem", set()), ("PutItem", set())]

    # The next (another environment too): the version from memory, the pin read again (one GetItem)
    with dynamodb_calls(store) as calls:
        assert enqueue(api, environment="staging", version="1.0.0").status == 201
        assert enqueue(api, environment="default", version="1.0.0").status == 201
    assert calls == [
        ("GetItem", {"pin staging"}),
        ("PutItem", set()),
        ("PutItem", set()),
        ("GetItem", {"pin default"}),
        ("PutItem", set()),
        ("PutItem", set()),
    ]

    # A pin changed applies to the very next run, whatever is in memory
    api("PUT", "/environments/staging/pins/greeter", {"specifier": ">=1.5"})
    with dynamodb_calls(store) as calls:
        refused = enqueue(api, environment="staging", version="1.0.0")
    assert refused.status == 409 and error_field(refused) == "version"
    assert refused.body["message"] == (
        "version 1.0.0 of 'greeter' is outside the pin '>=1.5' of environment 'staging'; "
        "omit the version or change the pin"
    )
    assert calls == [("GetItem", {"pin staging"})]


def test_no_version_named_reads_the_pin_with_the_index_then_the_chosen_version(api: Api, greeter: None) -> None:
    store = services().store

    # Two round trips: the pin and the index entry, then the newest allowed version's item
    with dynamodb_calls(store) as calls:
        assert enqueue(api).body["version"] == "1.5.0"
    assert calls == [
        ("BatchGetItem", {"pin default", "index"}),
        ("GetItem", {"version 1.5.0"}),
        ("PutItem", set()),
        ("PutItem", set()),
    ]

    # One once that version is in memory
    with dynamodb_calls(store) as calls:
        assert enqueue(api).body["version"] == "1.5.0"
    assert calls == [("BatchGetItem", {"pin default", "index"}), ("PutItem", set()), ("PutItem", set())]

    # A pin set now applies to the next run
    api("PUT", "/environments/default/pins/greeter", {"specifier": "<1.5"})
    with dynamodb_calls(store) as calls:
        assert enqueue(api).body["version"] == "1.0.0"
    assert reads_before_writing(calls) == [("BatchGetItem", {"pin default", "index"}), ("GetItem", {"version 1.0.0"})]

    api("PUT", "/environments/default/pins/greeter", {"specifier": ">=3"})
    nothing = enqueue(api)
    assert nothing.status == 409 and error_field(nothing) == "version"
    assert nothing.body["message"] == (
        "no version of 'greeter' satisfies the pin '>=3' of environment 'default' (registered: 1.0.0, 1.5.0)"
    )


def test_a_version_spelt_otherwise_or_missing_keeps_its_answer(api: Api, greeter: None) -> None:
    store = services().store

    # 1.0 is 1.0.0: the item keyed 1.0 misses, so the index tells how it was registered
    with dynamodb_calls(store) as calls:
        assert enqueue(api, version="1.0").body["version"] == "1.0.0"
    assert reads_before_writing(calls) == [
        ("BatchGetItem", {"pin default", "version 1.0"}),
        ("GetItem", {"index"}),
        ("GetItem", {"version 1.0.0"}),
    ]
    with dynamodb_calls(store) as calls:
        assert enqueue(api, version="1.0.0").status == 201
    assert reads_before_writing(calls) == [("GetItem", {"pin default"})]

    # No such version, no such package: the same answers as ever, nothing written
    with dynamodb_calls(store) as calls:
        missing = enqueue(api, version="9.9.9")
        unknown = enqueue(api, package="nobody", version="1.0.0")
        unknown_newest = enqueue(api, package="nobody")
    assert (missing.status, error_field(missing)) == (404, "version")
    assert missing.body["message"] == "package 'greeter' has no version 9.9.9"
    assert (unknown.status, error_field(unknown)) == (404, "package")
    assert unknown.body["message"] == "no package named 'nobody' in the feed"
    assert (unknown_newest.status, error_field(unknown_newest)) == (404, "package")
    assert unknown_newest.body["message"] == "no package named 'nobody' in the feed"
    assert not [operation for operation, _ in calls if operation in WRITES]


def test_a_batch_reads_each_pin_and_version_once(api: Api, greeter: None) -> None:
    store = services().store
    items = [
        {**GREET, "version": "1.0.0"},
        {**GREET, "version": "1.0.0", "config": {"name": "Grace"}},
        {**GREET, "version": "1.0.0", "environment": "staging"},
        GREET,
        GREET,
    ]
    with dynamodb_calls(store) as calls:
        reply = api("POST", "/runs/batch", {"runs": items})
    assert reply.status == 201
    assert reads_before_writing(calls) == [
        ("BatchGetItem", {"pin default", "version 1.0.0"}),
        ("GetItem", {"pin staging"}),  # 1.0.0 is in memory by now
        ("BatchGetItem", {"pin default", "index"}),
        ("GetItem", {"version 1.5.0"}),
    ]


def test_version_items_in_memory_are_bounded_and_copies(
    api: Api, greeter: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PACKAGE_CACHE_SIZE", 1)
    store = services().store
    first = store.get_package("greeter", "1.0.0")
    assert isinstance(first, PackageRecord)
    first.sha256 = "changed by a caller"
    with dynamodb_calls(store) as calls:
        again = store.get_package("greeter", "1.0.0")
        assert again is not None and again.sha256 != "changed by a caller"
        store.get_package("greeter", "1.5.0")  # drops 1.0.0: one entry only
        store.get_package("greeter", "1.0.0")
        assert store.get_package("greeter", "2.0.0") is None  # a miss is not kept:
        assert store.get_package("greeter", "2.0.0") is None  # it may be registered later
    assert calls == [
        ("GetItem", {"version 1.5.0"}),
        ("GetItem", {"version 1.0.0"}),
        ("GetItem", {"version 2.0.0"}),
        ("GetItem", {"version 2.0.0"}),
    ]
