"""STS access for the credentials function. boto3 lives here only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import boto3
from pydantic import BaseModel


class AssumedCredentials(BaseModel):
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime


class RoleAssumer:
    def __init__(self, *, client: Any = None) -> None:
        self._sts = client or boto3.client("sts")

    def assume(
        self, *, role_arn: str, session_name: str, policy_json: str, duration_seconds: int
    ) -> AssumedCredentials:
        credentials = self._sts.assume_role(
            RoleArn=role_arn,
            RoleSessionName=session_name,
            Policy=policy_json,
            DurationSeconds=duration_seconds,
        )["Credentials"]
        return AssumedCredentials(
            access_key_id=credentials["AccessKeyId"],
            secret_access_key=credentials["SecretAccessKey"],
            session_token=credentials["SessionToken"],
            expiration=credentials["Expiration"],
        )
