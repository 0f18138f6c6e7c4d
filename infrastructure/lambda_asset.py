"""The functions' code asset, bundled on this machine (no Docker).

The asset holds the `functions` and `runly` packages and, unless switched off, their runtime
dependencies installed by uv as manylinux x86_64 wheels for Python 3.11, the Lambda runtime's platform.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as lambda_

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("functions", "runly")
REQUIREMENTS = "requirements-lambda.txt"
PYTHON_VERSION = "3.11"  # must match the function's runtime (control_plane_api.RUNTIME)
PYTHON_PLATFORM = "x86_64-manylinux2014"  # must match the function's architecture (x86_64)

# The asset's hash is computed over these files only, so editing tests, docs or the agent
# does not produce a new asset (and a new function version) on deploy.
SOURCE_PATTERNS = ["*", *(f"!{package}" for package in PACKAGES), f"!{REQUIREMENTS}", "**/__pycache__", "**/*.pyc"]
_COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


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
        for package in PACKAGES:
            source = self.source_dir / package
            if not source.is_dir():
                raise FileNotFoundError(f"cannot bundle the functions: {source} is missing")
            shutil.copytree(source, output / package, ignore=_COPY_IGNORE, dirs_exist_ok=True)
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
        # Returning False would make CDK fall back to Docker, which this project does not use: failures raise.
        return True


def asset_hash(*, source_dir: Path, install_dependencies: bool) -> str:
    """Covers the packaged sources, the pins and the bundling mode, so a source-only asset is never
    mistaken for (or reused from the cdk.out cache as) a full one."""
    return cdk.FileSystem.fingerprint(
        str(source_dir),
        exclude=SOURCE_PATTERNS,
        ignore_mode=cdk.IgnoreMode.DOCKER,
        extra_hash=f"install_dependencies={install_dependencies};platform={PYTHON_PLATFORM};python={PYTHON_VERSION}",
    )


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
