"""Reading functions, roles and their IAM statements out of a synthesized template, for least-privilege tests."""

from __future__ import annotations

from typing import Any

from tests.infrastructure.cfn import as_list, render, resources_of_type

Template = dict[str, Any]


def functions_with_handler(template_json: Template, handler: str) -> dict[str, dict[str, Any]]:
    """Logical id -> properties of every function running `handler`."""
    return {
        logical_id: function["Properties"]
        for logical_id, function in resources_of_type(template_json, "AWS::Lambda::Function").items()
        if function["Properties"].get("Handler") == handler
    }


def function_with_handler(template_json: Template, handler: str) -> tuple[str, dict[str, Any]]:
    [(logical_id, properties)] = functions_with_handler(template_json, handler).items()
    return logical_id, properties


def role_of(function: dict[str, Any]) -> str:
    return str(function["Role"]["Fn::GetAtt"][0])


def role_statements(template_json: Template, role_id: str) -> list[dict[str, Any]]:
    """Every statement of every policy of the role: inline ones and AWS::IAM::Policy resources attached to it."""
    role = template_json["Resources"][role_id]["Properties"]
    assert "ManagedPolicyArns" not in role, f"{role_id} must not carry managed policies"
    statements = [s for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    for policy in resources_of_type(template_json, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    assert statements, f"{role_id} has no statement"
    return statements


def statements_for(statements: list[dict[str, Any]], service: str) -> list[dict[str, Any]]:
    return [s for s in statements if any(action.startswith(f"{service}:") for action in as_list(s["Action"]))]


def actions(statements: list[dict[str, Any]]) -> set[str]:
    return {action for statement in statements for action in as_list(statement["Action"])}


def resources(statements: list[dict[str, Any]]) -> set[str]:
    return {render(resource) for statement in statements for resource in as_list(statement["Resource"])}


def grants(statements: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(action, rendered resource) pairs: what the statements allow, however CDK merged them."""
    return {
        (action, render(resource))
        for statement in statements
        for action in as_list(statement["Action"])
        for resource in as_list(statement["Resource"])
    }


def assert_no_wildcard_action(statements: list[dict[str, Any]]) -> None:
    for statement in statements:
        assert statement["Effect"] == "Allow", statement
        assert not [action for action in as_list(statement["Action"]) if "*" in action], statement
        assert "NotAction" not in statement and "NotResource" not in statement, statement


def logical_id(template_json: Template, resource_type: str, **properties: Any) -> str:
    [found] = [
        logical_id
        for logical_id, resource in resources_of_type(template_json, resource_type).items()
        if all(resource["Properties"].get(key) == value for key, value in properties.items())
    ]
    return found


def feed_bucket_id(template_json: Template) -> str:
    # The feed is the bucket runly names; the other one holds its access logs.
    [found] = [
        logical_id
        for logical_id, bucket in resources_of_type(template_json, "AWS::S3::Bucket").items()
        if "BucketName" in bucket["Properties"]
    ]
    return found
