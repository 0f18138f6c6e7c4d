"""Bundles for the tests of runly_core.bundle, runly_cli.pack and the node's package cache.

Packing examples/hello takes seconds, so it is done once per test process and
shared; the other bundles here are made by hand in milliseconds.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from runly.wire import JobSpec
from runly_cli.pack import pack_project
from runly_core.bundle import MANIFEST_NAME, read_manifest, write_bundle
from runly_core.contracts import PackageManifest

REPO = Path(__file__).resolve().parents[2]
HELLO_PROJECT = REPO / "examples" / "hello"

_packed: dict[str, Path] = {}


def packed_hello(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/hello packed by ``pack_project``, once per test process."""
    if "hello" not in _packed:
        _packed["hello"] = pack_project(HELLO_PROJECT, tmp_path_factory.mktemp("packed-hello"))
    return _packed["hello"]


def hello_variant(hello: Path, dest_dir: Path, tag: str, **manifest_changes: Any) -> Path:
    """The hello bundle with a different manifest (so a different content hash), same wheels."""
    manifest = read_manifest(hello)
    wheels_dir = dest_dir / f"wheels-{tag}"
    wheels_dir.mkdir(parents=True)
    with zipfile.ZipFile(hello) as archive:
        for name in manifest.files:
            (wheels_dir / Path(name).name).write_bytes(archive.read(name))
    job = manifest.jobs[0].model_copy(update={"default_config": {"name": tag, "times": 1}})
    fields: dict[str, Any] = {
        "name": manifest.name,
        "version": manifest.version,
        "requires_python": manifest.requires_python,
        "project_wheel": manifest.project_wheel,
        "jobs": [job],
    }
    fields.update(manifest_changes)
    dest = dest_dir / f"hello-{tag}.runly"
    write_bundle(dest, wheels=sorted(wheels_dir.glob("*.whl")), **fields)
    return dest


# ---------------------------------------------------------------- hand-made bundles


def fake_wheel(directory: Path, name: str, version: str, payload: bytes = b"x = 1\n") -> Path:
    """A small wheel-shaped zip: enough for verification, not meant to be installed."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", payload)
        archive.writestr(
            f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
    return path


DEMO_JOB = JobSpec(
    name="demo",
    entry_point="demo.jobs:Demo",
    config_schema={"type": "object", "properties": {}},
    default_config={},
)


def fake_bundle(directory: Path, *, requires_python: str | None = ">=3.11") -> Path:
    """demo 1.0 with one dependency wheel, written by write_bundle."""
    wheels = directory / "fake-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    project = fake_wheel(wheels, "demo", "1.0")
    dependency = fake_wheel(wheels, "dep", "2.0", payload=b"y = 2\n" * 1000)
    dest = directory / "demo-1.0.runly"
    write_bundle(
        dest,
        name="demo",
        version="1.0",
        requires_python=requires_python,
        project_wheel=project.name,
        jobs=[DEMO_JOB],
        wheels=[project, dependency],
    )
    return dest


def members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def manifest_of(contents: dict[str, bytes]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(contents[MANIFEST_NAME])
    return data


def rezip(dest: Path, contents: dict[str, bytes], *, symlinks: frozenset[str] = frozenset()) -> Path:
    """Write members as given: a well-formed zip whose content may disagree with its manifest."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in contents.items():
            info = zipfile.ZipInfo(name)
            if name in symlinks:
                info.external_attr = (0o120777) << 16
            archive.writestr(info, data)
    dest.write_bytes(buffer.getvalue())
    return dest


def with_manifest(contents: dict[str, bytes], manifest: dict[str, Any] | PackageManifest) -> dict[str, bytes]:
    data = manifest.model_dump(mode="json") if isinstance(manifest, PackageManifest) else manifest
    return {**contents, MANIFEST_NAME: json.dumps(data).encode()}
