"""The API and authorizer functions in-process, on in-process moto, with API Gateway payload 2.0 events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from runly_cli.embedded.aws import schedule_settings
from runly_cli.embedded.gateway import build_event
from runly_core import resources
from runly_core.contracts import Scope
from tests.support.auth import as_caller


class FakeContext:
    function_name = "runly-api"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:runly-api"
    memory_limit_in_mb = 512
    aws_request_id = "req-1"
    log_group_name = "/aws/lambda/runly-api"
    log_stream_name = "stream"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def clear_function_caches() -> None:
    from functions.api import dependencies
    from functions.authorizer import app as authorizer_app
    from functions.schedules import fire
    from functions.settings import get_authorizer_settings, get_fire_settings, get_settings

    for cached in (
        get_settings,
        get_authorizer_settings,
        get_fire_settings,
        dependencies.services,
        dependencies.key_store,
        dependencies.node_store,
        dependencies.schedule_store,
        dependencies.scheduler,
        dependencies.delays,
        dependencies.value_store,
        authorizer_app.key_store,
        fire._services,
    ):
        cached.cache_clear()


def point_functions_at(patch: pytest.MonkeyPatch, names: resources.ResourceNames, queue_urls: dict[str, str]) -> None:
    """The functions' settings (as the stack sets them) pointed at these resources; their caches cleared, so
    the next call builds its services from them."""
    patch.setenv("RUNLY_TABLE_NAME", names.table)
    patch.setenv("RUNLY_FEED_BUCKET", names.feed_bucket)
    patch.setenv("RUNLY_QUEUE_URLS", json.dumps(queue_urls))
    for name, value in schedule_settings(names).items():
        patch.setenv(name, value)
    patch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    patch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
    clear_function_caches()


@pytest.fixture
def function_env(
    aws: dict[str, str], names: resources.ResourceNames, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The functions' settings pointed at the in-process moto resources; yields environment -> queue URL."""
    point_functions_at(monkeypatch, names, aws)
    yield aws
    clear_function_caches()


@pytest.fixture(scope="module")
def module_function_env() -> Iterator[dict[str, str]]:
    """function_env for a whole module (one moto, one set of resources): for tests that only read or whose
    writes do not matter to each other. Yields environment -> queue URL."""
    from tests.support.run_api import NAMES, moto_stack  # it builds on this module

    with moto_stack(NAMES) as queue_urls, pytest.MonkeyPatch.context() as patch:
        point_functions_at(patch, NAMES, queue_urls)
        yield queue_urls
        clear_function_caches()


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


def api_event(
    method: str,
    path: str,
    *,
    body: Any = None,
    query: str = "",
    headers: list[tuple[str, str]] | None = None,
    raw_body: bytes | None = None,
) -> dict[str, Any]:
    raw = raw_body if raw_body is not None else (b"" if body is None else json.dumps(body).encode())
    return build_event(
        method=method,
        raw_path=path,
        raw_query=query,
        headers=[("content-type", "application/json"), *(headers or [])],
        body=raw,
        source_ip="127.0.0.1",
    )


def invoke(event: dict[str, Any]) -> Answer:
    from functions.api import app as api_app

    response = api_app.lambda_handler(event, FakeContext())  # type: ignore[arg-type]
    text = response.get("body") or ""
    try:
        body = json.loads(text) if text else None
    except json.JSONDecodeError:
        body = text
    headers = {name.lower(): value for name, value in (response.get("headers") or {}).items()}
    return Answer(response["statusCode"], body, headers)


def call(
    method: str,
    path: str,
    *,
    scope: Scope | str | None = Scope.ADMIN,
    environment: str | None = None,
    body: Any = None,
    query: str = "",
) -> Answer:
    """One request as the API function receives it once the authorizer allowed a key of ``scope`` (None: no
    authorizer context at all)."""
    event = api_event(method, path, body=body, query=query)
    if scope is not None:
        as_caller(event, scope, environment)
    return invoke(event)
