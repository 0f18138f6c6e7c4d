"""Reading synthesized CloudFormation in tests."""

from __future__ import annotations

from typing import Any


def render(value: Any) -> str:
    """A string built from intrinsics, made readable: `{"Ref": "X"}` -> `<X>`, `{"Fn::GetAtt": ["X", "Arn"]}` ->
    `<X.Arn>`, `Fn::Join` concatenated."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return "<" + ".".join(value["Fn::GetAtt"]) + ">"
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(render(part) for part in parts)
    raise ValueError(f"cannot render {value!r}")


def resources_of_type(template_json: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource
        for logical_id, resource in template_json["Resources"].items()
        if resource["Type"] == resource_type
    }


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
