"""Variables and secrets over the API (the handler in-process, SSM in in-process moto): what is stored where, what
each answer shows, and every refusal naming its field. A secret's value is in no answer, ever."""

from __future__ import annotations

import json

import boto3
import pytest

from runly_core import resources
from runly_core.contracts import Scope
from tests.support.api import call, function_env  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("function_env")

SECRET = "hunter2-correct-horse-battery-staple"


def _parameter(names: resources.ResourceNames, kind: str, name: str, environment: str = "default") -> dict:
    ssm = boto3.client("ssm", region_name=resources.LOCAL_REGION)
    return dict(
        ssm.get_parameter(Name=resources.value_parameter(names.values_path, environment, kind, name))["Parameter"]
    )


def test_a_variable_is_set_read_listed_replaced_and_deleted(names: resources.ResourceNames) -> None:
    # Given a variable set by an admin key
    answer = call("PUT", "/environments/default/variables/REGION", body={"value": "eu-west-1"})
    assert answer.status == 200, answer.body
    assert answer.body | {"updated_at": None} == {
        "environment": "default", "name": "REGION", "value": "eu-west-1", "version": 1, "updated_at": None,
    }  # fmt: skip
    # Then it is a plain String parameter under the environment's values path
    stored = _parameter(names, "variables", "REGION")
    assert (stored["Type"], stored["Value"]) == ("String", "eu-west-1")
    # When it is replaced, its version goes up; a read key reads it, one and all
    assert call("PUT", "/environments/default/variables/REGION", body={"value": "eu-central-1"}).body["version"] == 2
    assert call("GET", "/environments/default/variables/REGION", scope=Scope.READ).body["value"] == "eu-central-1"
    call("PUT", "/environments/default/variables/ZONE", body={"value": "b"})
    listed = call("GET", "/environments/default/variables", scope=Scope.READ).body["items"]
    assert [(v["name"], v["value"], v["version"]) for v in listed] == [("REGION", "eu-central-1", 2), ("ZONE", "b", 1)]
    # Another environment's are its own
    assert call("GET", "/environments/staging/variables").body == {"items": []}
    # When it is deleted, it is gone, and a second delete says so
    assert call("DELETE", "/environments/default/variables/REGION").status == 204
    assert call("GET", "/environments/default/variables/REGION").status == 404
    gone = call("DELETE", "/environments/default/variables/REGION")
    assert (gone.status, gone.body["field"]) == (404, "name")


def test_a_secret_is_write_only_no_answer_holds_its_value(names: resources.ResourceNames) -> None:
    # Given a secret set by an admin key
    answers = [call("PUT", "/environments/default/secrets/API_TOKEN", body={"value": SECRET})]
    assert answers[0].status == 200
    assert set(answers[0].body) == {"environment", "name", "version", "updated_at"}
    answers.append(call("PUT", "/environments/default/secrets/API_TOKEN", body={"value": SECRET + "-2"}))
    assert answers[-1].body["version"] == 2
    # Then it is a SecureString under the AWS-managed key
    ssm = boto3.client("ssm", region_name=resources.LOCAL_REGION)
    parameter = resources.value_parameter(names.values_path, "default", "secrets", "API_TOKEN")
    [described] = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [parameter]}])["Parameters"]
    assert (described["Type"], described["KeyId"]) == ("SecureString", "alias/aws/ssm")
    # When it is read, listed, and asked for as if it were a variable, by every kind of key
    for scope, environment in ((Scope.ADMIN, None), (Scope.READ, None), (Scope.NODE, "default")):
        answers.append(call("GET", "/environments/default/secrets/API_TOKEN", scope=scope, environment=environment))
        answers.append(call("GET", "/environments/default/secrets", scope=scope, environment=environment))
    answers.append(call("GET", "/environments/default/variables/API_TOKEN"))
    answers.append(call("GET", "/environments/default/variables"))
    answers.append(call("GET", "/openapi.json", scope=None))
    # Then each answer shows its name, version and update time at most, never the value
    assert answers[2].body | {"updated_at": None} == {
        "environment": "default", "name": "API_TOKEN", "version": 2, "updated_at": None,
    }  # fmt: skip
    assert [s["name"] for s in answers[3].body["items"]] == ["API_TOKEN"]
    assert answers[-3].status == 404
    for answer in answers:
        text = json.dumps(answer.body)
        assert SECRET not in text and "hunter2" not in text, answer.body
    # And deleting it removes the parameter
    assert call("DELETE", "/environments/default/secrets/API_TOKEN").status == 204
    assert call("GET", "/environments/default/secrets/API_TOKEN").status == 404


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/environments/default/secrets/9LIVES", {"value": "x"}, 422, "name"),
        ("/environments/default/secrets/MY-TOKEN", {"value": "x"}, 422, "name"),
        ("/environments/default/variables/PATH", {"value": "/bin"}, 422, "name"),
        ("/environments/default/variables/RUNLY_API_URL", {"value": "x"}, 422, "name"),
        ("/environments/default/secrets/LD_PRELOAD", {"value": "/tmp/x.so"}, 422, "name"),
        ("/environments/default/secrets/PYTHONPATH", {"value": "/tmp"}, 422, "name"),
        ("/environments/default/secrets/" + "A" * 129, {"value": "x"}, 422, "name"),
        ("/environments/default/secrets/TOKEN", {"value": ""}, 422, "value"),
        ("/environments/default/secrets/TOKEN", {"value": "a\u0000b"}, 422, "value"),
        ("/environments/default/secrets/TOKEN", {"value": "é" * 4097}, 413, "value"),  # 8,194 bytes of UTF-8
        ("/environments/default/variables/TOKEN", {"value": "x" * 8193}, 413, "value"),
        ("/environments/default/secrets/TOKEN", {"value": 12}, 422, "value"),
        ("/environments/default/secrets/TOKEN", {"value": "x", "type": "String"}, 422, "type"),
        ("/environments/nowhere/secrets/TOKEN", {"value": "x"}, 404, "environment"),
        ("/environments/nowhere/variables", None, 404, "environment"),
    ],
)
def test_bad_names_and_values_are_refused_naming_the_field(path: str, body: object, status: int, field: str) -> None:
    answer = call("PUT" if body is not None else "GET", path, body=body)
    assert (answer.status, answer.body.get("field")) == (status, field), answer.body
    # And nothing was stored
    assert call("GET", "/environments/default/secrets").body == {"items": []}


def test_values_at_the_limit_are_stored() -> None:
    # 8,192 bytes of UTF-8 (SSM's advanced-parameter limit; stored under Intelligent-Tiering), 128-character name
    assert call("PUT", "/environments/default/secrets/" + "A" * 128, body={"value": "é" * 4096}).status == 200
    assert call("PUT", "/environments/default/variables/_x9", body={"value": "x" * 8192}).status == 200
    assert len(call("GET", "/environments/default/variables/_x9").body["value"]) == 8192


def test_a_node_key_reaches_its_own_environment_only() -> None:
    call("PUT", "/environments/staging/variables/REGION", body={"value": "eu-west-1"})
    denied = call("GET", "/environments/staging/variables/REGION", scope=Scope.NODE, environment="default")
    assert (denied.status, denied.body["code"]) == (403, "forbidden")
    assert call("GET", "/environments/staging/secrets", scope=Scope.NODE, environment="default").status == 403
    writes = call("PUT", "/environments/default/secrets/X", scope=Scope.WRITE, body={"value": "x"})
    assert writes.status == 403  # setting values needs an admin key
