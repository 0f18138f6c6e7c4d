from __future__ import annotations

from typing import Any

from aws_cdk.assertions import Match, Template

from infrastructure.settings import StageSettings
from runly_core import resources
from tests.infrastructure.cfn import resources_of_type


def test_table_has_the_keys_indexes_and_ttl_of_runly_resources(
    template: Template, stage_settings: StageSettings
) -> None:
    names = stage_settings.resource_names(account="any", region="any")
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "TableName": names.table,
            "KeySchema": [
                {"AttributeName": resources.PARTITION_KEY, "KeyType": "HASH"},
                {"AttributeName": resources.SORT_KEY, "KeyType": "RANGE"},
            ],
            "GlobalSecondaryIndexes": Match.array_equals(
                [
                    {
                        "IndexName": index.name,
                        "KeySchema": [
                            {"AttributeName": index.partition_key, "KeyType": "HASH"},
                            {"AttributeName": index.sort_key, "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "ALL"},
                    }
                    for index in resources.TABLE_INDEXES
                ]
            ),
            "TimeToLiveSpecification": {"AttributeName": resources.TTL_ATTRIBUTE, "Enabled": True},
        },
    )


def test_every_key_attribute_is_a_string_as_in_the_embedded_stack(template_json: dict[str, Any]) -> None:
    # runly_cli.embedded.aws creates the same table with every key attribute typed S; the two must not drift.
    key_attributes = {resources.PARTITION_KEY, resources.SORT_KEY}
    for index in resources.TABLE_INDEXES:
        key_attributes |= {index.partition_key, index.sort_key}
    [table] = resources_of_type(template_json, "AWS::DynamoDB::Table").values()
    definitions = table["Properties"]["AttributeDefinitions"]
    assert {d["AttributeName"]: d["AttributeType"] for d in definitions} == dict.fromkeys(key_attributes, "S")


def test_table_is_on_demand_recoverable_encrypted_and_protected(template: Template) -> None:
    template.resource_count_is("AWS::DynamoDB::Table", 1)
    template.has_resource(
        "AWS::DynamoDB::Table",
        {
            "Properties": Match.object_like(
                {
                    "BillingMode": "PAY_PER_REQUEST",
                    "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                    "SSESpecification": {"SSEEnabled": True},
                    "DeletionProtectionEnabled": True,
                }
            ),
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
        },
    )
