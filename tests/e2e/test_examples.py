"""Every example, packed, pushed and run end to end on the embedded stack, as its README says."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from typer.testing import CliRunner, Result

from runly_cli.embedded.stack import EmbeddedStack
from runly_cli.main import app
from runly_client.client import RunlyClient
from runly_core.contracts import EnqueueRunRequest, PackageVersionView, RunState


def test_hello(client: RunlyClient, hello: PackageVersionView) -> None:
    run = client.wait(client.enqueue(EnqueueRunRequest(package="hello", job="hello", config={"name": "e2e"})).id)

    assert run.state is RunState.SUCCEEDED, run.error
    assert run.output["greetings"] == ["Hello, e2e!"]


def test_checksums_runs_in_parallel_and_counts_failures_by_category(
    client: RunlyClient, push_example: Callable[[str], PackageVersionView]
) -> None:
    # Given the checksums package in the feed
    package = push_example("checksums")
    assert [job.name for job in package.jobs] == ["checksums"]
    assert "parallelism" in package.jobs[0].config_schema["properties"]

    # When it checksums a generated sample of 200 files, 4 at a time
    config = {"count": 200, "file_kb": 8, "max_file_kb": 16, "parallelism": 4}
    run = client.wait(client.enqueue(EnqueueRunRequest(package="checksums", job="checksums", config=config)).id)

    # Then it succeeds, with every 37th file too large and every 50th a dangling symlink
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.output["total"] == 200 and run.output["succeeded"] == 191
    assert run.output["failed_by_category"] == {"TooLarge": 5, "FileNotFoundError": 4}
    assert run.output["bytes"] == 191 * 8 * 1024
    # and the node recorded the job's last progress with the same counts
    assert run.progress is not None
    assert (run.progress.succeeded, run.progress.failed_by_category) == (191, run.output["failed_by_category"])


def test_countdown_runs_to_success_with_checkpoints(
    client: RunlyClient, push_example: Callable[[str], PackageVersionView]
) -> None:
    push_example("countdown")

    run = client.enqueue(EnqueueRunRequest(package="countdown", job="countdown", config={"count": 150, "delay": 0.01}))
    run = client.wait(run.id, timeout=120)

    assert run.state is RunState.SUCCEEDED, run.error
    assert run.output["succeeded"] == 150 and run.output["attempts"] == [1]
    # its watermark was checkpointed through the agent as it went (the last one: every tick done)
    assert run.checkpoint is not None and run.checkpoint.watermark == 150
    assert run.checkpoint.last_item_id == "1"


def _cli(stack: EmbeddedStack, *args: str) -> Result:
    env = {"RUNLY_API_URL": stack.api_url, "RUNLY_API_KEY": stack.admin_key, "RUNLY_PROFILE": "/nonexistent"}
    return CliRunner().invoke(app, list(args), env=env)


def test_the_cli_enqueues_and_watches_a_run_to_its_end(
    stack: EmbeddedStack, push_example: Callable[[str], PackageVersionView]
) -> None:
    push_example("countdown")

    result = _cli(stack, "enqueue", "countdown", "countdown", "--config", '{"count": 20, "delay": 0.01}', "--wait",
                  "--json")  # fmt: skip

    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["state"] == "Succeeded" and run["output"]["succeeded"] == 20
    shown = _cli(stack, "runs", "show", run["id"], "--json")
    assert json.loads(shown.stdout)["id"] == run["id"]


def test_the_cli_reports_a_refused_config_in_one_line(
    stack: EmbeddedStack, push_example: Callable[[str], PackageVersionView]
) -> None:
    push_example("countdown")

    result = _cli(stack, "enqueue", "countdown", "countdown", "--config", '{"count": "many"}')

    assert result.exit_code == 4
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("runly: error: HTTP 422") and "config.count" in line


def test_tally_runs_function_jobs_through_the_agent(
    client: RunlyClient, push_example: Callable[[str], PackageVersionView]
) -> None:
    # Given the function-form example in the feed: its jobs and schemas come from the decorated functions
    package = push_example("tally")
    assert sorted(job.name for job in package.jobs) == ["primes", "word-counts"]
    assert "segment" in next(j for j in package.jobs if j.name == "primes").config_schema["properties"]

    # When both run on the node
    primes = client.enqueue(EnqueueRunRequest(package="tally", job="primes", config={"limit": 1_000_000}))
    words = client.enqueue(EnqueueRunRequest(package="tally", job="word-counts", config={"sample_files": 100}))
    primes, words = client.wait(primes.id, timeout=120), client.wait(words.id, timeout=120)

    # Then each succeeds with its output
    assert primes.state is RunState.SUCCEEDED, primes.error
    assert primes.output == {"limit": 1_000_000, "primes": 78_498, "segments": 4}
    assert words.state is RunState.SUCCEEDED, words.error
    assert words.output["succeeded"] == 88
    assert words.output["failed_by_category"] == {"Empty": 8, "UnicodeDecodeError": 4}


def test_a_running_function_job_is_cancelled(
    client: RunlyClient, push_example: Callable[[str], PackageVersionView]
) -> None:
    push_example("tally")
    run = client.enqueue(EnqueueRunRequest(package="tally", job="primes", config={"limit": 10**10, "segment": 1000}))
    deadline = time.monotonic() + 60
    while (run := client.get_run(run.id)).checkpoint is None:  # running, and past its first checkpoint
        assert time.monotonic() < deadline, run
        time.sleep(0.2)

    client.cancel_run(run.id)

    run = client.wait(run.id, timeout=60)
    assert run.state is RunState.CANCELLED, run
    assert run.checkpoint is not None  # what it had done is durable: a requeue --resume starts there
