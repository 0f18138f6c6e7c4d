"""``runly vars`` and ``runly secrets``: an environment's variables and secrets, over the API.

A job names those it needs (``variables = ("REGION",)``, ``secrets = ("API_TOKEN",)`` on its class) and gets them
as environment variables of its process. ``runly secrets set`` never takes a value as an argument (it would stay in
the shell's history and in ``ps``): it reads it from a file, from stdin, or from a hidden prompt.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from runly_cli.common import (
    EXIT_USAGE,
    ApiOption,
    CliError,
    JsonOption,
    KeyOption,
    client,
    console,
    default_environment,
    handle_errors,
    print_json,
)

vars_app = typer.Typer(
    no_args_is_help=True, help="An environment's variables: plain values jobs get.", pretty_exceptions_enable=False
)
secrets_app = typer.Typer(
    no_args_is_help=True,
    help="An environment's secrets: write-only values jobs get (never shown again, redacted from run logs).",
    pretty_exceptions_enable=False,
)

NameArgument = Annotated[str, typer.Argument(help="the name (the job's environment variable)")]
EnvironmentOption = Annotated[
    str | None,
    typer.Option("--env", "-e", help="the environment (default: RUNLY_ENVIRONMENT, the profile's, or 'default')"),
]


@vars_app.command("set")
@handle_errors
def vars_set(
    name: NameArgument,
    value: Annotated[
        str, typer.Argument(help="the value (a plain value: anyone who may read the environment sees it)")
    ],
    environment: EnvironmentOption = None,
    api: ApiOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set a variable (create or replace); needs an admin key."""
    variable = client(api, key).set_variable(default_environment(environment), name, value)
    if as_json:
        print_json(variable)
        return
    console.print(f"variable {variable.name} set in {variable.environment} (version {variable.version})", markup=False)


@vars_app.command("get")
@handle_errors
def vars_get(
    name: NameArgument,
    environment: EnvironmentOption = None,
    api: ApiOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a variable's value."""
    variable = client(api, key).get_variable(default_environment(environment), name)
    if as_json:
        print_json(variable)
        return
    sys.stdout.write(variable.value + "\n")


@vars_app.command("list")
@handle_errors
def vars_list(
    environment: EnvironmentOption = None, api: ApiOption = None, key: KeyOption = None, as_json: JsonOption = False
) -> None:
    """List the environment's variables with their values."""
    items = client(api, key).list_variables(default_environment(environment))
    if as_json:
        print_json(items)
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "value", "version", "updated"):
        table.add_column(column)
    for item in items:
        table.add_row(item.name, item.value, str(item.version), item.updated_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


@vars_app.command("delete")
@handle_errors
def vars_delete(
    name: NameArgument, environment: EnvironmentOption = None, api: ApiOption = None, key: KeyOption = None
) -> None:
    """Delete a variable; needs an admin key."""
    env = default_environment(environment)
    client(api, key).delete_variable(env, name)
    console.print(f"variable {name} deleted from {env}", markup=False)


def read_secret_value(file: Path | None) -> str:
    """From ``file``, else piped stdin, else a hidden prompt; one trailing newline dropped (``echo`` adds one)."""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"--file: cannot read {file}: {exc.strerror}", EXIT_USAGE) from exc
        except UnicodeDecodeError as exc:
            raise CliError(f"--file: {file} is not UTF-8 text", EXIT_USAGE) from exc
    elif not sys.stdin.isatty():
        text = sys.stdin.read()
    else:
        text = typer.prompt("value", hide_input=True, confirmation_prompt=True)
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise CliError("the value is empty", EXIT_USAGE)
    return text


@secrets_app.command("set")
@handle_errors
def secrets_set(
    name: NameArgument,
    file: Annotated[
        Path | None, typer.Option("--file", help="read the value from this file (default: stdin, or a hidden prompt)")
    ] = None,
    environment: EnvironmentOption = None,
    api: ApiOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set a secret (create or replace); needs an admin key. Its value is never shown again."""
    secret = client(api, key).set_secret(default_environment(environment), name, read_secret_value(file))
    if as_json:
        print_json(secret)
        return
    console.print(f"secret {secret.name} set in {secret.environment} (version {secret.version})", markup=False)


@secrets_app.command("list")
@handle_errors
def secrets_list(
    environment: EnvironmentOption = None, api: ApiOption = None, key: KeyOption = None, as_json: JsonOption = False
) -> None:
    """List the environment's secrets: names, versions and update times (never a value)."""
    items = client(api, key).list_secrets(default_environment(environment))
    if as_json:
        print_json(items)
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "version", "updated"):
        table.add_column(column)
    for item in items:
        table.add_row(item.name, str(item.version), item.updated_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


@secrets_app.command("delete")
@handle_errors
def secrets_delete(
    name: NameArgument, environment: EnvironmentOption = None, api: ApiOption = None, key: KeyOption = None
) -> None:
    """Delete a secret; needs an admin key. Runs of jobs that declare it then fail before they start."""
    env = default_environment(environment)
    client(api, key).delete_secret(env, name)
    console.print(f"secret {name} deleted from {env}", markup=False)
