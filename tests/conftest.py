from __future__ import annotations

import os
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from runly_cli.embedded.aws import create_resources
from runly_core import resources

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@pytest.fixture
def names() -> resources.ResourceNames:
    return resources.ResourceNames(
        stage="test",
        account=resources.LOCAL_ACCOUNT,
        region=resources.LOCAL_REGION,
        environments=("default", "staging"),
    )


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, names: resources.ResourceNames) -> Iterator[dict[str, str]]:
    """In-process moto with the deployment's resources; yields environment -> queue URL."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", resources.LOCAL_REGION)
    with mock_aws():
        yield create_resources(names, boto3.session.Session())
