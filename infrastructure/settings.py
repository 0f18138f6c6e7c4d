"""Stage settings: the `stages` block of cdk.json, selected with `-c stage=<name>`, as one typed model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aws_cdk as cdk
from pydantic import BaseModel, ConfigDict, Field

from runly.resources import ResourceNames

DEFAULT_STAGE = "dev"


class StageSettings(BaseModel):
    """One deployment (stage) of runly. Names are validated by `ResourceNames` when the stack is built."""

    # A misspelt key in cdk.json must fail the synth, not be silently ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str
    environments: tuple[str, ...] = ("default",)
    account: str | None = None
    region: str | None = None
    # False (`-c bundle=false`) ships only the source, without installing the runtime dependencies:
    # fast, for tests and quick synths. A deployable asset needs True.
    bundle_dependencies: bool = True
    # API Gateway stage throttling; HTTP API has no per-client keys yet, so this protects the table and the bill.
    api_throttle_rate_limit: float = Field(default=50, gt=0)
    api_throttle_burst_limit: int = Field(default=100, gt=0)

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> StageSettings:
        """Build from CDK context values: `stage`, `stages` (from cdk.json) and the optional `bundle` flag."""
        stage = context.get("stage") or DEFAULT_STAGE
        stages = context.get("stages") or {}
        if stage not in stages:
            raise ValueError(
                f"stage {stage!r} is not declared in the cdk.json context 'stages' (known: {sorted(stages)})"
            )
        values: dict[str, Any] = {**stages[stage], "stage": stage}
        if context.get("bundle") is not None:
            # `-c bundle=false` arrives as the string "false"; pydantic parses it.
            values["bundle_dependencies"] = context["bundle"]
        return cls.model_validate(values)

    def cdk_environment(self) -> cdk.Environment | None:
        """The stack's target; None (environment-agnostic) unless cdk.json names the account or region."""
        if self.account is None and self.region is None:
            return None
        return cdk.Environment(account=self.account, region=self.region)

    def resource_names(self, *, account: str, region: str) -> ResourceNames:
        return ResourceNames(stage=self.stage, account=account, region=region, environments=self.environments)
