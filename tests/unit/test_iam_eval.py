"""The IAM evaluator the node policy cases rely on (tests/support/iam_eval.py), on cases whose answer IAM documents."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.iam_eval import Request, decide


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action: Any = "s3:GetObject", resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


GET = Request("s3:GetObject", "arn:aws:s3:::b/logs/a/x")


def test_no_statement_is_an_implicit_deny_and_an_allow_allows() -> None:
    assert decide([policy()], GET) == "ImplicitDeny"
    assert decide([policy(allow())], GET) == "Allow"


def test_an_explicit_deny_wins_over_any_allow_in_any_document() -> None:
    deny = {"Effect": "Deny", "Action": "s3:*", "Resource": "*"}
    assert decide([policy(allow()), policy(deny)], GET) == "ExplicitDeny"


def test_actions_match_wildcards_case_insensitively_and_notaction_inverts() -> None:
    assert decide([policy(allow("S3:get*"))], GET) == "Allow"
    assert decide([policy(allow("s3:Get?bject"))], GET) == "Allow"
    assert decide([policy(allow("s3:Put*"))], GET) == "ImplicitDeny"
    assert decide([policy({"Effect": "Allow", "NotAction": "s3:Put*", "Resource": "*"})], GET) == "Allow"
    assert decide([policy({"Effect": "Allow", "NotAction": "s3:Get*", "Resource": "*"})], GET) == "ImplicitDeny"


def test_resources_match_wildcards_case_sensitively_and_notresource_inverts() -> None:
    assert decide([policy(allow(resource="arn:aws:s3:::b/logs/a/*"))], GET) == "Allow"
    assert decide([policy(allow(resource="arn:aws:s3:::b/logs/b/*"))], GET) == "ImplicitDeny"
    assert decide([policy(allow(resource="arn:aws:s3:::b/LOGS/a/*"))], GET) == "ImplicitDeny"
    assert decide([policy(allow(resource=["arn:aws:s3:::other", "arn:aws:s3:::b/*"]))], GET) == "Allow"
    not_resource = {"Effect": "Allow", "Action": "s3:GetObject", "NotResource": "arn:aws:s3:::b/logs/b/*"}
    assert decide([policy(not_resource)], GET) == "Allow"


def leading(keys: list[str] | None, operator: str = "ForAllValues:StringLike", patterns: Any = "ENV#a#*") -> str:
    statement = allow("dynamodb:GetItem", Condition={operator: {"dynamodb:LeadingKeys": patterns}})
    context = {} if keys is None else {"dynamodb:LeadingKeys": keys}
    return decide([policy(statement)], Request("dynamodb:GetItem", "arn:t", context))


def test_for_all_values_needs_every_value_to_match_and_holds_vacuously() -> None:
    assert leading(["ENV#a#RUN#1"]) == "Allow"
    assert leading(["ENV#a#RUN#1", "ENV#a#NODE#n"]) == "Allow"
    assert leading(["ENV#a#RUN#1", "ENV#b#RUN#1"]) == "ImplicitDeny"
    assert leading(["ENV#ab#RUN#1"]) == "ImplicitDeny"
    # IAM's documented trap: ForAllValues is true for an absent or empty key.
    assert leading(None) == "Allow"
    assert leading([]) == "Allow"


def test_for_any_value_needs_one_value_to_match_and_fails_on_an_absent_key() -> None:
    assert leading(["ENV#b#x", "ENV#a#x"], "ForAnyValue:StringLike") == "Allow"
    assert leading(["ENV#b#x"], "ForAnyValue:StringLike") == "ImplicitDeny"
    assert leading(None, "ForAnyValue:StringLike") == "ImplicitDeny"


def test_policy_values_of_one_key_are_or_ed_and_keys_and_operators_are_and_ed() -> None:
    assert leading(["ENV#b#x"], patterns=["ENV#a#*", "ENV#b#*"]) == "Allow"
    statement = allow(
        "dynamodb:UpdateItem",
        Condition={
            "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["K*"], "dynamodb:Attributes": ["a", "b"]},
            "StringEqualsIfExists": {"dynamodb:ReturnValues": ["NONE"]},
        },
    )

    def update(**context: Any) -> str:
        return decide([policy(statement)], Request("dynamodb:UpdateItem", "arn:t", context))

    base = {"dynamodb:LeadingKeys": ["K1"], "dynamodb:Attributes": ["a"]}
    assert update(**base) == "Allow"
    assert update(**{**base, "dynamodb:ReturnValues": "NONE"}) == "Allow"
    assert update(**{**base, "dynamodb:ReturnValues": "ALL_NEW"}) == "ImplicitDeny"
    assert update(**{**base, "dynamodb:Attributes": ["a", "c"]}) == "ImplicitDeny"
    assert update(**{**base, "dynamodb:LeadingKeys": ["L1"]}) == "ImplicitDeny"


def test_single_valued_operators_fail_on_an_absent_key_unless_if_exists() -> None:
    def with_operator(operator: str, context: dict[str, Any]) -> str:
        statement = allow(Condition={operator: {"s3:prefix": "logs/"}})
        return decide([policy(statement)], Request("s3:GetObject", "arn:x", context))

    assert with_operator("StringEquals", {"s3:prefix": "logs/"}) == "Allow"
    assert with_operator("StringEquals", {"s3:prefix": "pkgs/"}) == "ImplicitDeny"
    assert with_operator("StringEquals", {}) == "ImplicitDeny"
    assert with_operator("StringEqualsIfExists", {}) == "Allow"
    assert with_operator("StringEqualsIfExists", {"s3:prefix": "pkgs/"}) == "ImplicitDeny"
    assert with_operator("StringNotEquals", {"s3:prefix": "pkgs/"}) == "Allow"
    assert with_operator("StringNotEquals", {"s3:prefix": "logs/"}) == "ImplicitDeny"
    assert with_operator("StringLike", {"s3:prefix": "logs/"}) == "Allow"


def test_string_not_like_under_for_all_values_refuses_any_listed_value() -> None:
    statement = allow(Condition={"ForAllValues:StringNotLike": {"dynamodb:Attributes": ["secret*"]}})

    def attributes(names: list[str]) -> str:
        return decide([policy(statement)], Request("s3:GetObject", "arn:x", {"dynamodb:Attributes": names}))

    assert attributes(["a", "b"]) == "Allow"
    assert attributes(["a", "secret_key"]) == "ImplicitDeny"


def test_null_tests_presence() -> None:
    present = allow(Condition={"Null": {"dynamodb:LeadingKeys": "false"}})
    absent = allow(Condition={"Null": {"dynamodb:LeadingKeys": "true"}})
    with_key = Request("s3:GetObject", "arn:x", {"dynamodb:LeadingKeys": ["k"]})
    without = Request("s3:GetObject", "arn:x")
    assert decide([policy(present)], with_key) == decide([policy(absent)], without) == "Allow"
    assert decide([policy(present)], without) == decide([policy(absent)], with_key) == "ImplicitDeny"


def test_an_operator_it_does_not_know_is_refused_not_misread() -> None:
    statement = allow(Condition={"NumericLessThan": {"aws:EpochTime": "1"}})
    with pytest.raises(NotImplementedError, match="NumericLessThan"):
        decide([policy(statement)], Request("s3:GetObject", "arn:x", {"aws:EpochTime": "0"}))
