"""The agent's settings: read from RUNLY_* variables and a KEY=value file, validated at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from node_agent.settings import AgentSettings, read_env_file

REQUIRED = {"RUNLY_QUEUE_URL": "https://queue", "RUNLY_TABLE_NAME": "store", "RUNLY_FEED_BUCKET": "feed"}


def test_settings_come_from_prefixed_variables_in_any_case_and_others_are_ignored() -> None:
    settings = AgentSettings.load(
        environ={**REQUIRED, "runly_capacity": "5", "Runly_Heartbeat_Seconds": "2.5", "RUNLY_UNKNOWN": "x", "HOME": "/"}
    )
    assert settings.queue_url == "https://queue" and settings.table_name == "store"
    assert settings.capacity == 5 and settings.heartbeat_seconds == 2.5
    assert settings.lease_seconds == 60 and settings.idle_refresh_seconds == 600  # defaults
    assert settings.node_id  # generated


def test_a_settings_file_is_read_and_the_environment_wins_over_it(tmp_path: Path) -> None:
    config = tmp_path / "node.env"
    config.write_text(
        "# the node's settings\n"
        "\n"
        "RUNLY_QUEUE_URL=https://from-file\n"
        "export RUNLY_TABLE_NAME = store\n"
        'RUNLY_FEED_BUCKET="feed bucket"\n'
        "RUNLY_NODE_ID='node-7'\n"
        "RUNLY_CAPACITY=3 # runs at once\n"
        "RUNLY_WORK_DIR=/var/lib/runly\n"
        "not a setting\n"
    )
    settings = AgentSettings.load(env_file=config, environ={"RUNLY_CAPACITY": "4", "RUNLY_QUEUE_URL": "https://env"})
    assert settings.queue_url == "https://env"
    assert (settings.table_name, settings.feed_bucket, settings.node_id) == ("store", "feed bucket", "node-7")
    assert settings.capacity == 4
    assert settings.work_dir == Path("/var/lib/runly")


def test_the_shipped_example_file_reads_as_systemd_reads_it() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "runly-node.env.example"
    values = read_env_file(example)
    assert values["RUNLY_REGION"] == "eu-west-1" and values["RUNLY_DRAIN_TIMEOUT_SECONDS"] == "3600"
    settings = AgentSettings.load(env_file=example, environ={})
    assert settings.node_key is not None and settings.api_url


def test_a_missing_settings_file_reads_as_empty(tmp_path: Path) -> None:
    assert read_env_file(tmp_path / "absent.env") == {}
    assert AgentSettings.load(env_file=tmp_path / "absent.env", environ=REQUIRED).table_name == "store"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "queue_url\n  Field required"),
        ({"RUNLY_CAPACITY": "0"}, "capacity\n  Input should be greater than or equal to 1"),
        ({"RUNLY_CAPACITY": "two"}, "capacity\n  Input should be a valid integer"),
        ({"RUNLY_HEARTBEAT_SECONDS": "31"}, "heartbeat_seconds (31.0) must be at most half of lease_seconds (60)"),
        ({"RUNLY_NODE_KEY": "rly_secret"}, "node_key needs api_url"),
        ({"RUNLY_IDLE_REFRESH_SECONDS": "0"}, "idle_refresh_seconds\n  Input should be greater than 0"),
        ({"RUNLY_MAX_IN_FLIGHT_SECONDS": "100"}, "max_in_flight_seconds (100) must be at least twice lease_seconds"),
        ({"RUNLY_MAX_IN_FLIGHT_SECONDS": "43201"}, "max_in_flight_seconds\n  Input should be less than or equal to"),
    ],
)
def test_invalid_settings_say_which_and_why(given: dict[str, str], message: str) -> None:
    environ = {**REQUIRED, **given} if given else {}
    with pytest.raises(ValidationError) as invalid:
        AgentSettings.load(environ=environ)
    assert message in str(invalid.value)
    assert "rly_secret" not in str(invalid.value)  # a node key is a secret, even in an error


def test_the_agent_starts_without_pydantic_settings(tmp_path: Path) -> None:
    # Its import costs an idle agent about 9 MB of memory
    probe = "import sys, node_agent.__main__; print('pydantic_settings' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"


def test_python_m_node_agent_reports_invalid_settings_and_exits_2(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "RUNLY_CAPACITY": "0", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "node_agent"], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2]
    )
    assert done.returncode == 2
    assert done.stderr.startswith("invalid agent settings: ")
    assert "queue_url" in done.stderr and "capacity" in done.stderr


def test_a_run_is_bounded_and_jobs_run_as_their_own_user_by_default() -> None:
    settings = AgentSettings.load(environ=REQUIRED)
    assert (settings.memory_limit_bytes, settings.pids_limit, settings.job_user) == (4 * 1024**3, 4096, "runly-job")
    lowered = AgentSettings.load(
        environ={
            **REQUIRED,
            "RUNLY_MEMORY_LIMIT_BYTES": str(512 * 1024**2),
            "RUNLY_PIDS_LIMIT": "64",
            "RUNLY_JOB_USER": "",
        }
    )
    assert (lowered.memory_limit_bytes, lowered.pids_limit, lowered.job_user) == (512 * 1024**2, 64, "")
    with pytest.raises(ValidationError, match="memory_limit_bytes"):
        AgentSettings.load(environ={**REQUIRED, "RUNLY_MEMORY_LIMIT_BYTES": "1024"})
