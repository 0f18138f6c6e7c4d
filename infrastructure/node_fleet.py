"""Optional EC2 nodes: per environment listed in the stage's `fleet` settings, one Auto Scaling group whose
instances install the agent at boot and run it as the systemd service of `deploy/systemd/runly-node.service`.

- Network: a small VPC of its own (two public /24 subnets, no NAT gateway: no idle cost), free gateway endpoints
  for S3 and DynamoDB, flow logs of rejected traffic; the nodes' security group admits nothing inbound (Session
  Manager, not SSH, for a shell).
- Instances: IMDSv2 only, encrypted gp3 root volume, an instance role of their own holding the environment's
  node policy (`functions.nodes.policy`, the one on-premises nodes get), read access to the agent's wheel,
  completion of their own group's lifecycle hook, and Session Manager.
- Scaling: target tracking on the work per in-service node, (visible + in-flight messages) / nodes, with the
  agent's capacity as the target. In-flight messages are runs that are running: counting them keeps the group
  from scaling in nodes that are busy. When the group may shrink to zero nodes, a step policy wakes it (exactly
  one node) as soon as a message waits while the group wants no node, which a per-node ratio cannot express.
- Scale-in drains: a termination lifecycle hook holds the instance; `runly-ec2-drain` sees it in the instance
  metadata, stops the agent (SIGTERM: finish running runs, take no new ones) and completes the hook.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from functions.nodes.policy import QUEUE_ACTIONS, node_policy_document, parameters_arn, values_arn
from infrastructure.environment_queues import EnvironmentQueues
from infrastructure.feed_bucket import FeedBucket
from infrastructure.job_values import VALUES_PATH
from infrastructure.nag import (
    NODE_QUEUE_ACTIONS_REASON,
    acknowledge_scoped_wildcard,
    acknowledge_wildcard_actions,
    acknowledge_wildcard_arn,
)
from infrastructure.run_store import RunStore
from infrastructure.settings import (
    DRAIN_HOOK_MARGIN_SECONDS,
    DRAIN_STOP_MARGIN_SECONDS,
    FleetSettings,
    NodeGroupSettings,
)
from runly_core.records import environment_runs_prefix
from runly_core.resources import PACKAGES_PREFIX, ResourceNames

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
NODE_UNIT = DEPLOY_DIR / "runly-node.service"
DRAIN_UNIT = DEPLOY_DIR / "runly-ec2-drain.service"
DRAIN_SCRIPT = DEPLOY_DIR / "runly-ec2-drain"

# The feed prefix the fleet installs the agent's wheel from (`aws s3 cp dist/runly-*.whl s3://<feed>/agent/`).
AGENT_PREFIX = "agent/"
LIFECYCLE_HOOK_NAME = "runly-drain"
INSTANCE_WARMUP_SECONDS = 300
WORK_DIR = "/var/lib/runly"

# Session Manager's agent calls these; none of them supports resource-level permissions.
SESSION_MANAGER_ACTIONS = [
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
]


def stop_timeout_seconds(fleet: FleetSettings) -> int:
    """systemd's TimeoutStopSec: the agent's drain, then time for its own cold stop before SIGKILL."""
    return fleet.drain_timeout_seconds + DRAIN_STOP_MARGIN_SECONDS


def group_name(names: ResourceNames, environment: str) -> str:
    return f"{names.prefix}-nodes-{environment}"


def _heredoc(path: str, content: str, *, mode: str) -> list[str]:
    delimiter = "RUNLY_FILE_END"
    if delimiter in content:
        raise ValueError(f"{path}: its content holds the heredoc delimiter")
    return [f"cat > {path} <<'{delimiter}'", content.rstrip("\n"), delimiter, f"chmod {mode} {path}"]


def _env_file(path: str, variables: dict[str, str]) -> list[str]:
    lines = " ".join(shlex.quote(f"{name}={value}") for name, value in variables.items())
    return [f"printf '%s\\n' {lines} > {path}", f"chmod 0600 {path}"]


JOB_USER = "runly-job"
# Rejects the job user's packets to the instance metadata service (IPv4 and the Nitro IPv6 endpoint); idempotent
# (-C before -I), run before the agent starts on every boot.
_IMDS_RULES = " && ".join(
    f"{{ {tool} -C OUTPUT -d {address} -m owner --uid-owner {JOB_USER} -j REJECT 2>/dev/null"
    f" || {tool} -I OUTPUT -d {address} -m owner --uid-owner {JOB_USER} -j REJECT; }}"
    for tool, address in (("iptables", "169.254.169.254"), ("ip6tables", "fd00:ec2::254"))
)
JOB_FIREWALL_UNIT = f"""[Unit]
Description=runly: job processes cannot reach the instance metadata service
Before=runly-node.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c '{_IMDS_RULES}'

[Install]
WantedBy=multi-user.target
"""


class NodeGroup(Construct):
    """The nodes of one environment."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        environment: str,
        settings: NodeGroupSettings,
        fleet: FleetSettings,
        names: ResourceNames,
        vpc: ec2.IVpc,
        security_group: ec2.ISecurityGroup,
        queue: sqs.IQueue,
        store: RunStore,
        feed: FeedBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.group_name = group_name(names, environment)
        # Built from the name, not the group (whose ARN holds an id known only once it exists): no cycle between
        # the group, its launch template and this role.
        group_arn = stack.format_arn(
            service="autoscaling",
            resource="autoScalingGroup",
            resource_name=f"*:autoScalingGroupName/{self.group_name}",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )

        values = parameters_arn(
            partition=stack.partition, region=stack.region, account=stack.account, values_path=names.values_path
        )
        self.role = iam.Role(
            self,
            "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=f"runly nodes of environment {environment} (EC2)",
            inline_policies={
                "node": iam.PolicyDocument.from_json(
                    node_policy_document(
                        environment=environment,
                        queue_arn=queue.queue_arn,
                        feed_bucket_arn=feed.bucket.bucket_arn,
                        table_arn=store.table.table_arn,
                        parameters_arn=values,
                    )
                ),
                "fleet": iam.PolicyDocument(
                    statements=[
                        iam.PolicyStatement(
                            sid="InstallAgent",
                            actions=["s3:GetObject"],
                            resources=[
                                feed.bucket.arn_for_objects(f"{AGENT_PREFIX}{wheel}") for wheel in fleet.agent_wheels
                            ],
                        ),
                        iam.PolicyStatement(
                            sid="CompleteOwnDrain",
                            actions=["autoscaling:CompleteLifecycleAction"],
                            resources=[group_arn],
                        ),
                        iam.PolicyStatement(sid="SessionManager", actions=SESSION_MANAGER_ACTIONS, resources=["*"]),
                    ]
                ),
            },
        )
        feed_resource: cdk.CfnResource = feed.bucket.node.default_child  # type: ignore[assignment]
        acknowledge_scoped_wildcard(
            self.role,
            resource=feed_resource,
            suffix=f"/{PACKAGES_PREFIX}*",
            reason="A node downloads whichever package version a run names; reads are confined to the packages/ "
            "prefix of the feed bucket.",
        )
        acknowledge_scoped_wildcard(
            self.role,
            resource=feed_resource,
            suffix=f"/{environment_runs_prefix(environment)}*",
            reason="A node uploads the log chunks of the runs it executes (runs/<environment>/<run>/logs/<attempt>/"
            "<seq>.log, keys known at run time) and outputs; confined to its environment's runs/ prefix.",
        )
        acknowledge_wildcard_actions(self.role, actions=QUEUE_ACTIONS, reason=NODE_QUEUE_ACTIONS_REASON)
        acknowledge_wildcard_arn(
            self.role,
            arn=values_arn(values, environment),
            reason="A node reads the variables and secrets its runs' jobs declare (names known at run time); "
            "reads are confined to its environment's values path.",
        )
        acknowledge_wildcard_arn(
            self.role,
            arn=group_arn,
            reason="An Auto Scaling group ARN holds a UUID known only once the group exists; the group's name pins "
            "the ARN, and the only action on it is CompleteLifecycleAction.",
        )
        cdk.Validations.of(self.role).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="Session Manager's agent actions (ssm:UpdateInstanceInformation, ssmmessages:*Channel) "
                "support no resource-level permissions; this is the documented minimum, narrower than "
                "AmazonSSMManagedInstanceCore.",
            )
        )

        instance_type = ec2.InstanceType(settings.instance_type)
        arm = instance_type.architecture == ec2.InstanceArchitecture.ARM_64
        self.launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            instance_type=instance_type,
            machine_image=ec2.MachineImage.latest_amazon_linux2023(
                cpu_type=ec2.AmazonLinuxCpuType.ARM_64 if arm else ec2.AmazonLinuxCpuType.X86_64
            ),
            role=self.role,
            security_group=security_group,
            require_imdsv2=True,
            http_put_response_hop_limit=1,  # the host only: no container on the node reaches the role's credentials
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        settings.volume_gib,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                )
            ],
            user_data=self._user_data(
                environment=environment,
                settings=settings,
                fleet=fleet,
                queue=queue,
                store=store,
                feed=feed,
                values_path=names.values_path,
            ),
        )

        self.group = autoscaling.AutoScalingGroup(
            self,
            "Group",
            auto_scaling_group_name=self.group_name,
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            launch_template=self.launch_template,
            min_capacity=settings.min_nodes,
            max_capacity=settings.max_nodes,
            group_metrics=[
                autoscaling.GroupMetrics(
                    autoscaling.GroupMetric.IN_SERVICE_INSTANCES, autoscaling.GroupMetric.DESIRED_CAPACITY
                )
            ],
            default_instance_warmup=cdk.Duration.seconds(INSTANCE_WARMUP_SECONDS),
        )
        self.group.add_lifecycle_hook(
            "Drain",
            lifecycle_hook_name=LIFECYCLE_HOOK_NAME,
            lifecycle_transition=autoscaling.LifecycleTransition.INSTANCE_TERMINATING,
            heartbeat_timeout=cdk.Duration.seconds(stop_timeout_seconds(fleet) + DRAIN_HOOK_MARGIN_SECONDS),
            default_result=autoscaling.DefaultResult.CONTINUE,
        )
        cdk.Validations.of(self.group).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-AS3",
                reason="Scaling activity is in the group's activity history and CloudWatch; the alarms that matter "
                "(queue age, dead letters) watch the work itself, not each launch and termination.",
            )
        )
        self._scale_on_work(queue=queue, settings=settings)

    def _scale_on_work(self, *, queue: sqs.IQueue, settings: NodeGroupSettings) -> None:
        def query(
            query_id: str, namespace: str, metric: str, dimension: tuple[str, str], stat: str
        ) -> autoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty:
            return autoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty(
                id=query_id,
                return_data=False,
                metric_stat=autoscaling.CfnScalingPolicy.TargetTrackingMetricStatProperty(
                    stat=stat,
                    metric=autoscaling.CfnScalingPolicy.MetricProperty(
                        namespace=namespace,
                        metric_name=metric,
                        dimensions=[
                            autoscaling.CfnScalingPolicy.MetricDimensionProperty(name=dimension[0], value=dimension[1])
                        ],
                    ),
                ),
            )

        queue_dimension = ("QueueName", queue.queue_name)
        group_dimension = ("AutoScalingGroupName", self.group.auto_scaling_group_name)
        autoscaling.CfnScalingPolicy(
            self,
            "ScaleOnWorkPerNode",
            auto_scaling_group_name=self.group.auto_scaling_group_name,
            policy_type="TargetTrackingScaling",
            estimated_instance_warmup=INSTANCE_WARMUP_SECONDS,
            target_tracking_configuration=autoscaling.CfnScalingPolicy.TargetTrackingConfigurationProperty(
                target_value=float(settings.runs_per_node),
                customized_metric_specification=autoscaling.CfnScalingPolicy.CustomizedMetricSpecificationProperty(
                    metrics=[
                        query("waiting", "AWS/SQS", "ApproximateNumberOfMessagesVisible", queue_dimension, "Sum"),
                        query("running", "AWS/SQS", "ApproximateNumberOfMessagesNotVisible", queue_dimension, "Sum"),
                        query("nodes", "AWS/AutoScaling", "GroupInServiceInstances", group_dimension, "Average"),
                        autoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty(
                            id="work_per_node",
                            expression="(waiting + running) / nodes",
                            label="Runs waiting or running per in-service node",
                            return_data=True,
                        ),
                    ]
                ),
            ),
        )

        if settings.min_nodes == 0:
            # Target tracking scales in proportion to the nodes there are, so from zero it never starts one: set
            # the group to exactly one node when runs wait and the group wants none. Conditioned on the desired
            # capacity (not the in-service count), so it never shrinks a group whose nodes are still booting.
            wake = autoscaling.StepScalingAction(
                self,
                "WakeFromZero",
                auto_scaling_group=self.group,
                adjustment_type=autoscaling.AdjustmentType.EXACT_CAPACITY,
            )
            wake.add_adjustment(adjustment=1, lower_bound=0)
            cloudwatch.Alarm(
                self,
                "RunsWaitWithoutNodes",
                alarm_description=f"runly: runs wait in {queue.queue_name} and the group wants no node: start one",
                metric=cloudwatch.MathExpression(
                    expression="IF(FILL(desired, 0) == 0, waiting, 0)",
                    label="Runs waiting while the group wants no node",
                    using_metrics={
                        "waiting": queue.metric_approximate_number_of_messages_visible(statistic="Maximum"),
                        "desired": cloudwatch.Metric(
                            namespace="AWS/AutoScaling",
                            metric_name="GroupDesiredCapacity",
                            dimensions_map={"AutoScalingGroupName": self.group.auto_scaling_group_name},
                            statistic="Maximum",
                        ),
                    },
                    period=cdk.Duration.minutes(1),
                ),
                threshold=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ).add_alarm_action(cloudwatch_actions.AutoScalingAction(wake))

    def _user_data(
        self,
        *,
        environment: str,
        settings: NodeGroupSettings,
        fleet: FleetSettings,
        queue: sqs.IQueue,
        store: RunStore,
        feed: FeedBucket,
        values_path: str,
    ) -> ec2.UserData:
        region = cdk.Stack.of(self).region
        wheels = [f"/opt/runly/{wheel}" for wheel in fleet.agent_wheels]
        node_settings = {
            "RUNLY_ENVIRONMENT": environment,
            "RUNLY_QUEUE_URL": queue.queue_url,
            "RUNLY_TABLE_NAME": store.table.table_name,
            "RUNLY_FEED_BUCKET": feed.bucket.bucket_name,
            VALUES_PATH: values_path,
            "RUNLY_CAPACITY": str(settings.runs_per_node),
            "RUNLY_DRAIN_TIMEOUT_SECONDS": str(fleet.drain_timeout_seconds),
            "RUNLY_WORK_DIR": WORK_DIR,
            "RUNLY_REGION": region,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
        }
        drain_settings = {
            "RUNLY_AUTO_SCALING_GROUP": self.group_name,
            "RUNLY_LIFECYCLE_HOOK": LIFECYCLE_HOOK_NAME,
            "AWS_REGION": region,
        }
        user_data = ec2.UserData.for_linux()
        user_data.add_commands(
            "set -euo pipefail",
            # Amazon Linux 2023's python3 is 3.9; runly needs 3.11.
            "dnf install -y python3.11",
            f"id runly >/dev/null 2>&1 || useradd --system --home-dir {WORK_DIR} --shell /sbin/nologin runly",
            # Jobs run as a user of their own (RUNLY_JOB_USER), which may not reach the instance metadata service
            # (the role's credentials): a hop limit of 1 stops containers, not processes of the host.
            f"id {JOB_USER} >/dev/null 2>&1 || useradd --system --user-group --no-create-home"
            f" --home-dir /nonexistent --shell /sbin/nologin {JOB_USER}",
            "dnf install -y iptables-nft",
            *_heredoc("/etc/systemd/system/runly-job-firewall.service", JOB_FIREWALL_UNIT, mode="0644"),
            *_heredoc(
                "/etc/systemd/system/runly-node.service.d/firewall.conf",
                "[Unit]\nRequires=runly-job-firewall.service\nAfter=runly-job-firewall.service\n",
                mode="0644",
            ),
            f"install -d -m 0750 -o runly -g runly {WORK_DIR}",
            "install -d -m 0755 /etc/runly /opt/runly /etc/systemd/system/runly-node.service.d",
            *(
                f"aws s3 cp --region {region} s3://{feed.bucket.bucket_name}/{AGENT_PREFIX}{name} {path}"
                for name, path in zip(fleet.agent_wheels, wheels, strict=True)
            ),
            "python3.11 -m venv /opt/runly/venv",
            # The agent's own wheels and, from PyPI, the rest of what they require (never the CLI).
            f"/opt/runly/venv/bin/pip install --quiet {' '.join(wheels)}",
            *_env_file("/etc/runly/node.env", node_settings),
            # The node is named after its instance, so a node in the API is found in the console and back.
            "TOKEN=$(curl -sf -X PUT http://169.254.169.254/latest/api/token "
            "-H 'X-aws-ec2-metadata-token-ttl-seconds: 60')",
            'echo "RUNLY_NODE_ID=$(curl -sf -H "X-aws-ec2-metadata-token: $TOKEN" '
            'http://169.254.169.254/latest/meta-data/instance-id)" >> /etc/runly/node.env',
            *_env_file("/etc/runly/drain.env", drain_settings),
            *_heredoc("/etc/systemd/system/runly-node.service", NODE_UNIT.read_text(), mode="0644"),
            *_heredoc(
                "/etc/systemd/system/runly-node.service.d/drain.conf",
                f"[Service]\nTimeoutStopSec={stop_timeout_seconds(fleet)}\n",
                mode="0644",
            ),
            *_heredoc("/usr/local/bin/runly-ec2-drain", DRAIN_SCRIPT.read_text(), mode="0755"),
            *_heredoc("/etc/systemd/system/runly-ec2-drain.service", DRAIN_UNIT.read_text(), mode="0644"),
            "systemctl daemon-reload",
            "systemctl enable --now runly-job-firewall.service runly-node.service runly-ec2-drain.service",
        )
        return user_data


class NodeFleet(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: FleetSettings,
        names: ResourceNames,
        store: RunStore,
        feed: FeedBucket,
        queues: EnvironmentQueues,
    ) -> None:
        super().__init__(scope, construct_id)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(settings.vpc_cidr),
            max_azs=2,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="nodes", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24)
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDB": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.DYNAMODB),
            },
        )
        self.flow_logs = logs.LogGroup(self, "FlowLogs", retention=logs.RetentionDays.ONE_MONTH)
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(self.flow_logs),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "NodeSecurityGroup",
            vpc=self.vpc,
            description="runly nodes: nothing inbound; outbound to AWS, package indexes and what jobs call",
            allow_all_outbound=True,
        )
        self.groups: dict[str, NodeGroup] = {}
        for environment, group_settings in settings.environments.items():
            self.groups[environment] = NodeGroup(
                self,
                f"Nodes-{environment}",
                environment=environment,
                settings=group_settings,
                fleet=settings,
                names=names,
                vpc=self.vpc,
                security_group=self.security_group,
                queue=queues.queues[environment],
                store=store,
                feed=feed,
            )
