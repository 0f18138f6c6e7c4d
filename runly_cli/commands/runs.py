"""``runly runs ls|show|watch``, ``logs``, ``cancel``, ``requeue``, ``nodes ls``: runs and nodes over the API."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from runly_cli.common import (
    EXIT_INTERRUPTED,
    ApiOption,
    JsonOption,
    KeyOption,
    TagOption,
    client,
    console,
    exit_code_for,
    handle_errors,
    parse_tags,
    print_json,
)
from runly_cli.view import RunView as LiveRunView
from runly_cli.view import stacked_bar
from runly_core.contracts import RunState, RunView

runs_app = typer.Typer(no_args_is_help=True, help="Find, inspect and follow runs.", pretty_exceptions_enable=False)
nodes_app = typer.Typer(no_args_is_help=True, help="Node agents that run jobs.", pretty_exceptions_enable=False)

RunIdArgument = Annotated[str, typer.Argument(help="the run's id")]


def print_run(run: RunView) -> None:
    colour = {RunState.SUCCEEDED: "green", RunState.FAILED: "red", RunState.TIMED_OUT: "red"}.get(run.state, "yellow")
    console.print(
        f"run [bold]{run.id}[/bold]: [{colour}]{run.state}[/{colour}]  ({run.package} {run.version} / {run.job})"
    )
    if run.queued_reason and run.state is RunState.QUEUED:
        console.print(f"  waiting: {run.queued_reason}", markup=False)
    if run.requeued_from:
        console.print(f"  requeue of {run.requeued_from}")
    if run.tags:
        console.print("  tags: " + ", ".join(f"{k}={v}" for k, v in sorted(run.tags.items())), markup=False)
    for attempt in run.attempts:
        ended = attempt.ended_at.isoformat() if attempt.ended_at else "-"
        reason = f" reason={attempt.reason}" if attempt.reason else ""
        console.print(
            f"  attempt {attempt.number} on {attempt.node_id}: {attempt.started_at.isoformat()} -> {ended}{reason}"
        )
    if run.progress is not None:
        line = stacked_bar(run.progress)
        line.append(f"  {run.progress.succeeded:,} succeeded, {run.progress.failed:,} failed")
        if run.progress.total is not None:
            line.append(f" of {run.progress.total:,}")
        console.print(line)
        for category, count in sorted(run.progress.failed_by_category.items(), key=lambda kv: -kv[1]):
            console.print(f"    {category}: {count:,}", markup=False)
    if run.checkpoint is not None and run.checkpoint.watermark is not None:
        console.print(f"  checkpoint: {run.checkpoint.watermark:,} items done (attempt {run.checkpoint.attempt})")
    if run.output is not None:
        console.print("output:")
        console.print_json(json.dumps(run.output))
    if run.error is not None:
        console.print(f"error ({run.error.reason}): {run.error.message}", style="red", markup=False)


def watch_run(api_client: Any, run_id: str, *, as_json: bool = False, interval: float = 1.0) -> RunView:
    """Follow a run until it is terminal, with a live view (or silently for ``--json``)."""
    run: RunView = api_client.get_run(run_id)
    if as_json:
        while not run.state.terminal:
            time.sleep(interval)
            run = api_client.get_run(run_id)
        return run
    view = LiveRunView(f"run {run.id} ({run.package} {run.version} / {run.job})")

    def render(current: RunView) -> Any:
        note = current.queued_reason if current.state is RunState.QUEUED else None
        attempt = f" attempt {len(current.attempts)}" if len(current.attempts) > 1 else ""
        return view.render(f"{current.state}{attempt}", current.progress, note=note)

    with Live(render(run), console=console, refresh_per_second=4, transient=True) as live:
        while not run.state.terminal:
            time.sleep(interval)
            run = api_client.get_run(run_id)
            live.update(render(run))
    return run


@runs_app.command("ls")
@handle_errors
def runs_ls(
    api: ApiOption = None,
    key: KeyOption = None,
    state: Annotated[RunState | None, typer.Option(help="only runs in this state")] = None,
    package: Annotated[str | None, typer.Option(help="only runs of this package")] = None,
    job: Annotated[str | None, typer.Option(help="only runs of this job")] = None,
    environment: Annotated[str | None, typer.Option(help="only runs in this environment")] = None,
    since: Annotated[str | None, typer.Option(help="created at or after (ISO 8601)")] = None,
    until: Annotated[str | None, typer.Option(help="created before (ISO 8601)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many runs")] = 20,
    cursor: Annotated[str | None, typer.Option(help="the next page, from a previous --json output")] = None,
    tag: TagOption = None,
    as_json: JsonOption = False,
) -> None:
    """List runs, newest first."""
    page = client(api, key).list_runs(
        state=state.value if state else None, package=package, job=job, environment=environment,
        created_after=since, created_before=until, limit=limit, cursor=cursor, tags=parse_tags(tag),
    )  # fmt: skip
    if as_json:
        print_json(page)
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "state", "package", "job", "environment", "created", "progress"):
        table.add_column(column)
    for run in page.items:
        progress = run.progress
        done = f"{progress.succeeded + progress.failed:,}" if progress else ""
        if progress and progress.total is not None:
            done += f"/{progress.total:,}"
        if progress and progress.failed:
            done += f" ({progress.failed:,} failed)"
        table.add_row(
            run.id, str(run.state), f"{run.package} {run.version}", run.job, run.environment,
            run.created_at.strftime("%Y-%m-%d %H:%M:%S"), done,
        )  # fmt: skip
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}", style="dim", markup=False)


@runs_app.command("show")
@handle_errors
def runs_show(run_id: RunIdArgument, api: ApiOption = None, key: KeyOption = None, as_json: JsonOption = False) -> None:
    """Show one run: state, attempts, progress, checkpoint, output or error."""
    run = client(api, key).get_run(run_id)
    if as_json:
        print_json(run)
    else:
        print_run(run)


@runs_app.command("watch")
@handle_errors
def runs_watch(
    run_id: RunIdArgument,
    api: ApiOption = None,
    key: KeyOption = None,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between polls")] = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Follow a run with a live progress bar until it ends; the exit code tells how it ended."""
    try:
        run = watch_run(client(api, key), run_id, as_json=as_json, interval=interval)
    except KeyboardInterrupt:
        typer.echo(f"stopped watching; run {run_id} goes on", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        print_json(run)
    else:
        print_run(run)
    raise typer.Exit(exit_code_for(run.state))


@handle_errors
def logs(
    run_id: RunIdArgument,
    api: ApiOption = None,
    key: KeyOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the run ends")] = False,
    attempt: Annotated[int | None, typer.Option(min=1, help="this attempt's output (default: the latest)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Print a run's output (what its job printed and logged)."""
    api_client = client(api, key)
    page = api_client.get_logs(run_id, attempt=attempt)
    text, shown_attempt = [page.text], page.attempt
    if not as_json:
        sys.stdout.write(page.text)
        sys.stdout.flush()
    try:
        while page.next_cursor and (follow or page.text):
            if not page.text:
                time.sleep(1.0)  # caught up: wait for more
            page = api_client.get_logs(run_id, attempt=attempt, cursor=page.next_cursor)
            if page.attempt != shown_attempt and not as_json:
                sys.stdout.write(f"\n--- attempt {page.attempt} ---\n")
                shown_attempt = page.attempt
            text.append(page.text)
            if not as_json:
                sys.stdout.write(page.text)
                sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        print_json({"run_id": run_id, "attempt": page.attempt, "text": "".join(text), "complete": page.complete})


@handle_errors
def cancel(run_id: RunIdArgument, api: ApiOption = None, key: KeyOption = None, as_json: JsonOption = False) -> None:
    """Cancel a run: a queued run ends at once; a running one gets SIGTERM, then SIGKILL after a grace period."""
    run = client(api, key).cancel_run(run_id)
    if as_json:
        print_json(run)
    else:
        console.print(f"run {run.id}: {run.state}", markup=False)


@handle_errors
def requeue(
    run_id: RunIdArgument,
    api: ApiOption = None,
    key: KeyOption = None,
    resume: Annotated[bool, typer.Option(help="start from the run's last checkpoint instead of from scratch")] = False,
    watch: Annotated[bool, typer.Option(help="follow the new run until it ends")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run a finished run again, as a new run (with --resume: from its last checkpoint)."""
    api_client = client(api, key)
    run = api_client.requeue_run(run_id, resume=resume)
    if watch:
        run = watch_run(api_client, run.id, as_json=as_json)
    if as_json:
        print_json(run)
    elif watch:
        print_run(run)
    else:
        console.print(run.id, markup=False)
    if watch:
        raise typer.Exit(exit_code_for(run.state))


@nodes_app.command("ls")
@handle_errors
def nodes_ls(
    api: ApiOption = None,
    key: KeyOption = None,
    environment: Annotated[str | None, typer.Option(help="only the nodes of this environment")] = None,
    as_json: JsonOption = False,
) -> None:
    """List node agents: online or offline, what they run, their capacity."""
    nodes = client(api, key).list_nodes(environment or None)
    if as_json:
        print_json(nodes)
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "environment", "status", "state", "running", "host", "version", "last seen"):
        table.add_column(column)
    for node in nodes.items:
        state = node.state + (" (drain requested)" if node.drain_requested else "")
        table.add_row(
            node.id, node.environment, str(node.status), state,
            f"{len(node.running)}/{node.capacity}", node.host, node.agent_version,
            node.last_seen.strftime("%Y-%m-%d %H:%M:%S"),
        )  # fmt: skip
    console.print(table)
    if not nodes.items:
        console.print(f"no nodes{' in ' + environment if environment else ''}: start one with `runly node start`")
