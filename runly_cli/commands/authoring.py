"""``runly init``, ``jobs``, ``run-local`` and ``node start``: what happens on the job author's machine."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from node_agent import process_tree
from runly.wire import JobSpec
from runly_cli.common import (
    EXIT_OK,
    EXIT_RUN_CANCELLED,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    CliError,
    JsonOption,
    console,
    handle_errors,
    parse_config,
    print_json,
)
from runly_cli.view import RunView as LiveRunView

# The SDK logs each failed item as "item <id> failed (<category>) after <n> attempt(s): <error>".
_FAILED_ITEM = re.compile(r"item (?P<id>.*?) failed \((?P<category>[^)]*)\) after \d+ attempt\(s\): (?P<error>.*)")
RECENT_ERRORS = 5


# ---------------------------------------------------------------- init

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "runly jobs"
requires-python = ">=3.11"
dependencies = ["runly"]

# Each job: name = "module:{kind}". `runly jobs .` lists them, `runly pack .` bundles them.
[project.entry-points."runly.jobs"]
words = "{package}.jobs:{job}"

[tool.pytest.ini_options]
pythonpath = ["src"]
testpaths = ["tests"]
"""

_JOBS = '''\
"""The jobs of {name}. Try: runly run-local . words --config '{{"words": ["a", "b", ""]}}'"""

from __future__ import annotations

import hashlib
import time

from pydantic import Field

from runly import Disposition, ItemConfig, ItemFailed, ItemJob


class WordsConfig(ItemConfig):
    # ItemConfig adds parallelism, max_failed_items, max_failed_ratio and item_retries (per run).
    words: list[str] = Field(default=["alpha", "beta", "gamma", ""], description="the words to hash")
    delay: float = Field(default=0.1, ge=0, description="seconds of pretend work per word")


class Words(ItemJob[WordsConfig, str]):
    """Hashes each word, a few at a time; an empty word fails with the category Empty."""

    parallelism = 2  # the job's default; a run may set config.parallelism

    def items(self) -> list[str]:
        # A stable order: a resumed attempt skips the words an earlier attempt finished.
        return self.config.words

    def process(self, word: str) -> str:
        if not word:
            raise ItemFailed("an empty word", category="Empty")
        time.sleep(self.config.delay)
        digest = hashlib.sha256(word.encode()).hexdigest()
        self.log.info("%s -> %s", word, digest[:12])
        return digest

    def finalize(self, disposition: Disposition) -> dict[str, object]:
        # Always runs; what it returns is the run's output.
        return {{**self.summary(), "disposition": disposition.value}}
'''

# The same job as decorated functions (`runly init --form function`).
_FUNCTION_JOBS = '''\
"""The jobs of {name}. Try: runly run-local . words --config '{{"words": ["a", "b", ""]}}'"""

from __future__ import annotations

import hashlib
import time

from pydantic import Field

import runly
from runly import Disposition, ItemConfig, ItemFailed


class WordsConfig(ItemConfig):
    # ItemConfig adds parallelism, max_failed_items, max_failed_ratio and item_retries (per run).
    words: list[str] = Field(default=["alpha", "beta", "gamma", ""], description="the words to hash")
    delay: float = Field(default=0.1, ge=0, description="seconds of pretend work per word")


def word_list(config: WordsConfig) -> list[str]:
    # A stable order: a resumed attempt skips the words an earlier attempt finished.
    return config.words


def report(config: WordsConfig, disposition: Disposition, job: runly.ItemJob[WordsConfig, str]) -> dict[str, object]:
    # Always runs; what it returns is the run's output.
    return {{**job.summary(), "disposition": disposition.value}}


@runly.item_job(items=word_list, finalize=report, parallelism=2)  # parallelism: a run may set config.parallelism
def words(config: WordsConfig, word: str, job: runly.ItemJob[WordsConfig, str]) -> str:
    """Hashes each word, a few at a time; an empty word fails with the category Empty."""
    if not word:
        raise ItemFailed("an empty word", category="Empty")
    time.sleep(config.delay)
    digest = hashlib.sha256(word.encode()).hexdigest()
    job.log.info("%s -> %s", word, digest[:12])
    return digest
'''

_TEST = """\
from runly.testing import run_job

from {package}.jobs import {job}


def test_every_word_is_hashed_and_empty_words_fail():
    run = run_job({job}, {{"words": ["a", "", "b"], "delay": 0}})

    assert run.succeeded
    assert run.counts.succeeded == 2
    assert run.counts.failed_by_category == {{"Empty": 1}}
    assert run.output["disposition"] == "succeeded"


def test_a_crashed_run_resumes_after_its_checkpoint():
    given = [f"word-{{n}}" for n in range(10)]
    crashed = run_job({job}, {{"words": given, "delay": 0, "parallelism": 1}}, crash_after=4)
    assert crashed.outcome == "crashed"

    resumed = crashed.resume()

    assert resumed.succeeded
    assert resumed.processed_ids == given[4:]  # nothing before the checkpoint ran again
    assert resumed.counts.succeeded == 10
"""

_README = """\
# {name}

runly jobs. Each is a {kind} in `src/{package}/jobs.py`, declared in `pyproject.toml`.

```sh
pytest                                   # the jobs' tests (runly.testing)
runly jobs .                             # the jobs and their config schemas
runly run-local . words                  # run one here, with a live view
runly pack .                             # a self-contained bundle in dist/
runly push dist/{name}-0.1.0.runly       # to the feed (runly profile set api_url ... first)
runly enqueue {name} words --config '{{"words": ["x"]}}' --wait
```
"""

_GITIGNORE = "dist/\n__pycache__/\n*.egg-info/\n.runly-checkpoint.json\n"


FORMS = ("class", "function")


def scaffold(directory: Path, name: str | None, form: str = "class") -> list[Path]:
    """A new job project in ``directory``: its sample job as a class (``Words(ItemJob)``) or as decorated
    functions (``@runly.item_job def words``)."""
    if form not in FORMS:
        raise CliError(f"--form must be one of {', '.join(FORMS)}, not {form!r}", EXIT_USAGE)
    directory = directory.resolve()
    name = name or directory.name
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", name):
        raise CliError(f"{name!r} is not a valid project name (letters, digits, '.', '_', '-')", EXIT_USAGE)
    package = re.sub(r"[^A-Za-z0-9]+", "_", name).lower().strip("_")
    if package[0].isdigit():
        package = f"jobs_{package}"
    if directory.exists() and any(directory.iterdir()):
        raise CliError(f"{directory} is not empty: runly init makes a new project in an empty or new directory")
    job, kind, jobs = ("Words", "Class", _JOBS) if form == "class" else ("words", "function", _FUNCTION_JOBS)
    files = {
        "pyproject.toml": _PYPROJECT.format(name=name, package=package, job=job, kind=kind),
        f"src/{package}/__init__.py": f'"""{name}: runly jobs."""\n',
        f"src/{package}/jobs.py": jobs.format(name=name),
        "tests/test_jobs.py": _TEST.format(package=package, job=job),
        "README.md": _README.format(
            name=name, package=package, kind="decorated function" if form == "function" else "class"
        ),
        ".gitignore": _GITIGNORE,
    }
    written = []
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


@handle_errors
def init(
    directory: Annotated[Path, typer.Argument(help="where to make the project (new or empty)")] = Path("."),
    name: Annotated[str | None, typer.Option(help="the package's name (default: the directory's name)")] = None,
    form: Annotated[
        str,
        typer.Option(
            help="the sample job as a class (Job/ItemJob subclass) or as decorated functions (@runly.item_job)"
        ),
    ] = "class",
) -> None:
    """Make a new job project: pyproject.toml with a job declared, a sample item job, its tests."""
    written = scaffold(directory, name, form)
    for path in written:
        console.print(f"  created {os.path.relpath(path)}", markup=False)
    where = os.path.relpath(directory.resolve())
    console.print(
        f"next: cd {where} && pytest && runly run-local . words",
        markup=False,
    )


# ---------------------------------------------------------------- jobs


def describe(target: Path) -> list[JobSpec]:
    from runly_cli.run_local import Project
    from runly_core.bundle import read_manifest

    if target.is_file():
        return list(read_manifest(target).jobs)
    if not target.exists():
        raise CliError(f"{target} does not exist: give a job project's directory or a .runly bundle")
    return Project.load(target).describe()


def _fields(spec: JobSpec) -> str:
    properties = spec.config_schema.get("properties", {})
    required = set(spec.config_schema.get("required", []))
    shown = []
    for name, schema in properties.items():
        kind = schema.get("type") or "|".join(
            str(option.get("type", "?")) for option in schema.get("anyOf", []) if option.get("type") != "null"
        )
        default = f" = {json.dumps(schema['default'])}" if "default" in schema and name not in required else ""
        shown.append(f"{name}{'*' if name in required else ''}: {kind or 'any'}{default}")
    return "\n".join(shown) or "(no config)"


@handle_errors
def jobs(
    target: Annotated[Path, typer.Argument(help="a job project's directory or a .runly bundle")] = Path("."),
    as_json: JsonOption = False,
) -> None:
    """List the jobs of a project or bundle, with their config schemas (* = required)."""
    specs = describe(target)
    if as_json:
        print_json(specs)
        return
    table = Table(box=None, header_style="bold", show_lines=True)
    table.add_column("job")
    table.add_column("class")
    table.add_column("config")
    for spec in specs:
        table.add_row(spec.name, spec.entry_point, _fields(spec))
    console.print(table)


# ---------------------------------------------------------------- run-local


@handle_errors
def run_local(
    project_dir: Annotated[Path, typer.Argument(help="the job project's directory", metavar="PROJECT")],
    job: Annotated[str, typer.Argument(help="the job's name (see `runly jobs`)")],
    config: Annotated[str | None, typer.Option(help="the config: a JSON object, or @file.json")] = None,
    checkpoint_file: Annotated[
        Path | None,
        typer.Option(help="keep checkpoints in this file; a run that finds one resumes from it (deleted on success)"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a job on this machine, in a process of its own as on a node, with a live view.

    Uses the project's source and this environment's packages. Ctrl-C cancels (the job gets
    SIGTERM: items in flight finish); a second Ctrl-C kills it.
    """
    from runly_cli.run_local import LocalRun, Project, local_spec, read_checkpoint, write_checkpoint

    raw_config = parse_config(config)
    project = Project.load(project_dir)
    checkpoint = read_checkpoint(checkpoint_file) if checkpoint_file else None
    spec = local_spec(project, job, raw_config, checkpoint)
    errors: deque[str] = deque(maxlen=RECENT_ERRORS)
    output_console = console if not as_json else _stderr_console()

    def on_output(line: str) -> None:
        if match := _FAILED_ITEM.search(line):
            errors.append(f"{match['id']}: {match['category']}: {match['error']}")
        output_console.print(line, markup=False, highlight=False, soft_wrap=True)

    def on_checkpoint(taken: Any) -> None:
        if checkpoint_file:
            write_checkpoint(checkpoint_file, taken)

    if checkpoint and checkpoint.watermark:
        output_console.print(f"resuming from {checkpoint_file}: {checkpoint.watermark:,} items done", markup=False)
    run = LocalRun(spec=spec, cwd=project.root, env=project.env(), on_output=on_output, on_checkpoint=on_checkpoint)
    # As a node: what the job leaves running when it ends is re-parented to this process (a subreaper) and ended.
    subreaper = process_tree.become_subreaper()
    present = process_tree.below_self()
    started = time.monotonic()
    run.start()
    view = LiveRunView(f"{project.name} / {job} (pid {run.pid})")
    note = "Ctrl-C cancels"
    interrupts: list[int] = []
    # Ctrl-C is counted, not raised: a KeyboardInterrupt at the wrong moment would leave the job running.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupts.append(signum))

    def render() -> Any:
        return view.render("running", run.latest_progress, errors=errors, note=note)

    live = Live(render(), console=console, refresh_per_second=4, transient=True) if not as_json else None
    if live is not None:
        live.start()
    handled = 0
    try:
        while run.poll() is None:
            time.sleep(0.25)
            if len(interrupts) > handled:
                handled = len(interrupts)
                if handled == 1:
                    run.cancel()
                    note = "cancelling: items in flight finish (Ctrl-C again kills the job)"
                else:
                    run.kill()
                    note = "killed"
            if live is not None:
                live.update(render())
    finally:
        signal.signal(signal.SIGINT, previous)
        if live is not None:
            live.stop()
    run.wait()
    left = process_tree.end_leftovers(present)
    if subreaper:
        process_tree.stop_being_subreaper()
    if left:
        _stderr_console().print(
            f"the job left {left} process(es) running after it ended: ended them, as a node would", markup=False
        )
    elapsed = time.monotonic() - started
    outcome = run.outcome
    if outcome == "succeeded" and checkpoint_file is not None:
        checkpoint_file.unlink(missing_ok=True)  # done: nothing to resume
    code = {"succeeded": EXIT_OK, "cancelled": EXIT_RUN_CANCELLED}.get(outcome, EXIT_RUN_FAILED)
    if as_json:
        print_json({
            "outcome": outcome,
            "exit_code": run.exit_code,
            "output": run.result.output if run.result else None,
            "error": run.error.model_dump() if run.error else None,
            "progress": run.latest_progress.model_dump() if run.latest_progress else None,
            "checkpoints": len(run.checkpoints),
            "seconds": round(elapsed, 3),
        })  # fmt: skip
        raise typer.Exit(code)
    console.print(view.render(outcome, run.latest_progress, errors=errors))
    if run.result is not None and run.result.output is not None:
        console.print("output:")
        console.print_json(data=run.result.output)
    if run.error is not None and outcome != "cancelled":
        console.print(f"error: {run.error.type}: {run.error.message}", style="red", markup=False)
    elif outcome == "crashed":
        console.print(f"the job process ended with exit code {run.exit_code} and no result", style="red")
    if checkpoint_file is not None and outcome != "succeeded" and run.checkpoints:
        console.print(f"checkpoint kept in {checkpoint_file}: run again to resume", markup=False)
    console.print(f"{outcome} in {elapsed:.1f} s", markup=False)
    raise typer.Exit(code)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


# ---------------------------------------------------------------- node start

_NODE_SETTINGS = {
    "environment": "RUNLY_ENVIRONMENT",
    "queue_url": "RUNLY_QUEUE_URL",
    "table": "RUNLY_TABLE_NAME",
    "bucket": "RUNLY_FEED_BUCKET",
    "node_id": "RUNLY_NODE_ID",
    "capacity": "RUNLY_CAPACITY",
    "work_dir": "RUNLY_WORK_DIR",
}


def node_command(settings: dict[str, Any], extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a node agent with these settings."""
    env = dict(os.environ)
    for name, value in settings.items():
        if value is not None:
            env[_NODE_SETTINGS[name]] = str(value)
    for pair in extra:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliError(f"--set takes NAME=VALUE (an agent setting: lease_seconds=60), not {pair!r}", EXIT_USAGE)
        env[f"RUNLY_{name.upper().removeprefix('RUNLY_')}"] = value
    return [sys.executable, "-m", "node_agent"], env


@handle_errors
def node_start(
    environment: Annotated[str | None, typer.Option(help="the environment to join (env RUNLY_ENVIRONMENT)")] = None,
    queue_url: Annotated[str | None, typer.Option(help="the environment's run queue URL (env RUNLY_QUEUE_URL)")] = None,
    table: Annotated[str | None, typer.Option(help="the DynamoDB table (env RUNLY_TABLE_NAME)")] = None,
    bucket: Annotated[str | None, typer.Option(help="the feed bucket (env RUNLY_FEED_BUCKET)")] = None,
    node_id: Annotated[str | None, typer.Option(help="this node's id (default: host name + random)")] = None,
    capacity: Annotated[int | None, typer.Option(min=1, help="runs at once (default: 2)")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="where runs and package environments live")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="any other agent setting, NAME=VALUE (e.g. lease_seconds=60)")
    ] = None,
) -> None:
    """Run a node agent here, in the foreground: it joins an environment and runs its queue's jobs.

    Settings not given as flags come from RUNLY_* environment variables (AWS credentials from the
    usual AWS ones). The first Ctrl-C drains (running jobs finish), the second stops at once.
    """
    settings = {
        "environment": environment, "queue_url": queue_url, "table": table, "bucket": bucket,
        "node_id": node_id, "capacity": capacity, "work_dir": work_dir,
    }  # fmt: skip
    command, env = node_command(settings, set_ or [])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)  # the agent takes this process: signals reach it directly
