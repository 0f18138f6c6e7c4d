"""The embedded stack: the whole platform on one machine, as real processes.

- moto in server mode plays AWS on 127.0.0.1 (every component reaches it through AWS_ENDPOINT_URL);
- the local gateway plays API Gateway and calls the very Lambda handler the CDK stack deploys;
- node agents run as they would on a node.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import boto3

from runly_cli.embedded.aws import create_resources, schedule_settings
from runly_core import resources

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Children of a stack that is killed outright (SIGKILL) must not live on as orphans.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class EmbeddedStack:
    state_dir: Path = field(default_factory=lambda: Path(".runly"))
    environments: tuple[str, ...] = ("default",)
    stage: str = "local"
    agent_env: dict[str, str] = field(default_factory=dict)  # extra RUNLY_* settings for agents (tests: short leases)
    # SQS's in-flight cap, counted from each receipt as SQS does (runly_cli.embedded.moto_server); tests lower it.
    sqs_max_in_flight_seconds: int = resources.SQS_MAX_IN_FLIGHT_SECONDS
    # Delayed runs: the longest delay sent as an SQS delay, beyond which a run waits on a timer (ApiSettings
    # .delay_sqs_seconds); tests shrink it to see the timer path in seconds. None: SQS's 15 minutes.
    delay_sqs_seconds: int | None = None
    # Something to put in front of moto (bench.recorder: a proxy that records every AWS request): given moto's
    # endpoint, it returns the one every component of the stack is pointed at. None: moto itself.
    aws_front: Callable[[str], str] | None = None
    endpoint: str = ""
    moto_endpoint: str = ""
    api_url: str = ""
    admin_key: str = ""  # the secret of an admin key made at start (as `runly keys bootstrap` makes one)
    queue_urls: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    _run_dir: Path | None = None
    _agent_count: int = 0

    @property
    def names(self) -> resources.ResourceNames:
        return resources.ResourceNames(
            stage=self.stage,
            account=resources.LOCAL_ACCOUNT,
            region=resources.LOCAL_REGION,
            environments=self.environments,
        )

    @property
    def run_dir(self) -> Path:
        assert self._run_dir is not None, "stack not started"
        return self._run_dir

    def aws_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNLY_"))}
        env.update(
            {
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": "local",
                "AWS_DEFAULT_REGION": resources.LOCAL_REGION,
                "AWS_EC2_METADATA_DISABLED": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def session(self) -> boto3.session.Session:
        return boto3.session.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name=resources.LOCAL_REGION
        )

    def client(self, service: str):  # type: ignore[no-untyped-def]
        return self.session().client(service, endpoint_url=self.endpoint)  # type: ignore[call-overload]

    # ------------------------------------------------------------ processes
    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        log_path = self.run_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                args,
                cwd=self.run_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the stack, which stops its children in order
                preexec_fn=_die_with_parent,
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def start(self, *, agents: int = 1) -> EmbeddedStack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._run_dir = Path(tempfile.mkdtemp(prefix="stack-", dir=self.state_dir)).resolve()
        try:
            self._start_aws()
            self._bootstrap_admin_key()
            self._start_gateway()
            self._start_scheduler()
            for _ in range(agents):
                self.start_agent()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_aws(self) -> None:
        port = free_port()
        self.moto_endpoint = f"http://127.0.0.1:{port}"
        moto = self._spawn(
            "moto",
            [
                sys.executable, "-m", "runly_cli.embedded.moto_server", "-H", "127.0.0.1", "-p", str(port),
                "--sqs-max-in-flight-seconds", str(self.sqs_max_in_flight_seconds),
            ],
            self.aws_env(),
        )  # fmt: skip
        _wait_until(lambda: _http_ok(f"{self.moto_endpoint}/moto-api/"), what="moto server", child=moto)
        self.endpoint = self.aws_front(self.moto_endpoint) if self.aws_front else self.moto_endpoint
        self.queue_urls = create_resources(self.names, self.session(), self.endpoint)

    def _bootstrap_admin_key(self) -> None:
        from runly_cli.commands.keys import bootstrap_admin_key

        dynamodb = self.session().resource("dynamodb", endpoint_url=self.endpoint)
        _, self.admin_key = bootstrap_admin_key(self.names.table, dynamodb=dynamodb, name="embedded stack admin")

    def _control_plane_env(self) -> dict[str, str]:
        import json

        env = self.aws_env()
        env.update(
            {
                "RUNLY_TABLE_NAME": self.names.table,
                "RUNLY_FEED_BUCKET": self.names.feed_bucket,
                "RUNLY_QUEUE_URLS": json.dumps(self.queue_urls),
                **schedule_settings(self.names),
                "RUNLY_VALUES_PATH": self.names.values_path,  # variables and secrets: SSM parameters in moto
                **({"RUNLY_DELAY_SQS_SECONDS": str(self.delay_sqs_seconds)} if self.delay_sqs_seconds else {}),
                "POWERTOOLS_SERVICE_NAME": "runly-api",
                "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray locally
                "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
            }
        )
        return env

    def _start_gateway(self) -> None:
        ready = self.run_dir / "gateway.url"
        gateway = self._spawn(
            "gateway",
            [
                sys.executable,
                "-m",
                "runly_cli.embedded.gateway",
                "--handler",
                resources.API_FUNCTION_HANDLER,
                "--authorizer",
                resources.AUTHORIZER_FUNCTION_HANDLER,
                "--port",
                "0",
                "--ready-file",
                str(ready),
            ],
            self._control_plane_env(),
        )
        _wait_until(ready.exists, what="gateway", child=gateway)
        self.api_url = ready.read_text().strip()

    def _scheduler_command(self, *options: str) -> list[str]:
        settings = schedule_settings(self.names)
        return [
            sys.executable,
            "-m",
            "runly_cli.embedded.scheduler",
            "--group",
            settings["RUNLY_SCHEDULER_GROUP"],
            "--target-arn",
            settings["RUNLY_SCHEDULE_FIRE_FUNCTION_ARN"],
            *options,
        ]

    def _scheduler_env(self) -> dict[str, str]:
        return {**self._control_plane_env(), "POWERTOOLS_SERVICE_NAME": "runly-schedules"}

    def _start_scheduler(self) -> None:
        """EventBridge Scheduler's part (runly_cli.embedded.scheduler): fires the schedules moto keeps, on time."""
        self._spawn("scheduler", self._scheduler_command(), self._scheduler_env())

    def stop_scheduler(self, timeout: float = 15.0) -> None:
        """Stop the scheduler (as a restart of the stack does); ``start_scheduler`` starts it again. What it fires
        from stays in moto, so nothing due meanwhile is lost."""
        for child in [c for c in self.children if c.name == "scheduler"]:
            child.process.send_signal(signal.SIGTERM)
            child.process.wait(timeout=timeout)
            self.children.remove(child)

    def start_scheduler(self) -> None:
        self._start_scheduler()

    def fire_schedule(self, schedule_id: str, *, at: str | None = None) -> dict[str, object]:
        """Fire a schedule now (or for the scheduled time ``at``), as EventBridge Scheduler would; returns what the
        fire function returned."""
        completed = subprocess.run(
            self._scheduler_command("--fire", schedule_id, *(["--at", at] if at else [])),
            cwd=self.run_dir,
            env=self._scheduler_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"firing schedule {schedule_id} failed:\n{completed.stderr[-4000:]}")
        return dict(json.loads(completed.stdout.strip().splitlines()[-1]))

    def start_agent(self, environment: str | None = None, **settings: str) -> Child:
        environment = environment or self.environments[0]
        self._agent_count += 1
        node_id = f"local-node-{self._agent_count}"
        env = self.aws_env()
        env.update(
            {
                "RUNLY_ENVIRONMENT": environment,
                "RUNLY_QUEUE_URL": self.queue_urls[environment],
                "RUNLY_TABLE_NAME": self.names.table,
                "RUNLY_FEED_BUCKET": self.names.feed_bucket,
                "RUNLY_VALUES_PATH": self.names.values_path,
                "RUNLY_NODE_ID": node_id,
                "RUNLY_WORK_DIR": str(self.run_dir / node_id),
                **self.agent_env,
                **{f"RUNLY_{k.upper()}": v for k, v in settings.items()},
            }
        )
        # Package environments are shared by every local node: installs are content-addressed and locked.
        env.setdefault("RUNLY_PACKAGE_CACHE_DIR", str((self.state_dir / "package-cache").resolve()))
        return self._spawn(node_id, [sys.executable, "-m", "node_agent"], env)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop children in reverse order: agents first (they drain), then the gateway, then AWS."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    child.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0f s; killing it", child.name, timeout)
                    os.killpg(child.process.pid, signal.SIGKILL)
                    child.process.wait()
        self.children.clear()

    def __enter__(self) -> EmbeddedStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status < 500)
    except (urllib.error.URLError, OSError):
        return False


def _wait_until(predicate, *, what: str, child: Child, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if child.process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {child.process.returncode}:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not become ready within {timeout:.0f} s:\n{child.tail()}")
        time.sleep(0.05)


def print_tail(child: Child, stream: IO[str] = sys.stderr) -> None:
    print(f"--- {child.name} ({child.log_path}) ---\n{child.tail()}", file=stream)
