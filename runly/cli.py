"""The ``runly`` command line: pack, push, enqueue, inspect, and the embedded stack."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from runly.contracts import EnqueueRunRequest, RunState, RunView

app = typer.Typer(no_args_is_help=True, help="runly: out-of-process background jobs on AWS.")
local_app = typer.Typer(no_args_is_help=True, help="The embedded stack: the whole platform on this machine.")
app.add_typer(local_app, name="local")
console = Console()
err = Console(stderr=True)

ApiOption = Annotated[str, typer.Option("--api", envvar="RUNLY_API_URL", help="base URL of the runly API")]
KeyOption = Annotated[str | None, typer.Option("--key", envvar="RUNLY_API_KEY", help="API key")]


def _client(api: str, key: str | None):  # type: ignore[no-untyped-def]
    from runly.client import RunlyClient

    return RunlyClient(api, api_key=key)


def _parse_config(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"config is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter("config must be a JSON object")
    return value


def print_run(run: RunView) -> None:
    colour = {RunState.SUCCEEDED: "green", RunState.FAILED: "red", RunState.TIMED_OUT: "red"}.get(run.state, "yellow")
    console.print(
        f"run [bold]{run.id}[/bold]: [{colour}]{run.state}[/{colour}]  ({run.package} {run.version} / {run.job})"
    )
    for attempt in run.attempts:
        ended = attempt.ended_at.isoformat() if attempt.ended_at else "-"
        reason = f" reason={attempt.reason}" if attempt.reason else ""
        console.print(
            f"  attempt {attempt.number} on {attempt.node_id}: {attempt.started_at.isoformat()} -> {ended}{reason}"
        )
    if run.output is not None:
        console.print("output:")
        console.print_json(json.dumps(run.output))
    if run.error is not None:
        console.print(f"[red]error ({run.error.reason}): {run.error.message}[/red]")


@app.command()
def pack(
    project: Annotated[Path, typer.Argument(help="the job project (a directory with pyproject.toml)")],
    out: Annotated[Path, typer.Option(help="where to write the bundle")] = Path("dist"),
) -> None:
    """Build a self-contained bundle: the project's wheel, every dependency wheel, a manifest."""
    from runly.bundle import PackageError
    from runly.pack import pack_project

    try:
        bundle = pack_project(project, out)
    except PackageError as exc:
        err.print(f"[red]pack failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(str(bundle))


@app.command()
def push(bundle: Path, api: ApiOption, key: KeyOption = None) -> None:
    """Upload a bundle to the feed and register it."""
    view = _client(api, key).push(bundle)
    console.print(f"pushed {view.name} {view.version} (jobs: {', '.join(j.name for j in view.jobs)})")


@app.command()
def enqueue(
    package: str,
    job: str,
    api: ApiOption,
    key: KeyOption = None,
    config: Annotated[str | None, typer.Option(help="JSON object, or @file.json")] = None,
    environment: str = "default",
    version: str | None = None,
    wait: Annotated[bool, typer.Option(help="wait for the run to end and print it")] = False,
) -> None:
    """Enqueue a run of a job."""
    client = _client(api, key)
    run = client.enqueue(
        EnqueueRunRequest(
            package=package, job=job, config=_parse_config(config), environment=environment, version=version
        )
    )
    if wait:
        run = client.wait(run.id)
        print_run(run)
        raise typer.Exit(0 if run.state is RunState.SUCCEEDED else 1)
    console.print(run.id)


@app.command()
def get(run_id: str, api: ApiOption, key: KeyOption = None) -> None:
    """Show one run."""
    print_run(_client(api, key).get_run(run_id))


@local_app.command("demo")
def local_demo(
    project: Annotated[Path, typer.Option(help="job project to pack and run")] = Path("examples/hello"),
    job: str = "hello",
    config: Annotated[str | None, typer.Option(help="JSON object, or @file.json")] = None,
) -> None:
    """Start the embedded stack, pack and push a job, run it, print the result, stop everything."""
    from runly.local.demo import run_demo

    raise typer.Exit(run_demo(project, job, _parse_config(config), console))


@local_app.command("up")
def local_up(agents: int = 1) -> None:
    """Start the embedded stack and keep it running until Ctrl-C."""
    from runly.local.demo import serve

    raise typer.Exit(serve(agents, console))


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(app())


if __name__ == "__main__":
    main()
