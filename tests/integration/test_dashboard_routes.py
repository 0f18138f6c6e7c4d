"""The dashboard's page and files as the API function serves them (open routes), and GET /me."""

from __future__ import annotations

import base64
import gzip
import re

import pytest

from functions.api.routers import dashboard
from runly_core.contracts import Scope
from tests.support.api import api_event, call, invoke, module_function_env  # noqa: F401  (fixture)
from tests.support.auth import as_caller

pytestmark = pytest.mark.usefixtures("module_function_env")


def test_the_page_is_html_with_a_self_only_content_security_policy() -> None:
    answer = call("GET", "/", scope=None)

    assert answer.status == 200 and answer.headers["content-type"] == "text/html; charset=utf-8"
    policy = answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-cache" and answer.headers["etag"].startswith('W/"')
    # Nothing from elsewhere: every script and stylesheet is one of the dashboard's own files.
    referenced = re.findall(r'(?:src|href)="([^"#]+)"', answer.body)
    assert referenced and all(not ref.startswith(("http:", "https:", "//")) for ref in referenced)
    assert {"dashboard/app.js", "dashboard/app.css"} <= set(referenced)


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("runs.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml; charset=utf-8"),
    ],
)
def test_each_file_has_its_content_type(name: str, content_type: str) -> None:
    answer = call("GET", f"/dashboard/{name}", scope=None)
    assert answer.status == 200 and answer.headers["content-type"] == content_type
    assert answer.body == (dashboard.ASSETS_DIR / name).read_text()


def test_the_modules_import_only_files_the_route_serves() -> None:
    for name in [name for name in dashboard.assets() if name.endswith(".js")]:
        for imported in re.findall(r'from "\./([^"]+)"', dashboard.assets()[name].body):
            assert imported in dashboard.assets(), f"{name} imports {imported}, which is not served"


def test_an_unchanged_file_is_a_304_without_a_body() -> None:
    etag = call("GET", "/dashboard/app.js", scope=None).headers["etag"]
    event = api_event("GET", "/dashboard/app.js", headers=[("if-none-match", etag)])

    answer = invoke(event)

    assert answer.status == 304 and not answer.body and answer.headers["etag"] == etag


def test_a_client_that_accepts_gzip_gets_it() -> None:
    from functions.api import app as api_app
    from tests.support.api import FakeContext

    event = api_event("GET", "/dashboard/app.css", headers=[("accept-encoding", "gzip, br")])
    response = api_app.lambda_handler(event, FakeContext())  # type: ignore[arg-type]

    assert response["isBase64Encoded"] is True and response["headers"]["Content-Encoding"] == "gzip"
    assert gzip.decompress(base64.b64decode(response["body"])).decode() == dashboard.assets()["app.css"].body


@pytest.mark.parametrize("name", ["nope.js", "..%2Fapi%2Fapp.py", "dashboard.py", ".hidden"])
def test_only_the_dashboards_own_files_are_served(name: str) -> None:
    answer = call("GET", f"/dashboard/{name}", scope=None)
    assert answer.status == 404 and answer.body["code"] == "not_found"


def test_another_method_on_the_page_is_not_open() -> None:
    # Only GET is an open route: anything else needs a key, like every other route.
    assert call("POST", "/", scope=None).status == 401


@pytest.mark.parametrize(
    ("scope", "environment"), [(Scope.READ, None), (Scope.WRITE, None), (Scope.ADMIN, None), (Scope.NODE, "default")]
)
def test_me_tells_the_key_its_scope_and_environment(scope: Scope, environment: str | None) -> None:
    event = as_caller(api_event("GET", "/me"), scope, environment, key_id="k-123")

    answer = invoke(event)

    assert answer.status == 200
    assert answer.body == {"key_id": "k-123", "scope": scope.value, "environment": environment}


def test_me_needs_a_key() -> None:
    assert call("GET", "/me", scope=None).status == 401
