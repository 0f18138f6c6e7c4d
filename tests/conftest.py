from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import boto3
import botocore.loaders
import botocore.session
import pytest
from moto import mock_aws

from runly_cli.embedded.aws import create_resources
from runly_core import resources

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


class _PathsOnce(list[str]):
    """A loader's search paths, where boto3 appends its own data directory once per session made."""

    def append(self, path: str) -> None:
        if path not in self:
            super().append(path)


@functools.cache
def _shared_loader(search_path_string: str | None = None) -> botocore.loaders.Loader:
    loader = botocore.loaders.create_loader(search_path_string)
    loader._search_paths = _PathsOnce(loader.search_paths)
    return loader


# Every botocore session (each test's, each handler's) reads the same service models: parsed once per test
# process, not once per session (a third of the in-process moto tests' time went to parsing botocore's JSON). A
# loader caches what it read, and sessions share nothing else; botocore itself hands one loaded model to every
# client of a session.
botocore.session.create_loader = _shared_loader  # type: ignore[attr-defined]


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
