"""The table the embedded stack creates is runly_core.resources.table_definition, as DynamoDB describes it; the CDK
construct builds the same definition (tests/infrastructure/test_run_store.py), so local and deployed agree."""

from __future__ import annotations

import boto3
import pytest

from runly_core import resources


def test_the_embedded_table_is_the_table_definition(aws: dict[str, str], names: resources.ResourceNames) -> None:
    described = boto3.client("dynamodb").describe_table(TableName=names.table)["Table"]
    definition = resources.table_definition(names.table)
    assert described["KeySchema"] == definition["KeySchema"]
    assert (
        sorted(described["AttributeDefinitions"], key=lambda a: a["AttributeName"])
        == (definition["AttributeDefinitions"])
    )
    indexes = {
        index["IndexName"]: {"KeySchema": index["KeySchema"], "Projection": index["Projection"]}
        for index in described["GlobalSecondaryIndexes"]
    }
    assert indexes == {
        index["IndexName"]: {"KeySchema": index["KeySchema"], "Projection": index["Projection"]}
        for index in definition["GlobalSecondaryIndexes"]
    }


@pytest.mark.parametrize(
    ("projection", "attributes"),
    [("INCLUDE", ()), ("KEYS_ONLY", ("state",)), ("ALL", ("state",))],
)
def test_an_index_names_its_attributes_only_with_an_include_projection(
    projection: str, attributes: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="non_key_attributes"):
        resources.IndexSpec(
            name="x",
            partition_key="a",
            sort_key="b",
            projection=projection,  # type: ignore[arg-type]
            non_key_attributes=attributes,
        )
