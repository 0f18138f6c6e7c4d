"""The API's and the authorizer's access to API keys: the platform's one key store (runly_core.key_store), on the
functions' own DynamoDB resource."""

from __future__ import annotations

import boto3

from runly_core.key_store import KeyStore


def key_store_of(table_name: str) -> KeyStore:
    return KeyStore(table_name, resource=boto3.resource("dynamodb"))
