"""Each distribution brings what its users need and nothing else (issue 15): a job bundle gets the SDK alone, a node
gets the agent without the CLI or the embedded stack, an application gets the client, Lambda gets the functions."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]

# distribution directory -> the import packages it ships
DISTRIBUTIONS = {
    "runly": ["runly"],
    "runly_core": ["runly_core"],
    "runly_client": ["runly_client"],
    "node_agent": ["node_agent"],
    ".": ["runly_cli", "functions"],
}
# what a requirement's distribution is imported as
IMPORT_NAMES = {
    "runly": {"runly"},
    "runly-core": {"runly_core"},
    "runly-client": {"runly_client"},
    "runly-agent": {"node_agent"},
    "pydantic": {"pydantic", "pydantic_core"},
    "packaging": {"packaging"},
    "boto3": {"boto3", "botocore"},
    "httpx": {"httpx"},
    "pydantic-settings": {"pydantic_settings"},
    "typer": {"typer", "click"},
    "rich": {"rich"},
    "moto": {"moto", "werkzeug"},
    "aws-lambda-powertools": {"aws_lambda_powertools"},
    "aws-xray-sdk": {"aws_xray_sdk"},
    "jsonschema-rs": {"jsonschema_rs"},
    "cronsim": {"cronsim"},
    "tzdata": {"tzdata"},
    "opentelemetry-api": {"opentelemetry"},
    "opentelemetry-sdk": {"opentelemetry"},
    "opentelemetry-exporter-otlp-proto-http": {"opentelemetry"},
}


def _project(directory: str) -> dict:
    return tomllib.loads((REPO / directory / "pyproject.toml").read_text())["project"]


def _requirements(directory: str) -> set[str]:
    return {Requirement(text).name for text in _project(directory)["dependencies"]}


def _extra_requirements(directory: str) -> set[str]:
    """What the distribution's extras add (e.g. ``runly[otel]``): imported only where installed."""
    extras = _project(directory).get("optional-dependencies", {})
    return {Requirement(text).name for texts in extras.values() for text in texts} - _requirements(directory)


def _imports(tree: ast.AST, *, module_level_only: bool) -> Iterator[ast.AST]:
    """The import statements of a module: all of them, or those that run when it is imported (not in a function)."""
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if module_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        pending.extend(ast.iter_child_nodes(node))


def _imported_top_levels(package: str, *, module_level_only: bool = False) -> dict[str, set[str]]:
    """Every top-level module imported anywhere in the package (lazy imports included, unless
    ``module_level_only``) -> the files importing it."""
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        for node in _imports(ast.parse(path.read_text()), module_level_only=module_level_only):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def test_the_job_sdk_depends_on_pydantic_alone() -> None:
    assert _requirements("runly") == {"pydantic"}
    assert "scripts" not in _project("runly")  # no console script a bundle could not run


def test_the_agent_brings_neither_the_cli_nor_the_embedded_stack() -> None:
    assert _requirements("node_agent") == {"runly", "runly-core", "boto3", "pydantic", "pydantic-settings"}


@pytest.mark.parametrize("directory", list(DISTRIBUTIONS))
def test_each_distribution_imports_only_its_own_packages_its_requirements_and_the_standard_library(
    directory: str,
) -> None:
    allowed = set(sys.stdlib_module_names) | set(DISTRIBUTIONS[directory])
    for requirement in _requirements(directory):
        allowed |= IMPORT_NAMES[requirement]
    optional = set().union(*(IMPORT_NAMES[requirement] for requirement in _extra_requirements(directory))) - allowed
    for package in DISTRIBUTIONS[directory]:
        imported = _imported_top_levels(package)
        stray = {name: files for name, files in imported.items() if name not in allowed | optional}
        assert stray == {}, f"{package} imports what its distribution ({directory}) does not require"
        # An extra's modules are imported inside functions only: importing the distribution never needs them.
        eager = {
            name: files
            for name, files in _imported_top_levels(package, module_level_only=True).items()
            if name in optional
        }
        assert eager == {}, f"{package} imports an optional dependency when it is imported"


def test_an_import_inside_a_function_is_not_taken_for_a_module_level_one() -> None:
    tree = ast.parse("import json\ndef f():\n    import opentelemetry\nclass C:\n    import csv\n")
    eager = {alias.name for node in _imports(tree, module_level_only=True) for alias in node.names}  # type: ignore[attr-defined]
    every = {alias.name for node in _imports(tree, module_level_only=False) for alias in node.names}  # type: ignore[attr-defined]
    assert (eager, every) == ({"json", "csv"}, {"json", "csv", "opentelemetry"})


def _modules_after(code: str) -> set[str]:
    """The top-level modules `code` imports in a fresh interpreter, beyond what the interpreter starts with."""
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; before = set(sys.modules); {code}; print(' '.join(sorted(set(sys.modules) - before)))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return {name.split(".")[0] for name in result.stdout.split()}


def test_a_job_process_imports_the_sdk_and_pydantic_only() -> None:
    loaded = _modules_after(
        "import runly, runly.runner, runly.fork_server, runly.testing, runly.items, runly.function_jobs; "
        "runly.job, runly.item_job, runly.Job"
    )
    first_and_third_party = {name for name in loaded - set(sys.stdlib_module_names) if not name.startswith("_")}
    assert first_and_third_party <= {
        "runly",
        "pydantic",
        "pydantic_core",
        "typing_extensions",
        "annotated_types",
        "typing_inspection",
    }, first_and_third_party


def test_the_lambda_handlers_import_neither_the_cli_the_agent_nor_the_client() -> None:
    loaded = _modules_after(
        "import functions.api.app, functions.authorizer.app, functions.maintenance.reaper, functions.maintenance.dlq, "
        "functions.nodes.credentials, functions.schedules.fire, functions.events.publisher"
    )
    assert not loaded & {"runly_cli", "node_agent", "runly_client", "typer", "rich", "httpx", "moto"}
