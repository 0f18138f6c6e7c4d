"""The ``runly`` CLI through typer's CliRunner, against a fake API on a local port:
errors are one line, exit codes tell outcomes, read commands speak --json."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from runly.wire import Checkpoint
from runly_cli.main import app
from runly_cli.run_local import write_checkpoint
from runly_core.contracts import RunState

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).isoformat()

Route = Callable[[dict[str, Any] | None, str], tuple[int, Any]]


def run_view(run_id: str = "run-1", state: str = "Running", **extra: Any) -> dict[str, Any]:
    return {
        "id": run_id, "state": state, "package": "hello", "version": "1.0.0", "job": "hello",
        "environment": "default", "config": {}, "timeout_seconds": 60, "max_attempts": 3, "created_at": NOW,
        "progress": {"total": 10, "succeeded": 4, "failed": 1, "failed_by_category": {"ValueError": 1}},
        **extra,
    }  # fmt: skip


class FakeApi:
    """Answers ``METHOD /path`` from a table of routes; records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str, Any, str | None]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                path, _, query = self.path.partition("?")
                api.requests.append((self.command, self.path, body, self.headers.get("Authorization")))
                route = api.routes.get(f"{self.command} {path}")
                status, payload = route(body, query) if route else (404, {"code": "not_found", "message": "no route"})
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeApi]:
    fake = FakeApi()
    monkeypatch.setenv("RUNLY_PROFILE", str(tmp_path / "profile.toml"))
    monkeypatch.setenv("RUNLY_API_URL", fake.url)
    monkeypatch.setenv("RUNLY_API_KEY", "rly_test")
    monkeypatch.delenv("RUNLY_ENVIRONMENT", raising=False)
    yield fake
    fake.server.shutdown()


runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def assert_one_line_error(result: Any, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runly: error: "), result.stderr
    assert text in lines[0]
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- runs over the API


def test_runs_show_prints_a_run_and_its_json(api: FakeApi) -> None:
    api.routes["GET /runs/run-1"] = lambda body, query: (200, run_view(state="Succeeded", output={"ok": True}))

    shown = invoke("runs", "show", "run-1")
    as_json = invoke("runs", "show", "run-1", "--json")

    assert shown.exit_code == 0 and "run-1" in shown.stdout and "Succeeded" in shown.stdout
    assert "ValueError: 1" in shown.stdout
    assert json.loads(as_json.stdout)["output"] == {"ok": True}
    assert api.requests[0][3] == "Bearer rly_test"


@pytest.mark.parametrize(
    ("state", "code"),
    [("Succeeded", 0), ("Failed", 1), ("Cancelled", 3), ("TimedOut", 5)],
)
def test_watch_follows_a_run_to_its_end_and_exits_by_outcome(api: FakeApi, state: str, code: int) -> None:
    states = iter(["Queued", "Running", state])
    api.routes["GET /runs/run-1"] = lambda body, query: (200, run_view(state=next(states, state)))

    result = invoke("runs", "watch", "run-1", "--interval", "0.1")

    assert result.exit_code == code, result.output
    assert state in result.stdout


def test_watch_json_prints_the_terminal_run(api: FakeApi) -> None:
    states = iter(["Running", "Failed"])
    api.routes["GET /runs/run-1"] = lambda body, query: (200, run_view(state=next(states, "Failed")))

    result = invoke("runs", "watch", "run-1", "--interval", "0.1", "--json")

    assert result.exit_code == 1
    assert json.loads(result.stdout)["state"] == "Failed"


def test_runs_ls_passes_filters_and_prints_json(api: FakeApi) -> None:
    seen: list[str] = []

    def page(body: Any, query: str) -> tuple[int, Any]:
        seen.append(query)
        return 200, {"items": [run_view("a"), run_view("b", "Queued")], "next_cursor": "c2"}

    api.routes["GET /runs"] = page

    table = invoke("runs", "ls", "--state", "Running", "--package", "hello", "--limit", "5")
    as_json = invoke("runs", "ls", "--json")

    assert table.exit_code == 0 and "a" in table.stdout and "5/10 (1 failed)" in table.stdout
    assert "--cursor c2" in table.stdout
    assert "state=Running" in seen[0] and "package=hello" in seen[0] and "limit=5" in seen[0]
    assert [run["id"] for run in json.loads(as_json.stdout)["items"]] == ["a", "b"]


def test_enqueue_sends_the_config_and_waits_for_the_outcome(api: FakeApi) -> None:
    api.routes["POST /runs"] = lambda body, query: (201, run_view("new", "Queued", config=(body or {})["config"]))
    api.routes["GET /runs/new"] = lambda body, query: (200, run_view("new", "Succeeded"))

    printed = invoke("enqueue", "hello", "hello", "--config", '{"name": "Ada"}', "--environment", "staging")
    waited = invoke("enqueue", "hello", "hello", "--wait", "--json")

    assert printed.exit_code == 0 and printed.stdout.strip() == "new"
    assert api.requests[0][2] == {
        "package": "hello", "job": "hello", "config": {"name": "Ada"}, "environment": "staging",
        "timeout_seconds": 3600, "max_attempts": 3, "tags": {},
    }  # fmt: skip
    assert waited.exit_code == 0 and json.loads(waited.stdout)["state"] == "Succeeded"


def test_enqueue_and_ls_take_tags(api: FakeApi) -> None:
    seen: list[str] = []
    api.routes["POST /runs"] = lambda body, query: (201, run_view("new", "Queued", tags=(body or {})["tags"]))
    api.routes["GET /runs/new"] = lambda body, query: (200, run_view("new", "Queued", tags={"tenant": "acme"}))

    def page(body: Any, query: str) -> tuple[int, Any]:
        seen.append(query)
        return 200, {"items": [], "next_cursor": None}

    api.routes["GET /runs"] = page

    enqueued = invoke("enqueue", "hello", "hello", "--tag", "tenant=acme", "--tag", "url=https://x.test/?a=b")
    listed = invoke("runs", "ls", "--tag", "tenant=acme", "--tag", "tier=gold")
    shown = invoke("runs", "show", "new")

    assert enqueued.exit_code == 0, enqueued.output
    assert api.requests[0][2]["tags"] == {"tenant": "acme", "url": "https://x.test/?a=b"}
    assert listed.exit_code == 0 and urllib.parse.parse_qs(seen[0])["tag"] == ["tenant:acme,tier:gold"]
    assert "tags: tenant=acme" in shown.stdout
    # a malformed option is a usage error, and nothing is sent
    bad = invoke("enqueue", "hello", "hello", "--tag", "tenant")
    assert bad.exit_code == 2 and "key=value" in bad.output
    assert len(api.requests) == 3


def test_cancel_requeue_logs_and_nodes(api: FakeApi) -> None:
    api.routes["POST /runs/r/cancel"] = lambda body, query: (200, run_view("r", "Cancelling"))
    api.routes["POST /runs/r/requeue"] = lambda body, query: (201, run_view("r2", "Queued", requeued_from="r"))
    pages = iter([
        {"run_id": "r", "attempt": 1, "text": "hello\n", "next_cursor": "k1", "complete": False},
        {"run_id": "r", "attempt": 1, "text": "world\n", "next_cursor": None, "complete": True},
    ])  # fmt: skip
    api.routes["GET /runs/r/logs"] = lambda body, query: (200, next(pages))
    node = {
        "id": "n1", "host": "h", "environment": "default", "status": "online", "state": "busy", "capacity": 2,
        "running": ["r"], "agent_version": "0.1.0", "started_at": NOW, "last_seen": NOW, "expires_at": NOW,
        "drain_requested": False,
    }  # fmt: skip
    api.routes["GET /nodes"] = lambda body, query: (200, {"items": [node]})

    assert invoke("cancel", "r").stdout.strip() == "run r: Cancelling"
    requeued = invoke("requeue", "r", "--resume", "--json")
    assert json.loads(requeued.stdout)["requeued_from"] == "r"
    assert api.requests[-1][2] == {"resume": True}
    assert invoke("logs", "r", "-f").stdout == "hello\nworld\n"
    nodes = invoke("nodes", "ls")
    assert nodes.exit_code == 0 and "n1" in nodes.stdout and "1/2" in nodes.stdout
    assert json.loads(invoke("nodes", "ls", "--json").stdout)["items"][0]["id"] == "n1"


# ---------------------------------------------------------------- errors: one line, an exit code


def test_an_api_error_is_one_line(api: FakeApi) -> None:
    result = invoke("runs", "show", "nope")
    assert_one_line_error(result, 4, "HTTP 404 not_found: no route")


def test_an_unreachable_api_is_one_line(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = invoke("runs", "ls", "--api", f"http://127.0.0.1:{port}")
    assert_one_line_error(result, 4, "cannot reach the API")


def test_no_api_url_anywhere_says_where_to_set_one(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNLY_API_URL")
    assert_one_line_error(invoke("runs", "ls"), 4, "no API URL: pass --api URL, set RUNLY_API_URL")


def test_a_bad_config_is_a_usage_error(api: FakeApi) -> None:
    assert_one_line_error(invoke("enqueue", "hello", "hello", "--config", "{nope"), 2, "--config is not JSON")
    assert_one_line_error(invoke("enqueue", "hello", "hello", "--config", "[1]"), 2, "must be a JSON object")
    assert_one_line_error(invoke("enqueue", "hello", "hello", "--config", "@/no/such.json"), 2, "cannot read")


def test_a_missing_bundle_is_one_line(api: FakeApi) -> None:
    assert_one_line_error(invoke("push", "/no/such.runly"), 4, "no such file: /no/such.runly")


def test_the_profile_supplies_the_api_url_and_key(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNLY_API_URL")
    monkeypatch.delenv("RUNLY_API_KEY")
    api.routes["GET /runs/run-1"] = lambda body, query: (200, run_view())

    assert invoke("profile", "set", "api_url", api.url).exit_code == 0
    assert invoke("profile", "set", "api_key", "rly_from_profile").exit_code == 0
    assert_one_line_error(invoke("profile", "set", "colour", "blue"), 2, "unknown setting 'colour'")

    assert invoke("runs", "show", "run-1").exit_code == 0
    assert api.requests[-1][3] == "Bearer rly_from_profile"
    shown = json.loads(invoke("profile", "show", "--json").stdout)
    assert shown["settings"]["api_key"]["value"] == "rly_from_pro..."


# ---------------------------------------------------------------- on this machine


def test_init_makes_a_project_whose_jobs_are_listed(tmp_path: Path) -> None:
    project = tmp_path / "my-jobs"

    made = invoke("init", str(project))
    listed = invoke("jobs", str(project), "--json")

    assert made.exit_code == 0, made.output
    assert (project / "src" / "my_jobs" / "jobs.py").is_file() and (project / "tests" / "test_jobs.py").is_file()
    assert 'words = "my_jobs.jobs:Words"' in (project / "pyproject.toml").read_text()
    (spec,) = json.loads(listed.stdout)
    assert spec["name"] == "words" and "parallelism" in spec["config_schema"]["properties"]
    assert_one_line_error(invoke("init", str(project)), 4, "is not empty")


@pytest.mark.parametrize(("form", "entry_point"), [("class", "my_jobs.jobs:Words"), ("function", "my_jobs.jobs:words")])
def test_init_makes_a_project_in_either_form_whose_own_tests_pass(tmp_path: Path, form: str, entry_point: str) -> None:
    # Given a project made with the sample job in one form
    project = tmp_path / "my-jobs"
    made = invoke("init", str(project), "--form", form)
    assert made.exit_code == 0, made.output

    # Then the job is declared and described, and the tests runly init wrote pass, as its author would run them
    assert f'words = "{entry_point}"' in (project / "pyproject.toml").read_text()
    (spec,) = json.loads(invoke("jobs", str(project), "--json").stdout)
    assert (spec["name"], spec["entry_point"]) == ("words", entry_point)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project, capture_output=True, text=True
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout
    assert_one_line_error(invoke("init", str(tmp_path / "other"), "--form", "lambda"), 2, "--form must be one of")


def test_jobs_of_a_bundle_come_from_its_manifest(tmp_path: Path) -> None:
    from tests.unit._bundles import fake_bundle

    result = invoke("jobs", str(fake_bundle(tmp_path)))

    assert result.exit_code == 0 and "demo.jobs:Demo" in result.stdout


def test_jobs_of_a_directory_that_is_no_project_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(invoke("jobs", str(tmp_path)), 4, "has no pyproject.toml")


def test_run_local_runs_a_job_and_exits_by_outcome() -> None:
    countdown = str(REPO / "examples" / "countdown")

    ok = invoke("run-local", countdown, "countdown", "--config", '{"count": 20, "delay": 0}', "--json")
    failed = invoke("run-local", countdown, "countdown", "--config", '{"count": 20, "delay": -1}')
    unknown = invoke("run-local", countdown, "nope")

    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert report["outcome"] == "succeeded" and report["output"]["succeeded"] == 20
    assert failed.exit_code == 1 and "ValidationError" in failed.stdout
    assert_one_line_error(unknown, 4, "countdown has no job 'nope'; its jobs: countdown")


def test_run_local_resumes_from_a_checkpoint_file(tmp_path: Path) -> None:
    # Given a checkpoint file left by an earlier local run that did 12 of 20 ticks (20, 19, ... 9)
    checkpoint_file = tmp_path / "checkpoint.json"
    write_checkpoint(checkpoint_file, Checkpoint(watermark=12, last_item_id="9", attempt=1, written_at=NOW))  # type: ignore[arg-type]

    result = invoke(
        "run-local", str(REPO / "examples" / "countdown"), "countdown",
        "--config", '{"count": 20, "delay": 0}', "--checkpoint-file", str(checkpoint_file), "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)["output"]
    assert output["resumed_at"] == 12 and output["attempts"] == [2]
    assert not checkpoint_file.exists()  # done: nothing left to resume


def test_node_start_runs_the_agent_with_the_settings_as_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr("os.execve", lambda path, args, env: started.append((path, args, env)))

    result = invoke(
        "node", "start", "--environment", "staging", "--queue-url", "https://sqs/q", "--table", "t",
        "--bucket", "b", "--capacity", "4", "--set", "lease_seconds=30",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    ((_path, args, env),) = started
    assert args[1:] == ["-m", "node_agent"]
    assert {k: env[k] for k in ("RUNLY_ENVIRONMENT", "RUNLY_QUEUE_URL", "RUNLY_TABLE_NAME", "RUNLY_FEED_BUCKET")} == {
        "RUNLY_ENVIRONMENT": "staging", "RUNLY_QUEUE_URL": "https://sqs/q", "RUNLY_TABLE_NAME": "t",
        "RUNLY_FEED_BUCKET": "b",
    }  # fmt: skip
    assert env["RUNLY_CAPACITY"] == "4" and env["RUNLY_LEASE_SECONDS"] == "30"
    assert_one_line_error(invoke("node", "start", "--set", "oops"), 2, "--set takes NAME=VALUE")


def test_every_read_command_has_json() -> None:
    for command in (["jobs"], ["runs", "ls"], ["runs", "show"], ["runs", "watch"], ["logs"], ["nodes", "ls"],
                    ["profile", "show"], ["run-local"]):  # fmt: skip
        result = invoke(*command, "--help")
        assert "--json" in result.stdout, command


def test_exit_codes_map_run_states() -> None:
    from runly_cli.common import exit_code_for

    assert [exit_code_for(state) for state in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)] == [0, 1, 3]


def test_ctrl_c_cancels_run_local_and_the_next_run_resumes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    # Given a local run of the countdown keeping its checkpoints in a file
    checkpoint_file = tmp_path / "countdown.json"
    command = [sys.executable, "-m", "runly_cli.main", "run-local", str(REPO / "examples" / "countdown"), "countdown",
               "--checkpoint-file", str(checkpoint_file), "--config"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "120"}
    first = subprocess.Popen([*command, '{"count": 300, "delay": 0.02}'], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60  # a hang, not a speed: the CLI's start is slow on a loaded machine
    while not checkpoint_file.exists():
        assert time.monotonic() < deadline and first.poll() is None, "no checkpoint was written"
        time.sleep(0.05)

    # When Ctrl-C stops it
    first.send_signal(signal.SIGINT)
    stdout, _ = first.communicate(timeout=20)

    # Then it ends Cancelled, with its checkpoint kept
    assert first.returncode == 3, stdout
    flat = " ".join(stdout.split())  # rich wraps long lines (the temp path) at the terminal width
    assert "cancelled" in flat and "run again to resume" in flat
    watermark = Checkpoint.model_validate_json(checkpoint_file.read_text()).watermark
    assert watermark is not None and 0 < watermark < 300

    # And the next run resumes from it, then forgets it
    second = subprocess.run([*command, '{"count": 300, "delay": 0}', "--json"], env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    output = json.loads(second.stdout)["output"]
    assert output["resumed_at"] == watermark and output["succeeded"] == 300 and output["attempts"] == [1, 2]
    assert not checkpoint_file.exists()


STRAY_JOB = '''
import subprocess
import sys

from pydantic import BaseModel

from runly import Job


class NoConfig(BaseModel):
    pass


class Stray(Job[NoConfig]):
    """Starts a process in a session of its own and ends without waiting for it."""

    def run(self) -> dict[str, int]:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        return {"left": child.pid}
'''


def test_run_local_ends_the_processes_a_job_leaves_behind(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from node_agent.process_tree import state_of

    # Given a job that leaves a process running in a session of its own (no process group signal reaches it)
    project = tmp_path / "stray"
    (project / "src" / "stray").mkdir(parents=True)
    (project / "src" / "stray" / "__init__.py").write_text("")
    (project / "src" / "stray" / "jobs.py").write_text(STRAY_JOB)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "stray"\nversion = "1.0.0"\ndependencies = ["runly"]\n\n'
        '[project.entry-points."runly.jobs"]\nstray = "stray.jobs:Stray"\n'
    )

    # When it runs locally, as its author would
    result = subprocess.run(
        [sys.executable, "-m", "runly_cli.main", "run-local", str(project), "stray", "--json"],
        env={**os.environ, "COLUMNS": "120"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    # Then the run succeeds, and the process it left is gone with it (and the author is told)
    assert result.returncode == 0, result.stdout + result.stderr
    left = json.loads(result.stdout)["output"]["left"]
    try:
        assert state_of(left) in (None, "Z", "X"), f"process {left} outlived its local run"
    finally:
        if state_of(left) not in (None, "Z", "X"):
            os.kill(left, 9)
    assert "the job left 1 process(es) running" in result.stderr


def test_enqueue_sends_a_delay_or_a_not_before(api: FakeApi) -> None:
    api.routes["POST /runs"] = lambda body, query: (201, run_view("new", "Queued"))

    assert invoke("enqueue", "hello", "hello", "--delay", "90s").exit_code == 0
    assert invoke("enqueue", "hello", "hello", "--delay", "2h").exit_code == 0
    assert invoke("enqueue", "hello", "hello", "--not-before", "2030-01-02T03:04:05+02:00").exit_code == 0

    assert api.requests[0][2]["delay_seconds"] == 90 and "not_before" not in api.requests[0][2]
    assert api.requests[1][2]["delay_seconds"] == 7200
    assert api.requests[2][2]["not_before"] == "2030-01-02T03:04:05+02:00"
    assert "delay_seconds" not in api.requests[2][2]


def test_a_bad_delay_is_a_usage_error(api: FakeApi) -> None:
    assert_one_line_error(invoke("enqueue", "hello", "hello", "--delay", "soon"), 2, "--delay: expected seconds")
    assert_one_line_error(
        invoke("enqueue", "hello", "hello", "--not-before", "2030-01-02T03:04:05"), 2, "--not-before: give a time zone"
    )
    assert_one_line_error(
        invoke("enqueue", "hello", "hello", "--delay", "5", "--not-before", "2030-01-02T03:04:05Z"), 2, "not both"
    )
    assert api.requests == []
