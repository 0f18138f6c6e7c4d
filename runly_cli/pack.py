"""``runly pack``: build a self-contained bundle from a job project.

Steps, each timed in the log:

1. build   the project's wheel and a wheel of the runly SDK from its source tree
           (runly is not on PyPI), in parallel, with ``uv build``; the SDK's
           wheel is cached by a digest of its source, so it is built once;
2. resolve every other dependency with ``uv pip compile`` for this interpreter
           (fast: uv caches index metadata);
3. fetch   a wheel of each pinned dependency: from runly's wheel cache, or, for
           the ones not there yet, with ``pip wheel --no-deps`` (pip, because uv
           cannot save wheel files; pip also builds a wheel for a dependency that
           only publishes an sdist) into that cache;
4. install all the wheels offline into a scratch venv (:func:`install_offline`,
           exactly as a node will) and ask ``runly.runner describe`` there for
           the jobs: this proves the bundle is self-contained;
5. write   the bundle deterministically and verify it.

The bundle targets the interpreter running ``pack`` (its version and platform):
when a wheel is specific to that CPython version, ``requires_python`` is
narrowed to it, so a node with another Python refuses the package up front.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import sys_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version
from pydantic import ValidationError

import runly
from runly.runner import ENTRY_POINT_GROUP
from runly.wire import JobSpec
from runly_core.bundle import (
    PackageError,
    bundle_file_name,
    find_uv,
    install_offline,
    verify_bundle,
    write_bundle,
)
from runly_core.contracts import normalize_package_name

log = logging.getLogger(__name__)

WHEEL_CACHE_ENV = "RUNLY_WHEEL_CACHE"
SDK_CACHE_DAYS = 7
# Wheels built here carry this timestamp unless the caller sets its own: same source, same wheel bytes.
DEFAULT_SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest a zip can record
_PINNED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;#]+)$")


def pack_project(project_dir: Path, out_dir: Path) -> Path:
    """Build ``{name}-{version}.runly`` in ``out_dir`` from the job project at ``project_dir``; return its path."""
    project_dir = Path(project_dir).resolve()
    if not (project_dir / "pyproject.toml").is_file():
        raise PackageError(f"{project_dir} has no pyproject.toml: a job project is a Python project with one")
    uv = find_uv()
    runly_source = find_runly_source()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="runly-pack-") as scratch_name:
        scratch = Path(scratch_name)
        wheels = scratch / "wheels"
        wheels.mkdir()

        with _phase("build"):
            project_wheel, runly_wheel = _build_project_and_sdk(project_dir, runly_source, scratch, uv)
        if canonicalize_name(parse_wheel_filename(project_wheel.name)[0]) == "runly":
            raise PackageError(f"{project_dir} is the runly SDK itself, not a job project")
        _check_project(project_wheel, project_dir)
        for wheel in (project_wheel, runly_wheel):
            shutil.copy2(wheel, wheels / wheel.name)

        with _phase("resolve"):
            pinned, direct = _resolve(project_wheel, runly_wheel, scratch, uv)
        with _phase("fetch"):
            _collect_wheels(pinned, direct, wheels, uv)

        with _phase("install"):
            env_python = install_offline(wheels, project_wheel.name, scratch / "env", python=sys.executable, uv=uv)
        with _phase("describe"):
            jobs = _describe(env_python, scratch)

        name, version, _, _ = parse_wheel_filename(project_wheel.name)
        manifest_name = normalize_package_name(name)
        dest = out_dir / bundle_file_name(manifest_name, str(version))
        with _phase("write"):
            write_bundle(
                dest,
                name=manifest_name,
                version=str(version),
                requires_python=_requires_python(_wheel_metadata(project_wheel).get("Requires-Python"), wheels),
                project_wheel=project_wheel.name,
                jobs=jobs,
                wheels=sorted(wheels.glob("*.whl")),
            )
            try:
                verify_bundle(dest, None)
            except PackageError:
                dest.unlink(missing_ok=True)
                raise
    log.info("packed %s (%d bytes)", dest, dest.stat().st_size)
    return dest


# ---------------------------------------------------------------- the runly SDK


def find_runly_source() -> Path:
    """The source tree of the installed runly SDK: its package directory, whose pyproject.toml names project "runly"."""
    root = Path(runly.__file__).resolve().parent
    pyproject = root / "pyproject.toml"
    hint = (
        "runly is not on PyPI, so `runly pack` builds its wheel from source: "
        "install the SDK from a checkout (pip install -e <runly checkout>/runly)"
    )
    if not pyproject.is_file():
        raise PackageError(f"runly is installed at {root}, not from its source tree. {hint}")
    try:
        project_name = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"]
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise PackageError(f"{pyproject} cannot be read as the runly project: {exc}. {hint}") from exc
    if canonicalize_name(str(project_name)) != "runly":
        raise PackageError(f"{pyproject} is project {project_name!r}, not runly. {hint}")
    return root


# ---------------------------------------------------------------- steps


@contextmanager
def _phase(name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    log.info("pack %s: %.2fs", name, time.monotonic() - started)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _build_wheels(sources: list[Path], scratch: Path, uv: str) -> list[Path]:
    """One wheel per source tree, built in parallel; one wheel each or PackageError."""
    processes = []
    for index, source in enumerate(sources):
        out = scratch / f"built-{index}"
        # setuptools builds in <source>/build and writes <source>/*.egg-info; a file deleted from the
        # source would linger in a reused build/ and end up in the wheel. Build in scratch instead.
        extra_config = scratch / f"build-{index}.cfg"
        (scratch / f"egg-{index}").mkdir()
        extra_config.write_text(
            f"[build]\nbuild_base = {scratch / f'build-{index}'}\n[egg_info]\negg_base = {scratch / f'egg-{index}'}\n",
            encoding="utf-8",
        )
        env = {
            **os.environ,
            "DIST_EXTRA_CONFIG": str(extra_config),
            "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_SOURCE_DATE_EPOCH),
            "UV_NO_PROGRESS": "1",
        }
        command = [uv, "build", "--wheel", "--python", sys.executable, "--out-dir", str(out), str(source)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append((source, out, process))
    wheels = []
    failures = []
    for source, out, process in processes:
        output, _ = process.communicate()
        built = sorted(out.glob("*.whl")) if out.is_dir() else []
        if process.returncode != 0 or len(built) != 1:
            failures.append(f"building a wheel of {source} failed (exit {process.returncode}):\n{_tail(output)}")
        else:
            wheels.append(built[0])
    if failures:
        raise PackageError("\n\n".join(failures))
    return wheels


def _build_project_and_sdk(project_dir: Path, runly_source: Path, scratch: Path, uv: str) -> tuple[Path, Path]:
    """The project's wheel, always built; the runly SDK's wheel, built once per state of its source."""
    sdk_caches = wheel_cache_dir() / "runly-sdk"
    sdk_cache = sdk_caches / _source_key(runly_source)
    cached = sorted(sdk_cache.glob("runly-*.whl")) if sdk_cache.is_dir() else []
    if len(cached) == 1:
        runly_wheel = scratch / cached[0].name
        shutil.copy2(cached[0], runly_wheel)
        os.utime(sdk_cache)  # recently used: not pruned
        (project_wheel,) = _build_wheels([project_dir], scratch, uv)
        return project_wheel, runly_wheel
    project_wheel, runly_wheel = _build_wheels([project_dir, runly_source], scratch, uv)
    sdk_cache.mkdir(parents=True, exist_ok=True)
    partial = sdk_cache / f".{uuid.uuid4().hex}.partial"
    shutil.copy2(runly_wheel, partial)
    os.replace(partial, sdk_cache / runly_wheel.name)
    # Each edit of runly's source leaves a wheel behind: drop those unused for a week.
    week_ago = time.time() - SDK_CACHE_DAYS * 86400
    for stale in sdk_caches.iterdir():
        with contextlib.suppress(OSError):  # another pack may be pruning too
            if stale != sdk_cache and stale.stat().st_mtime < week_ago:
                shutil.rmtree(stale, ignore_errors=True)
    return project_wheel, runly_wheel


def _source_key(root: Path) -> str:
    """A digest of exactly what makes the SDK's wheel: its modules and its pyproject.toml (the wheel holds no more)."""
    digest = hashlib.sha256()
    files = [*root.glob("*.py"), root / "pyproject.toml"]
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def _wheel_dist_info(wheel: Path, file_name: str) -> str | None:
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            parts = member.split("/")
            if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == file_name:
                return archive.read(member).decode("utf-8")
    return None


def _wheel_metadata(wheel: Path) -> Message:
    text = _wheel_dist_info(wheel, "METADATA")
    if text is None:
        raise PackageError(f"{wheel.name} has no METADATA")
    return HeaderParser().parsestr(text)


def _check_project(project_wheel: Path, project_dir: Path) -> None:
    """Fail before fetching anything on the common first mistakes: no job declared, runly not a dependency."""
    entry_points = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    entry_points.optionxform = str  # type: ignore[assignment,method-assign]  # job names are case-sensitive
    entry_points.read_string(_wheel_dist_info(project_wheel, "entry_points.txt") or "")
    if not entry_points.has_section(ENTRY_POINT_GROUP) or not entry_points.options(ENTRY_POINT_GROUP):
        raise PackageError(
            f"{project_dir} declares no jobs: add them to pyproject.toml as\n"
            f'[project.entry-points."{ENTRY_POINT_GROUP}"]\nmy-job = "my_package.jobs:MyJob"'
        )
    requirements = [Requirement(line) for line in _wheel_metadata(project_wheel).get_all("Requires-Dist") or []]
    # The node starts every job with `python -m runly.runner`: runly must be installed unconditionally.
    if not any(
        canonicalize_name(req.name) == "runly" and (req.marker is None or req.marker.evaluate({"extra": ""}))
        for req in requirements
    ):
        raise PackageError(f'{project_dir} does not depend on runly: add "runly" to [project] dependencies')


def _resolve(project_wheel: Path, runly_wheel: Path, scratch: Path, uv: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Every dependency of the project, pinned for this interpreter: (name, version) pairs, plus direct references."""
    requirements = scratch / "requirements.in"
    requirements.write_text(
        "".join(
            f"{parse_wheel_filename(wheel.name)[0]} @ {wheel.as_uri()}\n" for wheel in (project_wheel, runly_wheel)
        ),
        encoding="utf-8",
    )
    command = [
        uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate",
        "--python", sys.executable,
        "--no-emit-package", parse_wheel_filename(project_wheel.name)[0],
        "--no-emit-package", "runly",
        str(requirements),
    ]  # fmt: skip
    env = {**os.environ, "UV_NO_PROGRESS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise PackageError(f"resolving the dependencies of {project_wheel.name} failed:\n{_tail(result.stderr)}")
    pinned: list[tuple[str, str]] = []
    direct: list[str] = []
    for raw in result.stdout.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if match := _PINNED.match(line):
            pinned.append((match["name"], match["version"]))
        else:  # a URL or path dependency: built as is, never cached
            direct.append(line)
    return pinned, direct


def wheel_cache_dir() -> Path:
    if configured := os.environ.get(WHEEL_CACHE_ENV):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runly" / "wheels"


def _find_cached(cache: Path, name: str, version: str, supported: dict[str, int]) -> Path | None:
    """The cached wheel of name==version that this interpreter prefers, if any."""
    wanted_name, wanted_version = canonicalize_name(name), Version(version)
    best: tuple[int, Path] | None = None
    for wheel in cache.glob("*.whl"):
        try:
            wheel_name, wheel_version, _, tags = parse_wheel_filename(wheel.name)
        except InvalidWheelFilename:
            continue
        if canonicalize_name(wheel_name) != wanted_name or wheel_version != wanted_version:
            continue
        rank = min((supported[str(tag)] for tag in tags if str(tag) in supported), default=None)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, wheel)
    return best[1] if best else None


def _pip(uv: str) -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    # A venv made by uv has no pip: borrow one, still choosing wheels for this interpreter.
    return [uv, "tool", "run", "pip", "--python", sys.executable]


def _pip_wheel(requirements: list[str], dest: Path, uv: str) -> None:
    command = [
        *_pip(uv), "wheel", "--no-deps", "--disable-pip-version-check", "--no-input", "--quiet",
        "--progress-bar", "off", "--wheel-dir", str(dest), *requirements,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PackageError(f"fetching wheels of {', '.join(requirements)} failed:\n{_tail(result.stderr)}")


def _collect_wheels(pinned: list[tuple[str, str]], direct: list[str], wheels: Path, uv: str) -> None:
    cache = wheel_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    supported = {str(tag): rank for rank, tag in enumerate(sys_tags())}
    missing = [(name, version) for name, version in pinned if _find_cached(cache, name, version, supported) is None]
    if missing:
        log.info("pack fetch: %d of %d wheels not cached: %s", len(missing), len(pinned), missing)
        # Into a private directory first, then renamed into the cache: a concurrent pack never sees half a file.
        incoming = cache / f".incoming-{uuid.uuid4().hex}"
        incoming.mkdir()
        try:
            _pip_wheel([f"{name}=={version}" for name, version in missing], incoming, uv)
            for wheel in incoming.glob("*.whl"):
                os.replace(wheel, cache / wheel.name)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
    for name, version in pinned:
        cached = _find_cached(cache, name, version, supported)
        if cached is None:
            raise PackageError(f"no wheel of {name}=={version} for this Python and platform could be fetched")
        _link_or_copy(cached, wheels / cached.name)
    if direct:
        _pip_wheel(direct, wheels, uv)


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _describe(env_python: Path, scratch: Path) -> list[JobSpec]:
    # -I: neither PYTHONPATH nor the current directory may stand in for what the bundle installed.
    command = [str(env_python), "-I", "-m", "runly.runner", "describe"]
    result = subprocess.run(command, cwd=scratch, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PackageError(f"describing the jobs failed (does the job module import?):\n{_tail(result.stderr)}")
    try:
        jobs = [JobSpec.model_validate(item) for item in json.loads(result.stdout)]
    except (ValueError, TypeError, ValidationError) as exc:
        raise PackageError(f"runly.runner describe printed something unexpected: {exc}") from exc
    if not jobs:
        raise PackageError(f"the bundle declares no jobs in the {ENTRY_POINT_GROUP!r} entry-point group")
    return jobs


def _is_interpreter_specific(wheel_name: str) -> bool:
    """True when no tag of the wheel works across CPython versions (e.g. cp311-cp311-manylinux...)."""
    tags = parse_wheel_filename(wheel_name)[3]
    return not any(tag.abi == "abi3" or (tag.abi == "none" and re.fullmatch(r"py\d", tag.interpreter)) for tag in tags)


def _requires_python(declared: str | None, wheels: Path) -> str | None:
    specifier = SpecifierSet(declared or "")
    if any(_is_interpreter_specific(wheel.name) for wheel in wheels.glob("*.whl")):
        specifier &= SpecifierSet(f"=={sys.version_info.major}.{sys.version_info.minor}.*")
    return str(specifier) or None
