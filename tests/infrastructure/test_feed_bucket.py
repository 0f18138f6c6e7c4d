from __future__ import annotations

from typing import Any

from infrastructure.feed_bucket import NONCURRENT_VERSION_DAYS
from infrastructure.settings import StageSettings
from tests.infrastructure.cfn import as_list, render, resources_of_type

BLOCK_ALL = {
    "BlockPublicAcls": True,
    "BlockPublicPolicy": True,
    "IgnorePublicAcls": True,
    "RestrictPublicBuckets": True,
}


def _feed_bucket(template_json: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    [(logical_id, bucket)] = [
        (logical_id, bucket)
        for logical_id, bucket in resources_of_type(template_json, "AWS::S3::Bucket").items()
        if "BucketName" in bucket["Properties"]
    ]
    return logical_id, bucket


def test_feed_bucket_is_named_by_runly_resources(template_json: dict[str, Any], stage_settings: StageSettings) -> None:
    _, bucket = _feed_bucket(template_json)
    expected = stage_settings.resource_names(account="<AWS::AccountId>", region="<AWS::Region>").feed_bucket
    assert render(bucket["Properties"]["BucketName"]) == expected


def test_feed_bucket_is_versioned_encrypted_private_and_retained(template_json: dict[str, Any]) -> None:
    _, bucket = _feed_bucket(template_json)
    properties = bucket["Properties"]
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    [encryption] = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert properties["PublicAccessBlockConfiguration"] == BLOCK_ALL
    assert bucket["DeletionPolicy"] == "Retain"


def test_old_package_versions_expire(template_json: dict[str, Any]) -> None:
    _, bucket = _feed_bucket(template_json)
    rules = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert {"NoncurrentDays": NONCURRENT_VERSION_DAYS} in [rule.get("NoncurrentVersionExpiration") for rule in rules]


def test_feed_bucket_logs_access_to_a_private_bucket(template_json: dict[str, Any]) -> None:
    _, bucket = _feed_bucket(template_json)
    log_bucket_id = bucket["Properties"]["LoggingConfiguration"]["DestinationBucketName"]["Ref"]
    log_bucket = template_json["Resources"][log_bucket_id]["Properties"]
    assert log_bucket["PublicAccessBlockConfiguration"] == BLOCK_ALL
    assert "BucketEncryption" in log_bucket


def test_every_bucket_refuses_plain_http(template_json: dict[str, Any]) -> None:
    buckets = resources_of_type(template_json, "AWS::S3::Bucket")
    tls_only = set()
    for policy in resources_of_type(template_json, "AWS::S3::BucketPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (
                statement["Effect"] == "Deny"
                and statement["Action"] == "s3:*"
                and statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
            ):
                tls_only |= {render(resource) for resource in as_list(statement["Resource"])}
    for logical_id in buckets:
        assert {f"<{logical_id}.Arn>", f"<{logical_id}.Arn>/*"} <= tls_only, logical_id
