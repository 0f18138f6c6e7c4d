"""A small evaluator of IAM policy documents, for the conditions runly's policies use.

moto's IAM enforcement (``INITIAL_NO_AUTH_ACTION_COUNT``) checks actions and resources but not condition keys such as
``dynamodb:LeadingKeys`` (tests/infrastructure/test_node_policy_cases.py shows it), so the node's policies are
evaluated here instead, as IAM documents its logic:

- a request is allowed if some Allow statement matches it and no Deny statement does (explicit deny wins; no
  match is an implicit deny);
- a statement matches if its Action (or NotAction) matches the action, its Resource (or NotResource) matches the
  ARN, and every condition in it holds (operators AND-ed, keys of one operator AND-ed, values of one key OR-ed);
- ``*`` and ``?`` are wildcards in actions (case-insensitive), resources and ``*Like`` values;
- a single-valued operator on a key absent from the request is false (``...IfExists``: true; ``Null`` tests
  presence); ``ForAllValues:`` holds if every request value matches some policy value (vacuously, for an absent
  or empty key); ``ForAnyValue:`` if some request value does (never, for an absent key).

Unsupported operators raise, so a policy that grows one cannot pass by being misread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

ContextValue = str | Sequence[str]


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)


@cache
def _wildcard(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _matches_any(patterns: Any, value: str, *, ignore_case: bool = False) -> bool:
    return any(_wildcard(str(p), ignore_case=ignore_case).fullmatch(value) for p in _listed(patterns))


_STRING_TESTS = {
    "StringEquals": lambda policy, value: value == policy,
    "StringNotEquals": lambda policy, value: value != policy,
    "StringEqualsIgnoreCase": lambda policy, value: value.lower() == policy.lower(),
    "StringLike": lambda policy, value: _wildcard(policy).fullmatch(value) is not None,
    "StringNotLike": lambda policy, value: _wildcard(policy).fullmatch(value) is None,
    "ArnEquals": lambda policy, value: value == policy,
    "ArnLike": lambda policy, value: _wildcard(policy).fullmatch(value) is not None,
}
_NEGATED = {"StringNotEquals", "StringNotLike"}


def _value_matches(operator: str, policy_values: list[Any], value: str) -> bool:
    test = _STRING_TESTS[operator]
    if operator in _NEGATED:
        # A negated operator holds if the value matches none of the policy's values.
        return all(test(str(p), value) for p in policy_values)
    return any(test(str(p), value) for p in policy_values)


def _condition_holds(operator: str, key: str, policy_value: Any, context: Mapping[str, ContextValue]) -> bool:
    policy_values = _listed(policy_value)
    present = key in context
    raw = context.get(key)
    request_values: list[str] = [raw] if isinstance(raw, str) else list(raw or [])
    if operator == "Null":
        wants_absent = str(policy_values[0]).lower() == "true"
        return (not present) if wants_absent else present
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    if base not in _STRING_TESTS:
        raise NotImplementedError(f"condition operator {operator!r}")
    if qualifier == "ForAllValues":
        return all(_value_matches(base, policy_values, value) for value in request_values)
    if qualifier == "ForAnyValue":
        return any(_value_matches(base, policy_values, value) for value in request_values)
    if qualifier:
        raise NotImplementedError(f"condition qualifier {qualifier!r}")
    if not present:
        return if_exists
    if len(request_values) != 1:
        raise ValueError(f"{key} is multivalued: a single-valued operator {operator!r} does not apply to it")
    return _value_matches(base, policy_values, request_values[0])


def statement_matches(statement: Mapping[str, Any], request: Request) -> bool:
    if "Action" in statement:
        if not _matches_any(statement["Action"], request.action, ignore_case=True):
            return False
    elif "NotAction" in statement:
        if _matches_any(statement["NotAction"], request.action, ignore_case=True):
            return False
    else:
        raise ValueError("a statement needs Action or NotAction")
    if "Resource" in statement:
        if not _matches_any(statement["Resource"], request.resource):
            return False
    elif "NotResource" in statement:
        if _matches_any(statement["NotResource"], request.resource):
            return False
    else:
        raise ValueError("an identity policy statement needs Resource or NotResource")
    for operator, keys in statement.get("Condition", {}).items():
        for key, value in keys.items():
            if not _condition_holds(operator, key, value, request.context):
                return False
    return True


def statements(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = document["Statement"]
    return [found] if isinstance(found, Mapping) else list(found)


def decide(documents: Sequence[Mapping[str, Any]], request: Request) -> str:
    """ "Allow", "ExplicitDeny" or "ImplicitDeny" for ``request`` under all of ``documents`` together (the policies
    of one principal: any Allow, no Deny)."""
    allowed = False
    for document in documents:
        for statement in statements(document):
            if not statement_matches(statement, request):
                continue
            if statement["Effect"] == "Deny":
                return "ExplicitDeny"
            if statement["Effect"] == "Allow":
                allowed = True
            else:
                raise ValueError(f"Effect {statement['Effect']!r}")
    return "Allow" if allowed else "ImplicitDeny"


def allowed(documents: Sequence[Mapping[str, Any]], request: Request) -> bool:
    return decide(documents, request) == "Allow"
