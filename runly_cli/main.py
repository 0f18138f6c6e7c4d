"""The ``runly`` command line: write, test, pack and ship jobs; enqueue, watch and manage runs; run nodes.

Settings (API URL, key) come from flags, then RUNLY_API_URL / RUNLY_API_KEY, then the profile file
(``runly profile``). Every read command takes ``--json``. Errors are one line on stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from runly_cli.commands.authoring import init, jobs, node_start, run_local
from runly_cli.commands.keys import keys_app
from runly_cli.commands.runs import cancel, logs, nodes_app, print_run, requeue, runs_app, runs_show, watch_run
from runly_cli.commands.values import secrets_app, vars_app
from runly_cli.common import (
    EXIT_CODES_HELP,
    EXIT_USAGE,
    ApiOption,
    CliError,
    JsonOption,
    KeyOption,
    TagOption,
    client,
    console,
    default_environment,
    err,
    exit_code_for,
    handle_errors,
    parse_aware_time,
    parse_config,
    parse_duration,
    parse_tags,
    print_json,
)
from runly_core.contracts import EnqueueRunRequest

__all__ = ["ApiOption", "KeyOption", "app", "console", "err", "main", "print_run"]

app = typer.Typer(
    no_args_is_help=True,
    help=f"runly: out-of-process background jobs on AWS.\n\n{EXIT_CODES_HELP}",
    pretty_exceptions_enable=False,
)
local_app = typer.Typer(no_args_is_help=True, help="The embedded stack: the whole platform on this machine.")
dev_app = typer.Typer(no_args_is_help=True, help="The embedded stack: the whole platform on this machine.")
profile_app = typer.Typer(no_args_is_help=True, help="CLI settings: the API URL and key (a profile file).")
node_app = typer.Typer(no_args_is_help=True, help="Run a node agent on this machine.")
app.add_typer(local_app, name="local", hidden=True)
app.add_typer(keys_app, name="keys")
app.add_typer(dev_app, name="dev")
app.add_typer(runs_app, name="runs")
app.add_typer(nodes_app, name="nodes")
app.add_typer(node_app, name="node")
app.add_typer(profile_app, name="profile")
app.add_typer(vars_app, name="vars")
app.add_typer(secrets_app, name="secrets")

# Writing and testing jobs on this machine.
app.command("init")(init)
app.command("jobs")(jobs)
app.command("run-local")(run_local)
# Runs over the API.
app.command("logs")(logs)
app.command("cancel")(cancel)
app.command("requeue")(requeue)
node_app.command("start")(node_start)


@app.command()
@handle_errors
def pack(
    project: Annotated[Path, typer.Argument(help="the job project (a directory with pyproject.toml)")] = Path("."),
    out: Annotated[Path, typer.Option(help="where to write the bundle")] = Path("dist"),
) -> None:
    """Build a self-contained bundle: the project's wheel, every dependency wheel, a manifest."""
    from runly_cli.pack import pack_project

    with console.status(f"packing {project}"):
        bundle = pack_project(project, out)
    console.print(str(bundle), markup=False)


@app.command()
@handle_errors
def push(
    bundle: Annotated[Path, typer.Argument(help="a bundle made by `runly pack`")],
    api: ApiOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a bundle to the feed and register it (needs a write key)."""
    if not bundle.is_file():
        raise FileNotFoundError(2, "No such file", str(bundle))
    view = client(api, key).push(bundle)
    if as_json:
        print_json(view)
    else:
        console.print(f"pushed {view.name} {view.version} (jobs: {', '.join(j.name for j in view.jobs)})", markup=False)


@app.command()
@handle_errors
def enqueue(
    package: Annotated[str, typer.Argument(help="the package in the feed")],
    job: Annotated[str, typer.Argument(help="the job's name in the package")],
    api: ApiOption = None,
    key: KeyOption = None,
    config: Annotated[str | None, typer.Option(help="the config: a JSON object, or @file.json")] = None,
    environment: Annotated[str | None, typer.Option(help="(default: the profile's, else default)")] = None,
    version: Annotated[str | None, typer.Option(help="an exact version (default: the newest, or the pin)")] = None,
    timeout: Annotated[int | None, typer.Option(min=1, help="seconds the run may take (default: 3600)")] = None,
    max_attempts: Annotated[int | None, typer.Option(min=1, max=10, help="tries before it fails (default: 3)")] = None,
    tag: TagOption = None,
    delay: Annotated[
        str | None, typer.Option(help="start no earlier than this from now: 90s, 15m, 2h, 3d or seconds (up to 366d)")
    ] = None,
    not_before: Annotated[
        str | None, typer.Option(help="start no earlier than this time: ISO 8601 with a time zone (Z, +02:00)")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", "--watch", help="follow the run until it ends")] = False,
    as_json: JsonOption = False,
) -> None:
    """Enqueue a run of a job; prints its id (with --wait: follows it, exit code by outcome)."""
    if delay is not None and not_before is not None:
        raise CliError("give --delay or --not-before, not both", EXIT_USAGE)
    api_client = client(api, key)
    limits = {
        "timeout_seconds": timeout,
        "max_attempts": max_attempts,
        "delay_seconds": parse_duration(delay, option="--delay") if delay is not None else None,
    }
    request = EnqueueRunRequest(
        package=package,
        job=job,
        config=parse_config(config),
        environment=default_environment(environment),
        version=version,
        tags=parse_tags(tag),
        not_before=parse_aware_time(not_before, option="--not-before") if not_before is not None else None,
        **{k: v for k, v in limits.items() if v is not None},
    )
    run = api_client.enqueue(request)
    if not wait:
        if as_json:
            print_json(run)
        else:
            console.print(run.id, markup=False)
        return
    if not as_json:
        err.print(f"enqueued run {run.id}", markup=False)
    run = watch_run(api_client, run.id, as_json=as_json)
    if as_json:
        print_json(run)
    else:
        print_run(run)
    raise typer.Exit(exit_code_for(run.state))


# `runly get RUN` from the walking skeleton: now `runly runs show`.
app.command("get", hidden=True)(runs_show)


# ---------------------------------------------------------------- the embedded stack


def _demo(
    project: Annotated[Path, typer.Option(help="job project to pack and run")] = Path("examples/hello"),
    job: str = "hello",
    config: Annotated[str | None, typer.Option(help="JSON object, or @file.json")] = None,
) -> None:
    """Start the embedded stack, pack and push a job, run it, print the result, stop everything."""
    from runly_cli.embedded.demo import run_demo

    raise typer.Exit(run_demo(project, job, parse_config(config), console))


def _up(agents: Annotated[int, typer.Option(min=1, help="node agents to start")] = 1) -> None:
    """Start the embedded stack (moto, the API, node agents) and keep it running until Ctrl-C."""
    from runly_cli.embedded.demo import serve

    raise typer.Exit(serve(agents, console))


for group in (dev_app, local_app):
    group.command("up")(handle_errors(_up))
    group.command("demo")(handle_errors(_demo))


# ---------------------------------------------------------------- profile


@profile_app.command("set")
@handle_errors
def profile_set(
    name: Annotated[str, typer.Argument(help="api_url, api_key or environment")],
    value: Annotated[str, typer.Argument(help="the value ('' removes it)")],
) -> None:
    """Set one setting in the profile file."""
    from runly_cli.common import EXIT_USAGE, CliError
    from runly_cli.profile import SETTINGS, load_profile, save_profile

    if name not in SETTINGS:
        raise CliError(f"unknown setting {name!r}; settings: {', '.join(SETTINGS)}", EXIT_USAGE)
    profile = load_profile().model_copy(update={name: value or None})
    console.print(f"{name} saved in {save_profile(profile)}", markup=False)


@profile_app.command("show")
@handle_errors
def profile_show(as_json: JsonOption = False) -> None:
    """Show the settings in effect (the key masked) and where each comes from."""
    from runly_cli.profile import load_profile, profile_path

    profile = load_profile()
    env = {"api_url": "RUNLY_API_URL", "api_key": "RUNLY_API_KEY", "environment": "RUNLY_ENVIRONMENT"}
    shown = {}
    for name, variable in env.items():
        value, source = os.environ.get(variable), variable
        if not value:
            value, source = getattr(profile, name), str(profile_path())
        if name == "api_key" and value:
            value = value[:12] + "..."
        shown[name] = {"value": value, "source": source if value else None}
    if as_json:
        print_json({"profile": str(profile_path()), "settings": shown})
        return
    console.print(f"profile file: {profile_path()}", markup=False)
    for name, setting in shown.items():
        where = f"  (from {setting['source']})" if setting["source"] else ""
        console.print(f"  {name} = {setting['value'] or '-'}{where}", markup=False)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(app())


if __name__ == "__main__":
    main()
