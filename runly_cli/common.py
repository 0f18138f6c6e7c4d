"""What every ``runly`` command shares: settings, errors as one line, exit codes, JSON output."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import click
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from runly_core.contracts import RunState

if TYPE_CHECKING:
    from runly_client.client import RunlyClient

console = Console()
err = Console(stderr=True)

# Exit codes of every command (documented in `runly --help`).
EXIT_OK = 0
EXIT_RUN_FAILED = 1  # the run (or the local job) failed
EXIT_USAGE = 2  # a bad option or argument (click's own code)
EXIT_RUN_CANCELLED = 3
EXIT_ERROR = 4  # the command could not do its work: API error, API unreachable, bad project, missing file
EXIT_RUN_TIMED_OUT = 5
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 done (run Succeeded), 1 run Failed, 2 usage error, 3 run Cancelled, "
    "4 error (API, network, files), 5 run TimedOut, 130 interrupted."
)

DEBUG_ENV = "RUNLY_DEBUG"

ApiOption = Annotated[
    str | None,
    typer.Option("--api", envvar="RUNLY_API_URL", help="base URL of the runly API (default: from the profile)"),
]
KeyOption = Annotated[
    str | None, typer.Option("--key", envvar="RUNLY_API_KEY", help="API key (default: from the profile)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of a table")]


class CliError(Exception):
    """A failure to report as one line, with this exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(state: RunState) -> int:
    return {
        RunState.SUCCEEDED: EXIT_OK,
        RunState.FAILED: EXIT_RUN_FAILED,
        RunState.CANCELLED: EXIT_RUN_CANCELLED,
        RunState.TIMED_OUT: EXIT_RUN_TIMED_OUT,
    }.get(state, EXIT_OK)


def one_line(message: str) -> str:
    """A long, multi-line message (build output, say) as one line: its first and its last line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    typer.echo(f"runly: error: {one_line(message)}", err=True)
    return typer.Exit(code)


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(function: F) -> F:
    """Every failure becomes one line on stderr and an exit code; never a traceback
    (unless RUNLY_DEBUG=1)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:  # noqa: BLE001 - the one place where failures become messages
            if os.environ.get(DEBUG_ENV):
                traceback.print_exc()
            code = exc.code if isinstance(exc, CliError) else EXIT_ERROR
            raise fail(describe_error(exc), code) from None

    return wrapper  # type: ignore[return-value]


def describe_error(exc: BaseException) -> str:
    from runly_client.client import ApiConnectionError, ApiError

    if isinstance(exc, CliError | ApiError):
        return str(exc)
    if isinstance(exc, ApiConnectionError):
        return f"cannot reach the API: {exc}"
    if isinstance(exc, ValidationError):
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "value"
        return f"{where}: {problem['msg']}"
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    if isinstance(exc, TimeoutError):
        return str(exc) or "timed out"
    if type(exc).__name__ in {"PackageError", "ProjectError", "ProfileError"}:
        return str(exc)
    return f"{type(exc).__name__}: {exc} (RUNLY_DEBUG=1 shows the traceback)"


def print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        text = value.model_dump_json(indent=2)
    elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        text = json.dumps([v.model_dump(mode="json") for v in value], indent=2)
    else:
        text = json.dumps(value, indent=2, default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def client(api: str | None, key: str | None) -> RunlyClient:
    """The API's sync client (runly_client.client) for the URL named by the flag, the environment, or the profile, in
    that order. Not closed: a command makes a few requests over its pooled connections, then the process ends."""
    from runly_cli.profile import load_profile, profile_path
    from runly_client.client import RunlyClient

    profile = load_profile()
    url = api or profile.api_url
    if not url:
        raise CliError(
            f"no API URL: pass --api URL, set RUNLY_API_URL, or `runly profile set api_url URL` ({profile_path()})"
        )
    return RunlyClient(url, api_key=key or profile.api_key)


def default_environment(flag: str | None) -> str:
    from runly_cli.profile import load_profile

    return flag or os.environ.get("RUNLY_ENVIRONMENT") or load_profile().environment or "default"


_DURATION = re.compile(r"(\d{1,9})([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str, *, option: str) -> int:
    """``--delay``: seconds, or a number with a unit (``90s``, ``15m``, ``2h``, ``3d``)."""
    match = _DURATION.fullmatch(raw.strip().lower())
    if match is None:
        raise CliError(
            f"{option}: expected seconds or a number with s, m, h or d (e.g. 90s, 2h); got {raw!r}", EXIT_USAGE
        )
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_aware_time(raw: str, *, option: str) -> datetime:
    """``--not-before``: ISO 8601 with a time zone (a time without one would mean another moment on each machine)."""
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError as exc:
        raise CliError(f"{option}: not an ISO 8601 time: {raw!r}", EXIT_USAGE) from exc
    if moment.tzinfo is None:
        raise CliError(f"{option}: give a time zone (e.g. {raw.strip()}Z or +02:00)", EXIT_USAGE)
    return moment


def parse_config(raw: str | None) -> dict[str, Any]:
    """``--config``: a JSON object, or ``@file.json``."""
    if not raw:
        return {}
    if raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise CliError(f"--config: cannot read {raw[1:]}: {exc.strerror}", EXIT_USAGE) from exc
    else:
        text = raw
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--config is not JSON: {exc}", EXIT_USAGE) from exc
    if not isinstance(value, dict):
        raise CliError("--config must be a JSON object", EXIT_USAGE)
    return value


TagOption = Annotated[
    list[str] | None,
    typer.Option("--tag", help="key=value; repeat for more (enqueue: the run's tags; ls: runs with all of them)"),
]


def parse_tags(pairs: list[str] | None) -> dict[str, str]:
    """``--tag key=value`` options as a run's tags (the API checks keys and values and names what is wrong)."""
    tags: dict[str, str] = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise CliError(f"--tag {pair!r}: expected key=value", EXIT_USAGE)
        if key in tags:
            raise CliError(f"--tag {key!r} given twice", EXIT_USAGE)
        tags[key] = value
    return tags
