from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from infrastructure import lambda_asset
from infrastructure.lambda_asset import PACKAGES, REPO_ROOT, REQUIREMENTS, asset_hash
from runly_core import resources

PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", re.MULTILINE)


def _pins(path: Path) -> dict[str, str]:
    return {name.lower(): version for name, version in PIN.findall(path.read_text())}


def test_lambda_dependencies_are_pinned_as_in_requirements_txt() -> None:
    lambda_pins = _pins(REPO_ROOT / REQUIREMENTS)
    project_pins = _pins(REPO_ROOT / "requirements.txt")
    assert {"aws-lambda-powertools", "pydantic", "packaging"} <= set(lambda_pins)
    assert {name: project_pins.get(name) for name in lambda_pins} == lambda_pins


def test_asset_holds_the_handler_and_the_packages_but_no_tests_or_caches(
    template_json: dict[str, Any], outdir: Path
) -> None:
    functions = [r for r in template_json["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    # One asset for every function, each with its own handler in it.
    [s3_key] = {function["Properties"]["Code"]["S3Key"] for function in functions}
    asset_dir = outdir / f"asset.{s3_key.removesuffix('.zip')}"
    files = {path.relative_to(asset_dir).as_posix() for path in asset_dir.rglob("*")}

    for handler in (resources.API_FUNCTION_HANDLER, resources.AUTHORIZER_FUNCTION_HANDLER):
        handler_module, _, _ = handler.rpartition(".")
        assert handler_module.replace(".", "/") + ".py" in files
    assert {package for package in PACKAGES} <= {file.split("/")[0] for file in files}
    assert "runly_core/resources.py" in files
    # The dashboard the API function serves (functions/api/routers/dashboard.py) ships in the same asset.
    assert {"functions/dashboard/index.html", "functions/dashboard/app.js", "functions/dashboard/app.css"} <= files
    assert not [file for file in files if file.split("/")[0] in {"tests", ".venv", "node_agent", "infrastructure"}]
    # Every module ships compiled for the runtime (its /var/task is read-only: nothing is compiled there), as an
    # unchecked-hash pyc of exactly the asset's source (never a stale one from the checkout), naming /var/task.
    import importlib.util
    import marshal
    import sys

    sources = sorted(file for file in files if file.endswith(".py"))
    assert sources
    if f"{sys.version_info.major}.{sys.version_info.minor}" != lambda_asset.PYTHON_VERSION:
        assert not [file for file in files if file.endswith(".pyc")]  # another Python's pycs would be dead weight
        return
    for source in sources:
        pyc = importlib.util.cache_from_source(source)
        assert pyc in files, f"{source} ships no bytecode"
        data = (asset_dir / pyc).read_bytes()
        flags = int.from_bytes(data[4:8], "little")
        assert data[:4] == importlib.util.MAGIC_NUMBER and flags == 0b01, f"{pyc}: not an unchecked-hash pyc"
        assert data[8:16] == importlib.util.source_hash((asset_dir / source).read_bytes()), f"{pyc} is stale"
        assert marshal.loads(data[16:]).co_filename == f"{lambda_asset.TASK_ROOT}/{source}"
    assert {file for file in files if file.endswith(".pyc")} == {importlib.util.cache_from_source(f) for f in sources}


def _copy_of_repo(tmp_path: Path) -> Path:
    source = tmp_path / "repo"
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / REQUIREMENTS, source / REQUIREMENTS)
    (source / "tests").mkdir()
    (source / "tests" / "test_x.py").write_text("x = 1\n")
    return source


def test_asset_hash_follows_the_packaged_sources_pins_and_bundling_mode_only(tmp_path: Path) -> None:
    source = _copy_of_repo(tmp_path)
    original = asset_hash(source_dir=source, install_dependencies=True)

    # When only files outside the packaged sources change, then the asset (and the function) stays the same.
    (source / "tests" / "test_x.py").write_text("x = 2\n")
    (source / "README.md").write_text("docs\n")
    (source / "runly" / "__pycache__").mkdir(exist_ok=True)
    (source / "runly" / "__pycache__" / "stale.pyc").write_bytes(b"\0")
    (source / "runly" / "items.py").write_text("# the SDK's item machinery: no handler imports it\n")
    assert asset_hash(source_dir=source, install_dependencies=True) == original

    # A source-only bundle never shares the hash (and the cdk.out cache) of a full one.
    assert asset_hash(source_dir=source, install_dependencies=False) != original

    (source / REQUIREMENTS).write_text("pydantic==0\n")
    assert asset_hash(source_dir=source, install_dependencies=True) != original

    # A module no handler imports is not in the asset: adding one changes nothing.
    before_edit = asset_hash(source_dir=source, install_dependencies=True)
    (source / "functions" / "new_module.py").write_text("y = 1\n")
    assert asset_hash(source_dir=source, install_dependencies=True) == before_edit

    # A module a handler imports (here through the platform core) is: editing it makes a new asset.
    contracts = source / "runly_core" / "contracts.py"
    contracts.write_text(contracts.read_text() + "\n# edited\n")
    assert asset_hash(source_dir=source, install_dependencies=True) != before_edit


def test_the_asset_holds_the_handlers_import_closure_and_nothing_else() -> None:
    files = {path.as_posix() for path in lambda_asset.asset_files()}

    assert {"functions/api/app.py", "functions/authorizer/app.py", "runly_core/contracts.py", "runly/wire.py"} <= files
    # the job SDK's machinery, the CLI, the embedded stack, the client and the agent are not imported by any handler
    assert not {"runly/job.py", "runly/items.py", "runly/runner.py", "runly/fork_server.py"} & files
    assert not [file for file in files if file.split("/")[0] in {"runly_cli", "runly_client", "node_agent", "tests"}]


def test_uv_is_found_beside_the_python_running_the_app() -> None:
    assert Path(lambda_asset._uv()).name == "uv"


# What the Python Lambda runtime provides: boto3 and its dependencies.
LAMBDA_RUNTIME_PACKAGES = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}
# Imported only where installed, never by importing a handler (runly.tracing imports it inside functions, after
# checking it can; tests/unit/test_distributions.py holds every import of it to that): the asset does not ship it,
# a layer may bring it (docs/observability.md).
OPTIONAL_MODULES = {"opentelemetry"}


def test_lambda_requirements_list_every_dependency_the_runtime_lacks() -> None:
    # The asset is installed with --no-deps: a dependency missing from the file would fail only in Lambda.
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned = {canonicalize_name(name) for name in _pins(REPO_ROOT / REQUIREMENTS)}
    provided = pinned | {canonicalize_name(name) for name in LAMBDA_RUNTIME_PACKAGES}
    missing = {
        f"{package} needs {requirement.name}"
        for package in pinned
        for requirement in map(Requirement, requires(package) or [])
        if (requirement.marker is None or requirement.marker.evaluate({"extra": ""}))
        and canonicalize_name(requirement.name) not in provided
    }
    assert missing == set()


def test_lambda_requirements_hold_every_module_the_handlers_import(template_json: dict[str, Any]) -> None:
    # Given the modules of ours that the stack's handlers load (imported in a fresh interpreter)
    import ast
    import json
    import subprocess
    import sys
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    handlers = {
        resource["Properties"]["Handler"]
        for resource in template_json["Resources"].values()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    script = (
        "import importlib, json, sys\n"
        f"for name in {sorted(h.rpartition('.')[0] for h in handlers)!r}: importlib.import_module(name)\n"
        f"print(json.dumps([m.__file__ for n, m in sys.modules.items() if n.split('.')[0] in {PACKAGES!r}]))"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    ours = [Path(file) for file in json.loads(run.stdout) if file]

    # When their imports are read
    imported: set[str] = set()
    for source in ours:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])

    # Then each third-party one comes from a distribution the asset pins or the runtime provides
    distributions = packages_distributions()
    provided = {canonicalize_name(name) for name in [*_pins(REPO_ROOT / REQUIREMENTS), *LAMBDA_RUNTIME_PACKAGES]}
    unprovided = {
        module: distributions[module]
        for module in imported - set(PACKAGES) - OPTIONAL_MODULES
        if module in distributions and not {canonicalize_name(d) for d in distributions[module]} & provided
    }
    assert ours and unprovided == {}


def test_every_handler_imports_from_the_asset_alone(tmp_path: Path) -> None:
    # What Lambda runs: the asset's files and the installed dependencies, no checkout on the path. `-S` keeps the
    # editable installs' .pth files (this checkout) out; site-packages stands in for the asset's dependencies.
    import subprocess
    import sys
    import sysconfig

    asset = tmp_path / "asset"
    for relative in lambda_asset.asset_files():
        (asset / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / relative, asset / relative)
    handlers = lambda_asset.handler_modules()
    assert "functions.api.app" in handlers and "functions.authorizer.app" in handlers
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-S", "-c", script, *handlers],
        cwd=asset,
        env={"PYTHONPATH": f"{asset}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]


# The extras the handlers use of a pinned distribution, and the distributions a standard module needs at run time.
HANDLER_EXTRAS = {"aws-lambda-powertools": {"tracer"}}
STDLIB_NEEDS = {"zoneinfo": "tzdata"}


def test_lambda_requirements_pin_nothing_the_handlers_do_not_load() -> None:
    # Every pin ships in every function's asset and costs its cold start: one no handler's import reaches (directly,
    # or through a dependency of what it imports) is dead weight, as pydantic-settings and python-dotenv were.
    import ast
    from importlib.metadata import packages_distributions, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    imported: set[str] = set()
    for relative in lambda_asset.asset_files():
        if relative.suffix != ".py":
            continue
        for node in ast.walk(ast.parse((REPO_ROOT / relative).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    by_module = packages_distributions()
    # The asset's own packages are in it as source: their distributions' requirements are not the handlers' imports.
    third_party = imported - set(PACKAGES)
    needed = {canonicalize_name(d) for module in third_party for d in by_module.get(module, [])}
    needed |= {canonicalize_name(d) for module, d in STDLIB_NEEDS.items() if module in third_party}
    pending = list(needed)
    while pending:
        name = pending.pop()
        extras = HANDLER_EXTRAS.get(name, set())
        for requirement in map(Requirement, requires(name) or []):
            applies = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in {"", *extras}
            )
            dependency = canonicalize_name(requirement.name)
            if applies and dependency not in needed:
                needed.add(dependency)
                pending.append(dependency)
    pinned = {canonicalize_name(name) for name in _pins(REPO_ROOT / REQUIREMENTS)}
    assert pinned - needed == set()
