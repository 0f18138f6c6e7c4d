"""One synthesis of the runly stack for the whole infrastructure suite (synth costs seconds, asserts microseconds)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk
from aws_cdk.assertions import Template

from infrastructure.settings import StageSettings
from infrastructure.stack import RunlyStack
from tests.infrastructure.synth import FLEET_STAGE, TEST_STAGE, fleet_synth_context, synth_context


@pytest.fixture(scope="session")
def stage_settings() -> StageSettings:
    return StageSettings.from_context(synth_context())


@pytest.fixture(scope="session")
def outdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cdk.out")


@pytest.fixture(scope="session")
def runly_stack(outdir: Path, stage_settings: StageSettings) -> RunlyStack:
    # The stack alone, without the cdk-nag plugin that `compose` adds to the app: a nag finding then fails the
    # nag test (test_compliance) with its list, instead of failing the synthesis under every other test.
    app = cdk.App(context=synth_context(), outdir=str(outdir))
    return RunlyStack(app, f"runly-{TEST_STAGE}", settings=stage_settings)


@pytest.fixture(scope="session")
def template(runly_stack: RunlyStack) -> Template:
    return Template.from_stack(runly_stack)


@pytest.fixture(scope="session")
def template_json(template: Template) -> dict[str, Any]:
    return dict(template.to_json())


@pytest.fixture(scope="session")
def fleet_settings() -> StageSettings:
    return StageSettings.from_context(fleet_synth_context())


@pytest.fixture(scope="session")
def fleet_stack(tmp_path_factory: pytest.TempPathFactory, fleet_settings: StageSettings) -> RunlyStack:
    """The stack with the EC2 fleet and the alarm topic on (both off in the default stage)."""
    app = cdk.App(context=fleet_synth_context(), outdir=str(tmp_path_factory.mktemp("cdk.out.fleet")))
    return RunlyStack(app, f"runly-{FLEET_STAGE}", settings=fleet_settings)


@pytest.fixture(scope="session")
def fleet_template_json(fleet_stack: RunlyStack) -> dict[str, Any]:
    return dict(Template.from_stack(fleet_stack).to_json())
