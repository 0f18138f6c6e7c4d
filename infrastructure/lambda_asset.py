"""The functions' code asset, bundled on this machine (no Docker).

The asset holds the modules the handlers import and nothing else: the import closure of every module of
`functions` that defines `lambda_handler`, within our own packages (functions, runly_core and the few modules of the
runly SDK the core uses), found by reading their import statements, plus the dashboard's files the API serves; and,
unless switched off, their runtime dependencies installed by uv as manylinux x86_64 wheels for Python 3.11, the
Lambda runtime's platform. One asset serves every function (one upload, one set of dependencies); its hash covers
exactly those files, so an edit to the CLI, the agent or a module no handler imports redeploys nothing.
"""

from __future__ import annotations

import ast
import compileall
import hashlib
import py_compile
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as lambda_

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("functions", "runly_core", "runly")  # where the closure may reach
STATIC_DIRS = ("functions/dashboard",)  # files read at run time, not imported
REQUIREMENTS = "requirements-lambda.txt"
PYTHON_VERSION = "3.11"  # must match the function's runtime (control_plane_api.RUNTIME)
PYTHON_PLATFORM = "x86_64-manylinux2014"  # must match the function's architecture (x86_64)
TASK_ROOT = "/var/task"  # where Lambda unpacks the asset: the compiled files' source paths (tracebacks) name it

# What CDK may stage from the source directory (it does not: the local bundler reads the files itself).
SOURCE_PATTERNS = ["*", *(f"!{package}" for package in PACKAGES), f"!{REQUIREMENTS}", "**/__pycache__", "**/*.pyc"]


def _module_file(source_dir: Path, module: str) -> Path | None:
    base = source_dir / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every module a file may import at run time (lazy imports included, `if TYPE_CHECKING:` blocks not), as dotted
    names; `from a import b` names a.b too (b may be a module). Relative imports (`from .errors import X`, `from .
    import runs`) are resolved against ``module``, the file's own dotted name: missing one would leave out a module
    the handler needs, and the function would fail at its first import in Lambda."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    pending: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not node.module:
                    continue
                base = node.module
            else:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                if node.level - 1 > len(package) or not anchor:
                    raise ValueError(f"{path}: a relative import goes above its top-level package")
                base = ".".join([*anchor, node.module] if node.module else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def handler_modules(source_dir: Path = REPO_ROOT) -> list[str]:
    return sorted(
        ".".join(path.relative_to(source_dir).with_suffix("").parts)
        for path in (source_dir / "functions").rglob("*.py")
        if "__pycache__" not in path.parts and "def lambda_handler" in path.read_text(encoding="utf-8")
    )


def asset_files(source_dir: Path = REPO_ROOT) -> list[Path]:
    """The files of the asset, relative to ``source_dir``: the handlers' import closure within PACKAGES, each
    package's __init__ on the way, and the static files."""
    pending = handler_modules(source_dir)
    seen: set[str] = set()
    files: set[Path] = set()
    while pending:
        module = pending.pop()
        if module in seen or module.split(".")[0] not in PACKAGES:
            continue
        seen.add(module)
        path = _module_file(source_dir, module)
        if path is None:
            continue  # a name imported from a module, not a module
        files.add(path)
        parts = module.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # the packages' __init__ run first
        pending.extend(_imports(path, module))
    for directory in STATIC_DIRS:
        files.update(p for p in (source_dir / directory).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return sorted(path.relative_to(source_dir) for path in files)


def _uv() -> str:
    # The uv installed in the same environment as the Python that runs the CDK app.
    beside_python = Path(sys.executable).parent / "uv"
    found = str(beside_python) if beside_python.exists() else shutil.which("uv")
    if found is None:
        raise RuntimeError("uv not found beside the Python running the CDK app nor on PATH; pip install uv")
    return found


@jsii.implements(cdk.ILocalBundling)
class LocalPythonBundler:
    def __init__(self, *, source_dir: Path, install_dependencies: bool) -> None:
        self.source_dir = source_dir
        self.install_dependencies = install_dependencies

    def try_bundle(self, output_dir: str, options: cdk.BundlingOptions) -> bool:
        output = Path(output_dir)
        for relative in asset_files(self.source_dir):
            (output / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.source_dir / relative, output / relative)
        if self.install_dependencies:
            subprocess.run(
                [
                    _uv(),
                    "pip",
                    "install",
                    "--quiet",
                    "--target",
                    str(output),
                    "--python-platform",
                    PYTHON_PLATFORM,
                    "--python-version",
                    PYTHON_VERSION,
                    "--only-binary",
                    ":all:",
                    # The file pins every transitive dependency itself, except what the Lambda runtime provides
                    # (boto3, botocore...): resolving would bundle a botocore that shadows the runtime's.
                    "--no-deps",
                    "-r",
                    str(self.source_dir / REQUIREMENTS),
                ],
                check=True,
            )
        compile_bytecode(output)
        # Returning False would make CDK fall back to Docker, which this project does not use: failures raise.
        return True


def compile_bytecode(asset: Path) -> bool:
    """Compile every module of the asset (ours and the dependencies) to ``__pycache__``, as unchecked-hash pycs.

    Lambda's /var/task is read-only: without them every cold start compiles each module it imports from source,
    again (measured here: importing the API function takes about 1.2 s of CPU from source, 0.8 s from pycs).
    Unchecked-hash pycs are used without a stat of the source (its mtime means nothing after a zip), and they are
    reproducible: the same sources give the same files. Only the runtime's own Python can write pycs it will
    read; another one leaves the asset uncompiled, and says so."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        warnings.warn(
            f"the CDK app runs on Python {sys.version_info.major}.{sys.version_info.minor}, the functions on "
            f"{PYTHON_VERSION}: their asset ships no bytecode, so each cold start compiles what it imports",
            stacklevel=2,
        )
        return False
    compiled = compileall.compile_dir(
        str(asset),
        ddir=TASK_ROOT,
        quiet=2,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        workers=1,
    )
    if not compiled:
        raise RuntimeError(f"compiling the function asset's modules in {asset} failed")
    return True


def asset_hash(*, source_dir: Path, install_dependencies: bool) -> str:
    """Covers exactly the asset's files, the pins and the bundling mode, so a source-only asset is never
    mistaken for (or reused from the cdk.out cache as) a full one."""
    compiler = (
        f"{sys.implementation.cache_tag}"
        if f"{sys.version_info.major}.{sys.version_info.minor}" == PYTHON_VERSION
        else "none"
    )
    digest = hashlib.sha256(
        f"install_dependencies={install_dependencies};platform={PYTHON_PLATFORM};python={PYTHON_VERSION};"
        f"bytecode={compiler}".encode()
    )
    for relative in [*asset_files(source_dir), Path(REQUIREMENTS)]:
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update(hashlib.sha256((source_dir / relative).read_bytes()).digest())
    return digest.hexdigest()


def functions_code(*, install_dependencies: bool, source_dir: Path = REPO_ROOT) -> lambda_.Code:
    """The code asset of every runly function."""
    return lambda_.Code.from_asset(
        str(source_dir),
        asset_hash=asset_hash(source_dir=source_dir, install_dependencies=install_dependencies),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        exclude=SOURCE_PATTERNS,
        ignore_mode=cdk.IgnoreMode.DOCKER,
        bundling=cdk.BundlingOptions(
            # Never pulled: the local bundler always succeeds or raises.
            image=cdk.DockerImage.from_registry("unused"),
            # jsii calls back with the options as one positional struct, not the keywords its stub declares.
            local=LocalPythonBundler(  # type: ignore[arg-type]
                source_dir=source_dir, install_dependencies=install_dependencies
            ),
        ),
    )
