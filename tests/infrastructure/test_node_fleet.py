"""The optional EC2 fleet: absent by default; with it on (the fleet stage), one Auto Scaling group per listed
environment, locked-down instances that install the agent as a systemd service, scaling on work per node and
draining on scale-in."""

from __future__ import annotations

import re
from typing import Any

import pytest

from infrastructure.node_fleet import (
    AGENT_PREFIX,
    DRAIN_SCRIPT,
    DRAIN_UNIT,
    JOB_FIREWALL_UNIT,
    LIFECYCLE_HOOK_NAME,
    NODE_UNIT,
    SESSION_MANAGER_ACTIONS,
    group_name,
    stop_timeout_seconds,
)
from infrastructure.settings import StageSettings
from runly_core import resources
from tests.infrastructure.cfn import as_list, render, resources_of_type
from tests.infrastructure.iam import feed_bucket_id, grants, logical_id, role_statements
from tests.infrastructure.synth import AGENT_WHEELS
from tests.infrastructure.test_node_access import (
    assert_items_limited_to_runs_and_nodes,
    assert_only_the_queue_wildcards,
    expand_queue_actions,
    expected_node_grants,
)

FLEET_TYPES = (
    "AWS::AutoScaling::AutoScalingGroup",
    "AWS::EC2::LaunchTemplate",
    "AWS::EC2::VPC",
    "AWS::AutoScaling::LifecycleHook",
    "AWS::AutoScaling::ScalingPolicy",
)


def test_no_fleet_unless_the_stage_asks_for_it(template_json: dict[str, Any], stage_settings: StageSettings) -> None:
    assert stage_settings.fleet is None
    for resource_type in FLEET_TYPES:
        assert resources_of_type(template_json, resource_type) == {}, resource_type


@pytest.fixture(scope="module")
def names(fleet_settings: StageSettings) -> resources.ResourceNames:
    return fleet_settings.resource_names(account="any", region="any")


@pytest.fixture(scope="module")
def groups(fleet_template_json: dict[str, Any], fleet_settings: StageSettings, names: resources.ResourceNames) -> dict:
    """Environment -> (logical id, properties) of its Auto Scaling group."""
    assert fleet_settings.fleet is not None
    return {
        environment: (
            logical_id(fleet_template_json, "AWS::AutoScaling::AutoScalingGroup", AutoScalingGroupName=name),
            fleet_template_json["Resources"][
                logical_id(fleet_template_json, "AWS::AutoScaling::AutoScalingGroup", AutoScalingGroupName=name)
            ]["Properties"],
        )
        for environment in fleet_settings.fleet.environments
        for name in [group_name(names, environment)]
    }


def _launch_template(template_json: dict[str, Any], group: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = template_json["Resources"][group["LaunchTemplate"]["LaunchTemplateId"]["Ref"]]["Properties"][
        "LaunchTemplateData"
    ]
    return data


def _user_data(template_json: dict[str, Any], group: dict[str, Any]) -> str:
    return render(_launch_template(template_json, group)["UserData"]["Fn::Base64"])


def _instance_role(template_json: dict[str, Any], group: dict[str, Any]) -> str:
    profile_id = _launch_template(template_json, group)["IamInstanceProfile"]["Arn"]["Fn::GetAtt"][0]
    [role] = template_json["Resources"][profile_id]["Properties"]["Roles"]
    return str(role["Ref"])


def test_one_group_per_listed_environment_with_its_size(
    fleet_template_json: dict[str, Any], groups: dict, fleet_settings: StageSettings
) -> None:
    assert fleet_settings.fleet is not None
    assert len(resources_of_type(fleet_template_json, "AWS::AutoScaling::AutoScalingGroup")) == len(groups) == 2
    for environment, (_, group) in groups.items():
        settings = fleet_settings.fleet.environments[environment]
        assert (group["MinSize"], group["MaxSize"]) == (str(settings.min_nodes), str(settings.max_nodes))
        assert "DesiredCapacity" not in group  # a deploy must not reset what scaling decided
        [collection] = group["MetricsCollection"]
        assert set(collection["Metrics"]) == {"GroupInServiceInstances", "GroupDesiredCapacity"}
        subnets = [s["Ref"] for s in group["VPCZoneIdentifier"]]
        assert len(subnets) == 2


def test_instances_require_imdsv2_and_encrypt_their_volume_and_match_their_architecture(
    fleet_template_json: dict[str, Any], groups: dict, fleet_settings: StageSettings
) -> None:
    assert fleet_settings.fleet is not None
    for environment, (_, group) in groups.items():
        data = _launch_template(fleet_template_json, group)
        assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
        [volume] = data["BlockDeviceMappings"]
        assert volume["Ebs"]["Encrypted"] is True and volume["Ebs"]["VolumeType"] == "gp3"
        settings = fleet_settings.fleet.environments[environment]
        assert volume["Ebs"]["VolumeSize"] == settings.volume_gib
        assert data["InstanceType"] == settings.instance_type
        image_parameter = fleet_template_json["Parameters"][data["ImageId"]["Ref"]]["Default"]
        assert "al2023" in image_parameter
        assert image_parameter.endswith("arm64" if settings.instance_type.startswith("t4g") else "x86_64")


def test_nodes_admit_nothing_inbound(fleet_template_json: dict[str, Any], groups: dict) -> None:
    for _, group in groups.values():
        for security_group in _launch_template(fleet_template_json, group)["SecurityGroupIds"]:
            properties = fleet_template_json["Resources"][security_group["Fn::GetAtt"][0]]["Properties"]
            assert "SecurityGroupIngress" not in properties
    assert resources_of_type(fleet_template_json, "AWS::EC2::SecurityGroupIngress") == {}


def test_the_vpc_has_no_nat_gateway_but_free_endpoints_and_flow_logs(fleet_template_json: dict[str, Any]) -> None:
    assert resources_of_type(fleet_template_json, "AWS::EC2::NatGateway") == {}
    endpoints = resources_of_type(fleet_template_json, "AWS::EC2::VPCEndpoint").values()
    assert {e["Properties"]["VpcEndpointType"] for e in endpoints} == {"Gateway"}
    services = {render(e["Properties"]["ServiceName"]).rsplit(".", 1)[-1] for e in endpoints}
    assert services == {"s3", "dynamodb"}
    [flow_log] = resources_of_type(fleet_template_json, "AWS::EC2::FlowLog").values()
    assert flow_log["Properties"]["TrafficType"] == "REJECT"


def test_each_instance_role_holds_its_environment_node_policy_and_its_own_drain_only(
    fleet_template_json: dict[str, Any], groups: dict, names: resources.ResourceNames
) -> None:
    feed = feed_bucket_id(fleet_template_json)
    for environment, (_, group) in groups.items():
        statements = role_statements(fleet_template_json, _instance_role(fleet_template_json, group))
        assert_only_the_queue_wildcards(statements)
        queue_id = logical_id(fleet_template_json, "AWS::SQS::Queue", QueueName=names.queues(environment).queue)
        drain_arn = (
            "arn:<AWS::Partition>:autoscaling:<AWS::Region>:<AWS::AccountId>:autoScalingGroup:*:"
            f"autoScalingGroupName/{group_name(names, environment)}"
        )
        assert expand_queue_actions(grants(statements)) == {
            *expected_node_grants(fleet_template_json, queue_id, environment, names.values_path),
            *(("s3:GetObject", f"<{feed}.Arn>/{AGENT_PREFIX}{wheel}") for wheel in AGENT_WHEELS),
            ("autoscaling:CompleteLifecycleAction", drain_arn),
            *{(action, "*") for action in SESSION_MANAGER_ACTIONS},
        }
        assert_items_limited_to_runs_and_nodes(statements, environment)
        # "*" only where IAM knows no resource: Session Manager's channel actions.
        for statement in statements:
            if "*" in as_list(statement["Resource"]):
                assert set(as_list(statement["Action"])) == set(SESSION_MANAGER_ACTIONS)


def test_user_data_installs_the_agent_and_the_shipped_units_and_starts_them(
    fleet_template_json: dict[str, Any], groups: dict, fleet_settings: StageSettings
) -> None:
    from node_agent.settings import AgentSettings

    assert fleet_settings.fleet is not None
    for environment, (_, group) in groups.items():
        script = _user_data(fleet_template_json, group)
        assert "python3.11 -m venv /opt/runly/venv" in script
        assert all(f"/{AGENT_PREFIX}{wheel} " in script for wheel in AGENT_WHEELS)
        assert "pip install --quiet " + " ".join(f"/opt/runly/{wheel}" for wheel in AGENT_WHEELS) in script
        # The units are the files in deploy/systemd, verbatim: on-premises installs use the same ones.
        for shipped in (NODE_UNIT, DRAIN_UNIT, DRAIN_SCRIPT):
            assert shipped.read_text().rstrip("\n") in script
        # The agent drains for the fleet's drain timeout; systemd waits a margin more before it kills.
        assert f"TimeoutStopSec={stop_timeout_seconds(fleet_settings.fleet)}" in script
        assert stop_timeout_seconds(fleet_settings.fleet) > fleet_settings.fleet.drain_timeout_seconds
        assert "systemctl enable --now runly-job-firewall.service runly-node.service runly-ec2-drain.service" in script

        # The agent's settings file names only settings the agent reads, and the ones it requires.
        [settings_line] = [line for line in script.splitlines() if line.endswith(" > /etc/runly/node.env")]
        given = set(re.findall(r"(RUNLY_[A-Z_]+)=", settings_line)) | {"RUNLY_NODE_ID"}
        prefix = str(AgentSettings.model_config.get("env_prefix", ""))
        fields = {f"{prefix}{name}".upper(): info for name, info in AgentSettings.model_fields.items()}
        assert given <= set(fields), given - set(fields)
        assert {name for name, info in fields.items() if info.is_required()} <= given
        assert f"RUNLY_ENVIRONMENT={environment}" in settings_line
        capacity = fleet_settings.fleet.environments[environment].runs_per_node
        assert f"RUNLY_CAPACITY={capacity}" in settings_line
        assert f"RUNLY_DRAIN_TIMEOUT_SECONDS={fleet_settings.fleet.drain_timeout_seconds}" in settings_line


def test_job_processes_run_as_their_own_user_who_cannot_reach_the_instance_metadata_service(
    fleet_template_json: dict[str, Any], groups: dict
) -> None:
    from node_agent.settings import AgentSettings

    job_user = AgentSettings.model_fields["job_user"].default
    useradd = f"useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /sbin/nologin {job_user}"
    for _, group in groups.values():
        script = _user_data(fleet_template_json, group)
        assert useradd in script
        # Rejected for the job user alone, IPv4 and IPv6, before the agent starts, on every boot
        assert JOB_FIREWALL_UNIT.rstrip("\n") in script
        for tool, address in (("iptables", "169.254.169.254"), ("ip6tables", "fd00:ec2::254")):
            assert f"{tool} -I OUTPUT -d {address} -m owner --uid-owner {job_user} -j REJECT" in JOB_FIREWALL_UNIT
        assert "Requires=runly-job-firewall.service" in script
    unit = NODE_UNIT.read_text()
    # The agent (not root) switches to the job user with exactly these capabilities, and creates the user
    assert "AmbientCapabilities=CAP_SETUID CAP_SETGID CAP_KILL CAP_CHOWN" in unit
    assert "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL CAP_CHOWN" in unit
    assert f"|| {useradd}'" in unit
    assert "Delegate=yes" in unit


def test_the_node_unit_drains_on_stop_signalling_the_agent_alone() -> None:
    unit = dict(
        line.split("=", 1) for line in NODE_UNIT.read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    # SIGTERM to the agent only: its jobs (own process groups) keep running while it drains.
    assert unit["KillMode"] == "mixed" and unit["KillSignal"] == "SIGTERM"
    # The agent's default drain (3600 s) ends before systemd's SIGKILL, leaving it time to hand runs back.
    from node_agent.settings import AgentSettings

    assert int(unit["TimeoutStopSec"]) > AgentSettings.model_fields["drain_timeout_seconds"].default
    assert unit["ExecStart"] == "/opt/runly/venv/bin/python -m node_agent"
    assert unit["User"] == "runly" and unit["NoNewPrivileges"] == "yes"


def test_scale_in_waits_for_the_drain(
    fleet_template_json: dict[str, Any], groups: dict, fleet_settings: StageSettings
) -> None:
    assert fleet_settings.fleet is not None
    for group_id, _ in groups.values():
        [hook] = [
            h["Properties"]
            for h in resources_of_type(fleet_template_json, "AWS::AutoScaling::LifecycleHook").values()
            if h["Properties"]["AutoScalingGroupName"] == {"Ref": group_id}
        ]
        assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
        assert hook["LifecycleHookName"] == LIFECYCLE_HOOK_NAME
        assert hook["DefaultResult"] == "CONTINUE"
        # The hook outlasts systemd's stop timeout, so the node completes it rather than Auto Scaling giving up.
        assert hook["HeartbeatTimeout"] > stop_timeout_seconds(fleet_settings.fleet)
        assert hook["HeartbeatTimeout"] <= 7200


def _policies(template_json: dict[str, Any], group_id: str) -> list[dict[str, Any]]:
    return [
        p["Properties"]
        for p in resources_of_type(template_json, "AWS::AutoScaling::ScalingPolicy").values()
        if p["Properties"]["AutoScalingGroupName"] == {"Ref": group_id}
    ]


def test_groups_track_runs_waiting_or_running_per_node_with_the_agent_capacity_as_target(
    fleet_template_json: dict[str, Any], groups: dict, fleet_settings: StageSettings, names: resources.ResourceNames
) -> None:
    assert fleet_settings.fleet is not None
    for environment, (group_id, _) in groups.items():
        [tracking] = [p for p in _policies(fleet_template_json, group_id) if p["PolicyType"] == "TargetTrackingScaling"]
        configuration = tracking["TargetTrackingConfiguration"]
        assert configuration["TargetValue"] == fleet_settings.fleet.environments[environment].runs_per_node
        queries = {q["Id"]: q for q in configuration["CustomizedMetricSpecification"]["Metrics"]}
        [returned] = [q for q in queries.values() if q.get("ReturnData")]
        assert returned["Expression"] == "(waiting + running) / nodes"
        queue_id = logical_id(fleet_template_json, "AWS::SQS::Queue", QueueName=names.queues(environment).queue)

        def metric(query_id: str, queries: dict[str, Any] = queries) -> tuple[str, str, Any]:
            stat = queries[query_id]["MetricStat"]["Metric"]
            [dimension] = stat["Dimensions"]
            return stat["Namespace"], stat["MetricName"], dimension["Value"]

        assert metric("waiting") == (
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            {"Fn::GetAtt": [queue_id, "QueueName"]},
        )
        assert metric("running") == (
            "AWS/SQS",
            "ApproximateNumberOfMessagesNotVisible",
            {"Fn::GetAtt": [queue_id, "QueueName"]},
        )
        assert metric("nodes") == ("AWS/AutoScaling", "GroupInServiceInstances", {"Ref": group_id})


def test_a_group_that_may_shrink_to_zero_wakes_to_one_node_when_runs_wait(
    fleet_template_json: dict[str, Any], groups: dict, fleet_settings: StageSettings
) -> None:
    assert fleet_settings.fleet is not None
    for environment, (group_id, _) in groups.items():
        steps = [p for p in _policies(fleet_template_json, group_id) if p["PolicyType"] == "StepScaling"]
        if fleet_settings.fleet.environments[environment].min_nodes > 0:
            assert steps == []
            continue
        # Exactly one step policy, setting exactly one node: never a step that shrinks the group.
        [wake] = steps
        assert wake["AdjustmentType"] == "ExactCapacity"
        assert wake["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
        [policy_id] = [
            k
            for k, p in resources_of_type(fleet_template_json, "AWS::AutoScaling::ScalingPolicy").items()
            if p["Properties"] is wake
        ]
        [alarm] = [
            a["Properties"]
            for a in resources_of_type(fleet_template_json, "AWS::CloudWatch::Alarm").values()
            if {"Ref": policy_id} in a["Properties"].get("AlarmActions", [])
        ]
        [expression] = [m["Expression"] for m in alarm["Metrics"] if m.get("ReturnData")]
        assert expression == "IF(FILL(desired, 0) == 0, waiting, 0)"
        assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
