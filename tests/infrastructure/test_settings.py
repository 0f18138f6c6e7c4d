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


# --- optional parts: the EC2 fleet, the alarm topic --------------------------------------------------------------

FLEET = {"agent_wheels": ["runly_agent-0.1.0-py3-none-any.whl"], "environments": {"production": {}}}


def _stage(**values: object) -> dict[str, object]:
    return {"stage": "prod", "stages": {"prod": {"environments": ["production", "staging"], **values}}}


def test_every_cdk_json_stage_leaves_the_fleet_off_unless_it_declares_one() -> None:
    for stage, values in cdk_json_context()["stages"].items():
        settings = StageSettings.from_context({**cdk_json_context(), "stage": stage})
        assert (settings.fleet is None) == ("fleet" not in values)


def test_a_fleet_for_an_environment_the_stage_lacks_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"\['qa'\]"):
        StageSettings.from_context(_stage(fleet={**FLEET, "environments": {"qa": {}}}))


def test_a_fleet_group_with_more_minimum_than_maximum_nodes_is_refused() -> None:
    with pytest.raises(ValidationError, match="min_nodes"):
        StageSettings.from_context(_stage(fleet={**FLEET, "environments": {"production": {"min_nodes": 3}}}))


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"agent_wheels": ["runly.tar.gz"]}, "agent_wheels"),
        ({"agent_wheels": []}, "agent_wheels"),
        ({"vpc_cidr": "10.0.0.0/24"}, "vpc_cidr"),
        ({"drain_timeout_seconds": 7200}, "drain_timeout_seconds"),  # the lifecycle hook waits at most 7200 s
        ({"enviroments": {}}, "enviroments"),
    ],
)
def test_a_fleet_setting_out_of_bounds_is_refused(override: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        StageSettings.from_context(_stage(fleet={**FLEET, **override}))


def test_alarm_emails_are_checked_and_imply_the_topic() -> None:
    assert StageSettings.from_context(_stage()).alarms.notify is False
    assert StageSettings.from_context(_stage(alarms={"emails": ["ops@example.com"]})).alarms.notify is True
    with pytest.raises(ValidationError, match="not an email"):
        StageSettings.from_context(_stage(alarms={"emails": ["ops"]}))


# --- run events -------------------------------------------------------------------------------------------------


def test_run_events_default_to_terminal_and_take_all_or_off() -> None:
    assert StageSettings.from_context({"stage": "dev", "stages": {"dev": {}}}).run_events == "terminal"
    for mode in ("all", "terminal", "off"):
        context = {"stage": "dev", "stages": {"dev": {"run_events": mode}}}
        assert StageSettings.from_context(context).run_events == mode


def test_an_unknown_run_events_setting_is_refused_naming_the_choices() -> None:
    context = {"stage": "dev", "stages": {"dev": {"run_events": "finished"}}}
    with pytest.raises(ValidationError, match=r"run_events[\s\S]*'all', 'terminal' or 'off'"):
        StageSettings.from_context(context)
