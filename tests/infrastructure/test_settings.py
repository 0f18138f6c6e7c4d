from __future__ import annotations

import pytest
from pydantic import ValidationError

from infrastructure.deployment import cdk_json_context
from infrastructure.settings import DEFAULT_STAGE, StageSettings


def test_cdk_json_default_stage_is_dev_with_the_default_environment_fully_bundled() -> None:
    settings = StageSettings.from_context(cdk_json_context())
    assert settings.stage == DEFAULT_STAGE == "dev"
    assert settings.environments == ("default",)
    assert settings.bundle_dependencies is True
    assert settings.cdk_environment() is None  # environment-agnostic unless cdk.json names account/region


@pytest.mark.parametrize("stage", sorted(cdk_json_context()["stages"]))
def test_every_stage_in_cdk_json_gives_valid_resource_names(stage: str) -> None:
    settings = StageSettings.from_context({**cdk_json_context(), "stage": stage})
    names = settings.resource_names(account="123456789012", region="eu-west-1")
    assert names.environments == settings.environments


def test_bundle_false_from_the_command_line_skips_dependencies() -> None:
    # Given `cdk synth -c bundle=false`, the CLI passes the string "false".
    settings = StageSettings.from_context({**cdk_json_context(), "bundle": "false"})
    assert settings.bundle_dependencies is False


def test_unknown_stage_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'qa'.*\['dev', 'prod'\]"):
        StageSettings.from_context({**cdk_json_context(), "stage": "qa"})


def test_misspelt_stage_setting_is_refused() -> None:
    context = {"stage": "dev", "stages": {"dev": {"enviroments": ["default"]}}}
    with pytest.raises(ValidationError, match="enviroments"):
        StageSettings.from_context(context)


def test_invalid_environment_name_is_refused_by_the_resource_naming_rule() -> None:
    settings = StageSettings.from_context({"stage": "dev", "stages": {"dev": {"environments": ["Prod EU"]}}})
    with pytest.raises(ValidationError, match="Prod EU"):
        settings.resource_names(account="123456789012", region="eu-west-1")


def test_account_and_region_pin_the_stack_environment() -> None:
    context = {"stage": "prod", "stages": {"prod": {"account": "123456789012", "region": "eu-west-1"}}}
    environment = StageSettings.from_context(context).cdk_environment()
    assert environment is not None
    assert (environment.account, environment.region) == ("123456789012", "eu-west-1")
