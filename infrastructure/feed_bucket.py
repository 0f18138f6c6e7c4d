"""The package feed: an S3 bucket holding the job packages (and, later, run logs)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infrastructure.nag import acknowledge_scoped_wildcard
from runly_core.resources import PACKAGES_PREFIX, RUNS_PREFIX

# A replaced or deleted package version stays recoverable this long.
NONCURRENT_VERSION_DAYS = 30
ACCESS_LOG_DAYS = 90
# Uploads are single presigned PUTs; a multipart upload left behind is garbage.
INCOMPLETE_UPLOAD_DAYS = 1


class FeedBucket(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, bucket_name: str) -> None:
        super().__init__(scope, construct_id)

        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,  # the only encryption S3 log delivery supports
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            lifecycle_rules=[s3.LifecycleRule(expiration=cdk.Duration.days(ACCESS_LOG_DAYS))],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        cdk.Validations.of(self.access_logs).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-S1",
                reason="This bucket receives the feed bucket's server access logs; logging it too would only log "
                "the log delivery itself.",
            )
        )

        self.bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=bucket_name,
            versioned=True,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="feed/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    noncurrent_version_expiration=cdk.Duration.days(NONCURRENT_VERSION_DAYS),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(INCOMPLETE_UPLOAD_DAYS),
                )
            ],
            # Packages are what nodes install; deleting the stack must not delete them.
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )

    def grant_run_objects_read(self, grantee: iam.IGrantable) -> None:
        """Get the objects of every environment's runs (``runs/*``: log chunks, outputs and checkpoints stored out
        of their items, runly_core.run_objects), which GET /runs/{id} and the logs routes serve."""
        iam.Grant.add_to_principal(
            grantee=grantee, actions=["s3:GetObject"], resource_arns=[self.bucket.arn_for_objects(f"{RUNS_PREFIX}*")]
        )
        acknowledge_scoped_wildcard(
            grantee,
            resource=self.bucket.node.default_child,  # type: ignore[arg-type]
            suffix=f"/{RUNS_PREFIX}*",
            reason="Run object keys (environment, run, attempt, digest) are known only at run time; the API only "
            "reads, and only under the runs/ prefix of the feed bucket.",
        )

    def grant_package_read_write(self, grantee: iam.IGrantable) -> None:
        """Put (presigned upload URLs are signed with the grantee's credentials) and get or head (to verify
        the sha256 and size) objects under the packages prefix.

        Plus s3:ListBucket on the bucket itself: without it S3 answers a head or get of a missing key with
        403 Forbidden instead of 404, and "not uploaded yet" would look like a permission error (moto, in
        the embedded stack, answers 404 either way).
        """
        iam.Grant.add_to_principal(
            grantee=grantee,
            # GetObjectVersion: registration downloads the very version it headed (functions/logic/packages.py).
            actions=["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"],
            resource_arns=[self.bucket.arn_for_objects(f"{PACKAGES_PREFIX}*")],
        )
        iam.Grant.add_to_principal(grantee=grantee, actions=["s3:ListBucket"], resource_arns=[self.bucket.bucket_arn])
        acknowledge_scoped_wildcard(
            grantee,
            resource=self.bucket.node.default_child,  # type: ignore[arg-type]
            suffix=f"/{PACKAGES_PREFIX}*",
            reason="Package keys (name, version, file) are known only at run time; the wildcard is confined to the "
            "packages/ prefix of the feed bucket.",
        )
