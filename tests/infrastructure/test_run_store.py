from __future__ import annotations

from typing import Any

from aws_cdk.assertions import Match, Template

from infrastructure.settings import StageSettings
from runly_core import resources
from tests.infrastructure.cfn import resources_of_type


def test_table_is_built_from_the_one_table_definition(
    template_json: dict[str, Any], stage_settings: StageSettings
) -> None:
    # The embedded stack creates its table from resources.table_definition too
    # (tests/integration/test_table_definition.py): the deployed keys, indexes and projections are exactly those.
    names = stage_settings.resource_names(account="any", region="any")
    definition = resources.table_definition(names.table)
    [table] = resources_of_type(template_json, "AWS::DynamoDB::Table").values()
    properties = table["Properties"]
    assert properties["TableName"] == definition["TableName"]
    assert properties["BillingMode"] == definition["BillingMode"]
    assert properties["KeySchema"] == definition["KeySchema"]
    assert (
        sorted(properties["AttributeDefinitions"], key=lambda a: a["AttributeName"])
        == (definition["AttributeDefinitions"])
    )
    assert properties["GlobalSecondaryIndexes"] == definition["GlobalSecondaryIndexes"]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": resources.TTL_ATTRIBUTE, "Enabled": True}


def test_every_index_projects_only_what_its_readers_read(template_json: dict[str, Any]) -> None:
    [table] = resources_of_type(template_json, "AWS::DynamoDB::Table").values()
    projections = {index["IndexName"]: index["Projection"] for index in table["Properties"]["GlobalSecondaryIndexes"]}
    assert projections == {index.name: index.projected for index in resources.TABLE_INDEXES}


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
