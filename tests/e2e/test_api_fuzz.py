"""Fuzzing the API with schemathesis, against the OpenAPI document the local gateway serves, on a real
embedded stack (moto server, gateway, authorizer, API function; no agents), with an admin key: every generated
request, valid (positive) or not (negative), must get a response the document declares (status, content type,
headers, schema), invalid input must be refused with a 4xx, and nothing may answer 5xx.

One test per operation and mode. Deterministic: Hypothesis derandomized (a seed fixed per test), no example
database. The operations are listed from docs/openapi.json (kept equal to the served document by
tests/integration/test_api_shell.py); the cases are generated from the served document.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runly_cli.embedded.stack import EmbeddedStack, print_tail
from runly_core.strict_json import MAX_JSON_DEPTH, MAX_JSON_INTEGER

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
OPERATIONS = sorted(
    (method.upper(), path)
    for path, operations in json.loads(DOCUMENT.read_text())["paths"].items()
    for method in operations
)
WITH_BODY = sorted(
    (method.upper(), path)
    for path, operations in json.loads(DOCUMENT.read_text())["paths"].items()
    for method, operation in operations.items()
    if "requestBody" in operation
)
MIN_REQUESTS = 1000
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 30}
CHECKS = {
    GenerationMode.POSITIVE: [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ],
    GenerationMode.NEGATIVE: [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ],
}
sent: Counter[tuple[str, str]] = Counter()
statuses: Counter[int] = Counter()


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    stack = EmbeddedStack(state_dir=tmp_path_factory.mktemp("fuzz"), environments=("default", "staging"))
    stack.start(agents=0)
    yield stack
    if any(child.process.poll() not in (None, 0) for child in stack.children):
        for child in stack.children:
            print_tail(child)
    stack.stop()


@pytest.fixture(scope="module")
def served_schema(fuzz_stack: EmbeddedStack) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict({"generation": {"deterministic": True, "database": "none"}})
    return schemathesis.openapi.from_url(f"{fuzz_stack.api_url}/openapi.json", config=config)


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=[mode.value for mode in EXAMPLES])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{method} {path}" for method, path in OPERATIONS])
def test_every_generated_request_gets_a_declared_response(
    fuzz_stack: EmbeddedStack, served_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = served_schema[path][method]
    headers = {"Authorization": f"Bearer {fuzz_stack.admin_key}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        sent[(method, path)] += 1
        response = case.call_and_validate(headers=headers, checks=CHECKS[mode], timeout=30)
        statuses[response.status_code] += 1

    fuzz()


def _nested(levels: int) -> Any:
    value: Any = 1
    for level in range(levels):
        value = [value] if level % 2 else {"n": value}
    return value


# What Python's json reads but runly refuses (runly_core.strict_json): each sent as Python's json.dumps writes it
# (NaN and Infinity as literals, a lone surrogate as its \u escape).
HOSTILE = st.one_of(
    st.sampled_from(["\ud800", "x\udfff", "\udbff\udbff"]),
    st.integers(min_value=MAX_JSON_INTEGER + 1, max_value=10**4000) | st.integers(max_value=-(2**63) - 1),
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    st.integers(min_value=MAX_JSON_DEPTH + 1, max_value=600).map(_nested),  # 64 levels are allowed, 65 are not
)


def _plant(body: Any, where: list[str | int], value: Any) -> Any:
    """``body`` with ``value`` put at a place ``where`` picks (a member, an item, or the body itself)."""
    if not where:
        return value
    if isinstance(body, dict):
        key = str(where[0]) if str(where[0]) in body else next(iter(sorted(body)), "x")
        return {**body, key: _plant(body.get(key), where[1:], value)}
    if isinstance(body, list) and body:
        index = int(where[0]) % len(body) if isinstance(where[0], int) else 0
        return [*body[:index], _plant(body[index], where[1:], value), *body[index + 1 :]]
    return value


@pytest.mark.parametrize(("method", "path"), WITH_BODY, ids=[f"{method} {path}" for method, path in WITH_BODY])
def test_a_body_with_a_value_over_the_json_limits_gets_400_anywhere_in_any_body(
    fuzz_stack: EmbeddedStack, served_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    # Given valid bodies generated from the document, one value of each replaced by one runly refuses
    operation = served_schema[path][method]
    headers = {"Authorization": f"Bearer {fuzz_stack.admin_key}"}
    where = st.lists(st.sampled_from(["runs", "config", "name", 0, 1, "package"]), max_size=3)

    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE), value=HOSTILE, where=where)
    @settings(max_examples=25, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case, value: Any, where: list[str | int]) -> None:
        case.body = json.dumps(_plant(case.body, where, value)).encode()
        response = case.call_and_validate(headers=headers, checks=CHECKS[GenerationMode.POSITIVE], timeout=30)
        statuses[response.status_code] += 1
        # Then each is refused as a bad request (never a 5xx, never stored), the problem stated
        assert response.status_code == 400, response.text[:300]
        assert response.json()["code"] == "bad_request"

    fuzz()


def test_the_fuzzing_sent_enough_requests_to_every_operation() -> None:
    # Runs after the tests above (pytest keeps a file's order); meaningless when they were deselected.
    if not sent:
        pytest.skip("the fuzzing tests did not run")
    print(f"fuzzing sent {sum(sent.values())} requests to {len(sent)} operations; statuses: {sorted(statuses.items())}")
    assert set(sent) == set(OPERATIONS)
    assert sum(sent.values()) >= MIN_REQUESTS, sent
