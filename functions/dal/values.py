"""Variables and secrets of the environments: one SSM Parameter Store parameter each.

``{values_path}/{environment}/variables/{name}`` is a ``String``, ``{values_path}/{environment}/secrets/{name}`` a
``SecureString`` encrypted with the AWS-managed key ``aws/ssm`` (runly_core.resources). Secrets are read here by their
metadata only (DescribeParameters): nothing in the API's code path ever asks SSM to decrypt one, so no secret value
can reach a response or a log line of the API. The node's agent reads them (node_agent.aws.get_values).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
from botocore.exceptions import ClientError

from runly_core.resources import (
    SSM_TIER,
    environment_values_path,
    value_parameter,
)

SECURE = "SecureString"
PLAIN = "String"
# DescribeParameters and GetParametersByPath return at most 50 and 10 parameters a page.
DESCRIBE_PAGE = 50
BY_PATH_PAGE = 10


@dataclass(frozen=True)
class StoredValue:
    name: str
    version: int
    updated_at: datetime
    value: str | None = None  # variables only


class ValuesUnavailable(Exception):
    """SSM refused or failed (throttled, limit reached): nothing was changed, the caller may retry."""


class ValueLimitReached(Exception):
    """SSM's parameter quota of the account and region is reached."""


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class ValueStore:
    def __init__(self, values_path: str, *, client: Any = None) -> None:
        self.values_path = values_path
        self._ssm = client or boto3.client("ssm")

    def _parameter(self, environment: str, kind: str, name: str) -> str:
        return value_parameter(self.values_path, environment, kind, name)

    def _folder(self, environment: str, kind: str) -> str:
        return f"{environment_values_path(self.values_path, environment)}{kind}"

    def put(self, environment: str, kind: str, name: str, value: str, *, secure: bool) -> int:
        """Create or replace; returns the parameter's new version."""
        try:
            answer = self._ssm.put_parameter(
                Name=self._parameter(environment, kind, name),
                Value=value,
                Type=SECURE if secure else PLAIN,
                Overwrite=True,
                Tier=SSM_TIER,
                **({"KeyId": "alias/aws/ssm"} if secure else {}),
            )
        except ClientError as exc:
            if _code(exc) in ("ParameterLimitExceeded", "ParameterMaxVersionLimitExceeded"):
                raise ValueLimitReached(_code(exc)) from exc
            raise ValuesUnavailable(_code(exc) or "SSM failed") from exc
        return int(answer["Version"])

    def delete(self, environment: str, kind: str, name: str) -> bool:
        """False when there was no such value."""
        try:
            self._ssm.delete_parameter(Name=self._parameter(environment, kind, name))
        except ClientError as exc:
            if _code(exc) == "ParameterNotFound":
                return False
            raise ValuesUnavailable(_code(exc) or "SSM failed") from exc
        return True

    def get_variable(self, environment: str, name: str) -> StoredValue | None:
        try:
            answer = self._ssm.get_parameter(Name=self._parameter(environment, "variables", name))
        except ClientError as exc:
            if _code(exc) == "ParameterNotFound":
                return None
            raise ValuesUnavailable(_code(exc) or "SSM failed") from exc
        return _stored(answer["Parameter"], self._folder(environment, "variables"), with_value=True)

    def variables(self, environment: str) -> list[StoredValue]:
        folder = self._folder(environment, "variables")
        found: list[StoredValue] = []
        token: str | None = None
        try:
            while True:
                page = self._ssm.get_parameters_by_path(
                    Path=folder, Recursive=False, MaxResults=BY_PATH_PAGE, **({"NextToken": token} if token else {})
                )
                found += [_stored(p, folder, with_value=True) for p in page.get("Parameters", [])]
                token = page.get("NextToken")
                if not token:
                    break
        except ClientError as exc:
            raise ValuesUnavailable(_code(exc) or "SSM failed") from exc
        return sorted(found, key=lambda v: v.name)

    def describe(self, environment: str, kind: str, name: str | None = None) -> list[StoredValue]:
        """The metadata of the values of ``kind`` (of one, when ``name`` is given), never a value."""
        folder = self._folder(environment, kind)
        if name is None:
            filters = [{"Key": "Path", "Option": "OneLevel", "Values": [folder]}]
        else:
            filters = [{"Key": "Name", "Option": "Equals", "Values": [f"{folder}/{name}"]}]
        return sorted(self._describe(filters, folder), key=lambda v: v.name)

    def _describe(self, filters: list[dict[str, Any]], folder: str) -> Iterator[StoredValue]:
        token: str | None = None
        try:
            while True:
                page = self._ssm.describe_parameters(
                    ParameterFilters=filters, MaxResults=DESCRIBE_PAGE, **({"NextToken": token} if token else {})
                )
                for parameter in page.get("Parameters", []):
                    yield _stored(parameter, folder, with_value=False)
                token = page.get("NextToken")
                if not token:
                    return
        except ClientError as exc:
            raise ValuesUnavailable(_code(exc) or "SSM failed") from exc


def _stored(parameter: dict[str, Any], folder: str, *, with_value: bool) -> StoredValue:
    return StoredValue(
        name=str(parameter["Name"]).removeprefix(f"{folder}/"),
        version=int(parameter["Version"]),
        updated_at=parameter["LastModifiedDate"],
        value=str(parameter["Value"]) if with_value else None,
    )
