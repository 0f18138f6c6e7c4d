"""Hand-made bundles for tests that need a registered package but not a real pack."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

from runly.wire import JobSpec
from runly_core.contracts import PackageManifest

GREETER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "times": {"type": "integer", "minimum": 1}},
    "required": ["name"],
    "additionalProperties": False,
}


def make_bundle(
    directory: Path,
    name: str = "greeter",
    version: str = "1.0.0",
    *,
    tamper: bool = False,
    jobs: list[JobSpec] | None = None,
) -> Path:
    """A structurally valid bundle (manifest + hashed wheels) whose wheels are not meant to be installed; its one
    job is greet (GREETER_SCHEMA) unless ``jobs`` are given."""
    project_wheel = f"{name}-{version}-py3-none-any.whl"
    files = {f"wheels/{project_wheel}": _tiny_wheel(name, version)}
    manifest = PackageManifest(
        name=name,
        version=version,
        requires_python=">=3.11",
        project_wheel=project_wheel,
        jobs=jobs or [JobSpec(name="greet", entry_point=f"{name}.jobs:Greet", config_schema=GREETER_SCHEMA)],
        files={member: hashlib.sha256(data).hexdigest() for member, data in files.items()},
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.json", manifest.model_dump_json())
        for member, data in files.items():
            archive.writestr(member, data + (b"!" if tamper else b""))
    path = directory / f"{name}-{version}.runly"
    path.write_bytes(buffer.getvalue())
    return path


def _tiny_wheel(name: str, version: str) -> bytes:
    """A zip shaped like a wheel (registration reads it, never installs it), the same bytes every time."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:  # stored: the text below stays findable in the bundle's bytes
        for path, text in (
            (f"{name}/__init__.py", "# not really a wheel: registration never installs it\n"),
            (f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"),
        ):
            wheel.writestr(zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0)), text)
    return buffer.getvalue()


def manifest_json(bundle: Path) -> dict[str, Any]:
    with zipfile.ZipFile(bundle) as archive:
        return dict(json.loads(archive.read("manifest.json")))
