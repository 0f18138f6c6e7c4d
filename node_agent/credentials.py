"""AWS credentials for an on-premises node, from its node key: no long-lived AWS keys on the node.

The agent exchanges its node key at ``POST /nodes/credentials`` for short-lived credentials
limited to its environment (15 minutes, STS's least), and botocore refreshes them through the
same call before they expire: from ADVISORY_REFRESH_SECONDS before expiry (a failed refresh
then keeps the current credentials), and at the latest MANDATORY_REFRESH_SECONDS before it.
botocore's own defaults (15 and 10 minutes) would refresh a 15-minute session on every call.
"""

from __future__ import annotations

import logging
import urllib.request
from typing import Any

import boto3
import botocore.session
from botocore.credentials import RefreshableCredentials

from runly_core.contracts import NodeCredentials

log = logging.getLogger(__name__)
CREDENTIALS_PATH = "/nodes/credentials"
ADVISORY_REFRESH_SECONDS = 5 * 60
MANDATORY_REFRESH_SECONDS = 2 * 60


def fetch_node_credentials(api_url: str, node_key: str, *, timeout: float = 15.0) -> NodeCredentials:
    request = urllib.request.Request(api_url.rstrip("/") + CREDENTIALS_PATH, data=b"{}", method="POST")
    request.add_header("Authorization", f"Bearer {node_key}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return NodeCredentials.model_validate_json(response.read())


def node_key_session(api_url: str, node_key: str, region: str) -> boto3.session.Session:
    """A boto3 session whose credentials come from the node key and refresh themselves."""

    def refresh() -> dict[str, Any]:
        credentials = fetch_node_credentials(api_url, node_key)
        log.info("node credentials for environment %s, valid until %s", credentials.environment, credentials.expiration)
        return {
            "access_key": credentials.access_key_id,
            "secret_key": credentials.secret_access_key,
            "token": credentials.session_token,
            "expiry_time": credentials.expiration.isoformat(),
        }

    refreshable = RefreshableCredentials.create_from_metadata(
        metadata=refresh(),
        refresh_using=refresh,
        method="runly-node-key",
        advisory_timeout=ADVISORY_REFRESH_SECONDS,
        mandatory_timeout=MANDATORY_REFRESH_SECONDS,
    )
    core = botocore.session.get_session()
    core._credentials = refreshable  # botocore's documented way for custom refreshable credentials
    core.set_config_variable("region", region)
    return boto3.session.Session(botocore_session=core)
