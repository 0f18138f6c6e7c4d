"""``runly vars`` and ``runly secrets`` through typer's CliRunner against a fake API: what each command sends, and
that a secret's value is never an argument nor printed back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runly_cli.main import app
from tests.unit.test_cli import NOW, FakeApi, invoke, runner

SECRET = "s3cret-from-stdin-42"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeApi]:
    fake = FakeApi()
    handler = fake.server.RequestHandlerClass
    handler.do_PUT = handler.do_DELETE = handler.do_GET  # type: ignore[attr-defined]
    monkeypatch.setenv("RUNLY_PROFILE", str(tmp_path / "profile.toml"))
    monkeypatch.setenv("RUNLY_API_URL", fake.url)
    monkeypatch.setenv("RUNLY_API_KEY", "rly_test")
    monkeypatch.delenv("RUNLY_ENVIRONMENT", raising=False)
    yield fake
    fake.server.shutdown()


def secret_view(name: str = "API_TOKEN", environment: str = "production") -> dict[str, Any]:
    return {"environment": environment, "name": name, "version": 3, "updated_at": NOW}


def test_secrets_set_reads_the_value_from_stdin_and_never_prints_it(api: FakeApi) -> None:
    api.routes["PUT /environments/production/secrets/API_TOKEN"] = lambda body, query: (200, secret_view())

    result = runner.invoke(
        app, ["secrets", "set", "API_TOKEN", "--env", "production"], input=SECRET + "\n", env={"COLUMNS": "200"}
    )

    assert result.exit_code == 0, result.output
    assert api.requests[-1][:3] == ("PUT", "/environments/production/secrets/API_TOKEN", {"value": SECRET})
    assert "secret API_TOKEN set in production (version 3)" in result.stdout
    assert SECRET not in result.output


def test_secrets_set_reads_a_file_and_takes_no_value_argument(api: FakeApi, tmp_path: Path) -> None:
    api.routes["PUT /environments/default/secrets/API_TOKEN"] = lambda body, query: (
        200,
        secret_view("API_TOKEN", "default"),
    )
    value_file = tmp_path / "token.txt"
    value_file.write_text("line one\nline two\n")

    assert invoke("secrets", "set", "API_TOKEN", "--file", str(value_file)).exit_code == 0
    assert api.requests[-1][2] == {"value": "line one\nline two"}
    # A value on the command line would stay in the shell's history and in ps: there is no such argument
    refused = invoke("secrets", "set", "API_TOKEN", SECRET)
    assert refused.exit_code == 2
    assert len(api.requests) == 1


def test_secrets_list_shows_names_and_versions_only(api: FakeApi) -> None:
    api.routes["GET /environments/default/secrets"] = lambda body, query: (
        200,
        {"items": [secret_view("A", "default")]},
    )

    listed = invoke("secrets", "list")
    as_json = invoke("secrets", "list", "--json")

    assert listed.exit_code == 0 and "A" in listed.stdout and "3" in listed.stdout
    [shown] = json.loads(as_json.stdout)
    assert (shown["name"], shown["version"], set(shown)) == ("A", 3, {"environment", "name", "version", "updated_at"})


def test_vars_set_get_list_delete(api: FakeApi) -> None:
    view = {"environment": "staging", "name": "REGION", "value": "eu-west-1", "version": 1, "updated_at": NOW}
    api.routes["PUT /environments/staging/variables/REGION"] = lambda body, query: (200, view)
    api.routes["GET /environments/staging/variables/REGION"] = lambda body, query: (200, view)
    api.routes["GET /environments/staging/variables"] = lambda body, query: (200, {"items": [view]})
    api.routes["DELETE /environments/staging/variables/REGION"] = lambda body, query: (204, None)

    assert invoke("vars", "set", "REGION", "eu-west-1", "-e", "staging").exit_code == 0
    assert api.requests[-1][2] == {"value": "eu-west-1"}
    got = invoke("vars", "get", "REGION", "-e", "staging")
    assert (got.exit_code, got.stdout) == (0, "eu-west-1\n")
    assert "eu-west-1" in invoke("vars", "list", "-e", "staging").stdout
    deleted = invoke("vars", "delete", "REGION", "-e", "staging")
    assert deleted.exit_code == 0 and "variable REGION deleted from staging" in deleted.stdout


def test_an_api_refusal_is_one_line_naming_the_field(api: FakeApi) -> None:
    api.routes["PUT /environments/default/variables/PATH"] = lambda body, query: (
        422,
        {"code": "unprocessable", "message": "name 'PATH' is reserved", "field": "name"},
    )
    result = invoke("vars", "set", "PATH", "/bin")
    assert result.exit_code == 4  # EXIT_ERROR: the API refused
    assert "name 'PATH' is reserved" in result.stderr and "Traceback" not in result.output
