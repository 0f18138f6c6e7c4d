"""The self-contained package ("bundle"): its format, its verification and its offline install.

A bundle is one zip file, ``{name}-{version}.runly``::

    manifest.json          a PackageManifest; ``files`` maps every other member to its SHA-256
    wheels/*.whl           the job project's own wheel and a wheel of every dependency (runly included)

The SHA-256 of the whole zip is the package's content hash: the feed records it,
the node agent caches environments by it.

This module is read by the Lambda function that registers packages, so it keeps
to the standard library, pydantic and ``packaging``; uv is only run (never
imported) by :func:`install_offline`, on nodes and by ``runly pack``.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version
from pydantic import ValidationError

from runly.wire import JobSpec
from runly_core import strict_json
from runly_core.contracts import PackageManifest
from runly_core.resources import (
    FILE_EXPANSION_FLOOR_BYTES,
    MAX_BUNDLE_WHEELS,
    MAX_FILE_EXPANSION,
    MAX_PACKAGE_BYTES,
    MAX_UNPACKED_BYTES,
    MAX_UNPACKED_FILES,
)

MANIFEST_NAME = "manifest.json"
WHEELS_DIR = "wheels"
BUNDLE_SUFFIX = ".runly"
# A manifest lists a few dozen wheels and job schemas; anything near this is not ours.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Wheels are already compressed, so members expand little; a bigger ratio means a zip bomb.
MAX_EXPANSION = 4
# Fixed member timestamp (the earliest a zip can hold), so packing twice gives the same bytes.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1024 * 1024
# A zip's central directory is read whole into memory by zipfile: bound it before zipfile reads it.
_MAX_DIRECTORY_BYTES = 64 * 1024 * 1024
# Wheels hold their files stored or deflated (PEP 427): the only methods whose output this module bounds itself.
_WHEEL_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
# What reading a hostile zip can raise besides PackageError: each becomes a PackageError naming the member.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    struct.error,
)
# A local file header (PKZIP APPNOTE 4.3.7): signature, versions, flags, method, time, date, CRC, sizes, lengths.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_DATA_DESCRIPTOR_MAX = 24  # after a member whose sizes follow its data (flag bit 3): signature, CRC, 2 zip64 sizes
_FLAG_ENCRYPTED = 0x1
_FLAG_DATA_DESCRIPTOR = 0x8
_FLAG_UTF8 = 0x800


class PackageError(Exception):
    """A bundle that cannot be used: unreadable, tampered, inconsistent, or failing to install.

    The message says what is wrong and with which file; the node agent reports it
    as the run's failure (reason ``package_error``) and keeps serving.
    """


def bundle_file_name(name: str, version: str) -> str:
    return f"{name}-{version}{BUNDLE_SUFFIX}"


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_stream(stream: IO[bytes], copy_to: IO[bytes] | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return digest.hexdigest(), size


# ---------------------------------------------------------------- reading


def _check_directory(stream: IO[bytes], max_entries: int, what: str) -> None:
    """Refuse a zip whose central directory lists more than ``max_entries`` members or is too large to hold,
    from its end record alone: zipfile would build one object per entry (millions fit in a few MB) first."""
    end_record = _END_RECORD(stream)
    if end_record is None:
        raise PackageError(f"{what} is not a readable zip archive (no end of central directory record)")
    entries, directory_bytes = end_record[_END_ENTRIES], end_record[_END_DIRECTORY_SIZE]
    if entries > max_entries:
        raise PackageError(f"{what} lists {entries} members, over the limit of {max_entries}")
    if directory_bytes > _MAX_DIRECTORY_BYTES:
        raise PackageError(f"{what} has a {directory_bytes}-byte directory, over {_MAX_DIRECTORY_BYTES}")
    stream.seek(0)


# zipfile's own reader of the end record (zip64 included), so the count checked is the count zipfile will read.
_END_RECORD = getattr(zipfile, "_EndRecData")  # noqa: B009 - private, absent from the type stubs
_END_ENTRIES = 4  # zipfile._ECD_ENTRIES_TOTAL
_END_DIRECTORY_SIZE = 5  # zipfile._ECD_SIZE


def _open_zip(bundle_path: Path, shown: Path | None = None) -> zipfile.ZipFile:
    """The bundle as a zip; messages name it ``shown`` (default: its path)."""
    label = shown or bundle_path
    try:
        stream = open(bundle_path, "rb")
    except FileNotFoundError as exc:
        raise PackageError(f"{label}: no such file") from exc
    except OSError as exc:
        raise PackageError(f"{label} cannot be read: {exc.strerror or type(exc).__name__}") from exc
    try:
        _check_directory(stream, MAX_BUNDLE_WHEELS + 1, str(label))
        archive = zipfile.ZipFile(stream)  # closing the archive closes the stream
        _check_offsets(archive, os.fstat(stream.fileno()).st_size, label)
        return archive
    except PackageError:
        stream.close()
        raise
    except (*_ZIP_ERRORS, OSError) as exc:
        stream.close()
        raise PackageError(f"{label} is not a readable zip archive: {exc}") from exc


def _check_offsets(archive: zipfile.ZipFile, size: int, label: Path) -> None:
    """Every member's local header inside the file: a damaged directory entry can point before its start, where
    zipfile's seek fails with an OSError instead of a zip error."""
    for info in archive.infolist():
        if not 0 <= info.header_offset < size:
            archive.close()
            raise PackageError(f"{label} is not a readable zip archive: member {info.filename!r} lies outside it")


def _manifest_from_zip(archive: zipfile.ZipFile, bundle_path: Path) -> PackageManifest:
    try:
        info = archive.getinfo(MANIFEST_NAME)
    except KeyError:
        raise PackageError(f"{bundle_path} has no {MANIFEST_NAME} at its root") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise PackageError(f"{bundle_path}: {MANIFEST_NAME} is {info.file_size} bytes, over {MAX_MANIFEST_BYTES}")
    _check_method(info, bundle_path)
    try:
        raw = archive.read(info)
    except _ZIP_ERRORS as exc:
        raise PackageError(f"{bundle_path}: {MANIFEST_NAME} is corrupt: {exc}") from exc
    try:
        data = strict_json.loads(raw)  # NaN, lone surrogates, 5,000-digit numbers, 10,000 levels: refused
    except ValueError as exc:
        raise PackageError(f"{bundle_path}: {MANIFEST_NAME} is not valid JSON: {exc}") from exc
    try:
        return PackageManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}" for error in exc.errors()
        )
        raise PackageError(f"{bundle_path}: {MANIFEST_NAME} is not a valid manifest: {problems}") from exc


def read_manifest(bundle_path: Path | str) -> PackageManifest:
    """The bundle's manifest, validated; nothing else is checked (see :func:`verify_bundle`)."""
    path = Path(bundle_path)
    with _open_zip(path) as archive:
        return _manifest_from_zip(archive, path)


# ---------------------------------------------------------------- verification


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _check_member_name(name: str, bundle_path: Path) -> None:
    """Only ``manifest.json`` and ``wheels/<file>.whl``: nothing can land outside the destination (zip-slip)."""
    path = PurePosixPath(name)
    if (
        "\\" in name
        or "\x00" in name
        or path.is_absolute()
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
    ):
        raise PackageError(f"{bundle_path}: member {name!r} has an unsafe path (absolute or outside the bundle)")
    if name == MANIFEST_NAME:
        return
    if len(path.parts) != 2 or path.parts[0] != WHEELS_DIR or not name.endswith(".whl") or path.name.startswith("."):
        raise PackageError(
            f"{bundle_path}: unexpected member {name!r}; a bundle holds only {MANIFEST_NAME} and wheels/*.whl"
        )


def _check_method(info: zipfile.ZipInfo, where: object) -> None:
    """Stored or deflated and not encrypted: what runly pack writes, and what this module can bound."""
    if info.flag_bits & _FLAG_ENCRYPTED:
        raise PackageError(f"{where}: member {info.filename!r} is encrypted")
    if info.compress_type not in _WHEEL_METHODS:
        raise PackageError(f"{where}: member {info.filename!r} uses compression method {info.compress_type}, "
                           "not stored or deflated")  # fmt: skip


def _check_structure(archive: zipfile.ZipFile, manifest: PackageManifest, bundle_path: Path, max_bytes: int) -> None:
    """Everything about the bundle except the members' contents."""
    seen: set[str] = set()
    expanded = 0
    for info in archive.infolist():
        if info.filename in seen:
            raise PackageError(f"{bundle_path}: member {info.filename!r} appears twice")
        seen.add(info.filename)
        _check_member_name(info.filename, bundle_path)
        if info.is_dir() or _is_symlink(info):
            raise PackageError(f"{bundle_path}: member {info.filename!r} is not a regular file (directory or symlink)")
        _check_method(info, bundle_path)
        expanded += info.file_size
    if expanded > max_bytes * MAX_EXPANSION:
        raise PackageError(f"{bundle_path}: members expand to {expanded} bytes, over {max_bytes * MAX_EXPANSION}")

    members = seen - {MANIFEST_NAME}
    listed = set(manifest.files)
    if unlisted := sorted(members - listed):
        raise PackageError(f"{bundle_path}: members not listed in {MANIFEST_NAME}: {', '.join(unlisted)}")
    if absent := sorted(listed - members):
        raise PackageError(f"{bundle_path}: files listed in {MANIFEST_NAME} but absent: {', '.join(absent)}")

    _check_project_wheel(manifest, bundle_path)


def _check_project_wheel(manifest: PackageManifest, bundle_path: Path) -> None:
    wheel = manifest.project_wheel
    if "/" in wheel or "\\" in wheel or f"{WHEELS_DIR}/{wheel}" not in manifest.files:
        raise PackageError(f"{bundle_path}: project_wheel {wheel!r} is not one of the bundle's wheels/")
    try:
        wheel_name, wheel_version, _, _ = parse_wheel_filename(wheel)
    except InvalidWheelFilename as exc:
        raise PackageError(f"{bundle_path}: project_wheel {wheel!r} is not a valid wheel file name: {exc}") from exc
    if canonicalize_name(wheel_name) != canonicalize_name(manifest.name) or wheel_version != Version(manifest.version):
        raise PackageError(
            f"{bundle_path}: manifest says {manifest.name} {manifest.version} "
            f"but the project wheel {wheel} is {wheel_name} {wheel_version}"
        )


def _read_member(archive: zipfile.ZipFile, name: str, bundle_path: Path, copy_to: IO[bytes] | None = None) -> str:
    try:
        with archive.open(name) as member:
            digest, _ = _sha256_stream(member, copy_to)
    except _ZIP_ERRORS as exc:
        # zipfile checks each member's CRC: a flipped byte usually surfaces here, before the hash.
        raise PackageError(f"{bundle_path}: member {name} is corrupt: {exc}") from exc
    return digest


def _check_digest(name: str, actual: str, manifest: PackageManifest, bundle_path: Path) -> None:
    if actual != manifest.files[name]:
        raise PackageError(
            f"{bundle_path}: {name} has SHA-256 {actual}, but {MANIFEST_NAME} says {manifest.files[name]} (tampered?)"
        )


@dataclass(frozen=True)
class VerifiedBundle:
    """What :func:`inspect_bundle` found: the manifest, and what the wheels unpack to (all files, all bytes)."""

    manifest: PackageManifest
    unpacked_bytes: int
    unpacked_files: int


@dataclass
class _Unpacked:
    """The running total of the wheels' files, against MAX_UNPACKED_BYTES and MAX_UNPACKED_FILES."""

    bytes: int = 0
    files: int = 0


def inspect_bundle(
    bundle_path: Path | str,
    expected_sha256: str | None,
    max_bytes: int = MAX_PACKAGE_BYTES,
    *,
    shown: str | None = None,
) -> VerifiedBundle:
    """Check everything a node relies on before it extracts or installs a bundle.

    Size limit, the whole file's SHA-256 (when ``expected_sha256`` is given), safe
    member paths, the manifest listing exactly the members, every member's SHA-256,
    a project wheel that matches the manifest's name and version, and every wheel
    within the unpacked limits (see :func:`_check_wheel`). Nothing is written.
    Messages name the bundle ``shown`` when given (not a caller's scratch path).
    """
    path = Path(bundle_path)
    label = Path(shown) if shown else path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise PackageError(f"{label}: no such file") from None
    if size > max_bytes:
        raise PackageError(f"{label} is {size} bytes, over the {max_bytes}-byte package limit")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise PackageError(f"{label} has SHA-256 {actual}, expected {expected_sha256.lower()}")
    unpacked = _Unpacked()
    with _open_zip(path, label) as archive:
        manifest = _manifest_from_zip(archive, label)
        _check_structure(archive, manifest, label, max_bytes)
        for name in sorted(manifest.files):
            _check_digest(name, _read_member(archive, name, label), manifest, label)
        for name in sorted(manifest.files):
            _check_wheel(archive, name, label, unpacked)
    return VerifiedBundle(manifest=manifest, unpacked_bytes=unpacked.bytes, unpacked_files=unpacked.files)


def verify_bundle(
    bundle_path: Path | str,
    expected_sha256: str | None,
    max_bytes: int = MAX_PACKAGE_BYTES,
    *,
    shown: str | None = None,
) -> PackageManifest:
    """:func:`inspect_bundle`'s checks; the bundle's manifest."""
    return inspect_bundle(bundle_path, expected_sha256, max_bytes, shown=shown).manifest


def _check_wheel(archive: zipfile.ZipFile, name: str, bundle_path: Path, unpacked: _Unpacked) -> None:
    """Refuse a wheel that would unpack to more than the limits allow, from what its data really holds.

    The sizes a wheel's directory states are claims: installers inflate each file until its deflate stream
    ends. So every file is inflated here (into nothing: only counted), refused the moment it passes the size
    it states, and its CRC checked; the files must tile the archive (no overlaps: one deflate stream counted
    for many files; no gaps: files that a streaming installer would find and this directory does not list).
    """
    where = f"{bundle_path}: {name}"
    try:
        with archive.open(name) as member:
            _check_directory(member, MAX_UNPACKED_FILES - unpacked.files, where)
            with zipfile.ZipFile(member) as wheel:
                infos = wheel.infolist()
                _check_wheel_claims(infos, where, unpacked)
                _check_wheel_data(member, infos, wheel.start_dir, where)
    except PackageError:
        raise
    except _ZIP_ERRORS as exc:
        raise PackageError(f"{where} is not a readable wheel: {type(exc).__name__}: {exc}") from exc


def _check_wheel_claims(infos: list[zipfile.ZipInfo], where: str, unpacked: _Unpacked) -> None:
    """The limits against the sizes the wheel states, before a byte is inflated."""
    unpacked.files += len(infos)
    if unpacked.files > MAX_UNPACKED_FILES:
        raise PackageError(f"{where}: the bundle's wheels hold over {MAX_UNPACKED_FILES} files, the limit")
    for info in infos:
        _check_method(info, where)
        if info.file_size > FILE_EXPANSION_FLOOR_BYTES and info.file_size > MAX_FILE_EXPANSION * max(
            info.compress_size, 1
        ):
            raise PackageError(
                f"{where}: {info.filename!r} inflates from {info.compress_size} to {info.file_size} bytes, "
                f"over {MAX_FILE_EXPANSION} times (a zip bomb?)"
            )
        unpacked.bytes += info.file_size
    if unpacked.bytes > MAX_UNPACKED_BYTES:
        raise PackageError(
            f"{where}: the bundle's wheels unpack to over {unpacked.bytes} bytes, "
            f"more than the {MAX_UNPACKED_BYTES}-byte limit"
        )


def _check_wheel_data(stream: IO[bytes], infos: list[zipfile.ZipInfo], directory_start: int, where: str) -> None:
    expected_offset = 0
    slack = 0  # a data descriptor may follow the previous file's data
    for info in sorted(infos, key=lambda i: i.header_offset):
        gap = info.header_offset - expected_offset
        if gap < 0:
            raise PackageError(f"{where}: {info.filename!r} overlaps the file before it")
        if gap > slack:
            raise PackageError(f"{where}: {gap} bytes before {info.filename!r} belong to no listed file")
        stream.seek(info.header_offset)
        header = stream.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size:
            raise PackageError(f"{where}: {info.filename!r} is cut short")
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != _LOCAL_SIGNATURE:
            raise PackageError(f"{where}: {info.filename!r} has no local header where the directory says")
        flags, method, name_length, extra_length = fields[3], fields[4], fields[10], fields[11]
        raw_name = stream.read(name_length)
        local_name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", errors="replace")
        if local_name != info.orig_filename or method != info.compress_type or flags & _FLAG_ENCRYPTED:
            raise PackageError(f"{where}: {info.filename!r}'s local header disagrees with the directory")
        data_start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        _check_inflated(stream, info, data_start, where)
        expected_offset = data_start + info.compress_size
        slack = _DATA_DESCRIPTOR_MAX if flags & _FLAG_DATA_DESCRIPTOR else 0
    gap = directory_start - expected_offset
    if gap < 0 or gap > slack:
        raise PackageError(f"{where}: its files do not end where its directory starts")


def _check_inflated(stream: IO[bytes], info: zipfile.ZipInfo, data_start: int, where: str) -> None:
    """Inflate one file's data, a MiB at a time and never more than one byte past the size it states (a bomb
    is refused at that byte, not inflated), count it and check its CRC."""
    stream.seek(data_start)
    left = info.compress_size
    inflater = zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type == zipfile.ZIP_DEFLATED else None
    produced = 0
    crc = 0
    pending = b""  # compressed bytes read but not yet inflated
    while True:
        if not pending and left > 0:
            pending = stream.read(min(_CHUNK, left))
            if not pending:
                raise PackageError(f"{where}: {info.filename!r} is cut short")
            left -= len(pending)
        if inflater is None:
            out, pending = pending, b""
        else:
            # With no input left the inflater may still hold output (a copy it had no room for): ask on.
            out = inflater.decompress(pending, min(_CHUNK, info.file_size - produced + 1))
            pending = inflater.unconsumed_tail
        produced += len(out)
        if produced > info.file_size:
            raise PackageError(
                f"{where}: {info.filename!r} inflates past the {info.file_size} bytes it states (a zip bomb?)"
            )
        crc = zlib.crc32(out, crc)
        if (inflater is not None and inflater.eof) or (not out and not pending and left == 0):
            break
    if inflater is not None and not inflater.eof:
        raise PackageError(f"{where}: {info.filename!r}'s compressed data does not end where it states")
    if produced != info.file_size or crc != info.CRC:
        raise PackageError(f"{where}: {info.filename!r} does not hold the {info.file_size} bytes and CRC it states")


def extract_bundle(
    bundle_path: Path | str, dest: Path | str, max_bytes: int = MAX_PACKAGE_BYTES, *, shown: str | None = None
) -> PackageManifest:
    """Extract the bundle's wheels into ``dest/wheels`` (and its manifest), hashing each file as it is written.

    A file whose hash does not match is deleted and PackageError raised; ``dest``
    should be a fresh directory that the caller removes on failure. Messages name
    the bundle ``shown`` when given.
    """
    path = Path(bundle_path)
    label = Path(shown) if shown else path
    target = Path(dest)
    with _open_zip(path, label) as archive:
        manifest = _manifest_from_zip(archive, label)
        _check_structure(archive, manifest, label, max_bytes)
        (target / WHEELS_DIR).mkdir(parents=True, exist_ok=True)
        for name in sorted(manifest.files):
            out_path = target / name  # name was checked: wheels/<file>.whl, nothing else
            try:
                # "x": never follow or overwrite something already there.
                with open(out_path, "xb") as out:
                    digest = _read_member(archive, name, label, copy_to=out)
                _check_digest(name, digest, manifest, label)
            except BaseException:
                out_path.unlink(missing_ok=True)
                raise
        (target / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return manifest


def check_python(manifest: PackageManifest, version_info: Sequence[int | str] = sys.version_info) -> None:
    """PackageError when the manifest's ``requires_python`` excludes that interpreter."""
    if not manifest.requires_python:
        return
    try:
        specifier = SpecifierSet(manifest.requires_python)
    except InvalidSpecifier as exc:
        raise PackageError(
            f"{manifest.name} {manifest.version}: requires_python {manifest.requires_python!r} "
            "is not a PEP 440 specifier"
        ) from exc
    version = ".".join(str(part) for part in tuple(version_info)[:3])
    if not specifier.contains(version, prereleases=True):
        raise PackageError(
            f"{manifest.name} {manifest.version} requires Python {manifest.requires_python}; this node runs {version}"
        )


# ---------------------------------------------------------------- writing


def _zip_info(name: str, compress_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = compress_type
    info.create_system = 3  # unix, whatever machine packs
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def write_bundle(
    dest: Path,
    *,
    name: str,
    version: str,
    requires_python: str | None,
    project_wheel: str,
    jobs: Iterable[JobSpec],
    wheels: Iterable[Path],
) -> PackageManifest:
    """Write a bundle deterministically: sorted members, fixed timestamps and modes.

    The same wheels and jobs give the same bytes, hence the same content hash.
    The file appears at ``dest`` atomically (written beside it, then renamed).
    """
    wheel_paths = sorted(wheels, key=lambda p: p.name)
    files = {f"{WHEELS_DIR}/{wheel.name}": sha256_file(wheel) for wheel in wheel_paths}
    if len(files) != len(wheel_paths):
        raise PackageError("two wheels share a file name: " + ", ".join(w.name for w in wheel_paths))
    manifest = PackageManifest(
        name=name,
        version=version,
        requires_python=requires_python,
        project_wheel=project_wheel,
        jobs=list(jobs),
        files=files,
    )
    payload = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True).encode() + b"\n"
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        with zipfile.ZipFile(partial, "w") as archive:
            archive.writestr(_zip_info(MANIFEST_NAME, zipfile.ZIP_DEFLATED), payload)
            for wheel in wheel_paths:
                # Wheels are zips already: storing them is as small and much faster than deflating.
                member = _zip_info(f"{WHEELS_DIR}/{wheel.name}", zipfile.ZIP_STORED)
                with open(wheel, "rb") as source, archive.open(member, "w") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return manifest


# ---------------------------------------------------------------- offline install


def find_uv() -> str:
    """The ``uv`` beside this interpreter (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / ("uv.exe" if os.name == "nt" else "uv")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("uv")
    if found is None:
        raise PackageError("uv was not found beside the Python interpreter nor on PATH; install it (pip install uv)")
    return found


def offline_uv_env() -> dict[str, str]:
    """The process environment for uv with no network and no machine-wide config.

    Every inherited ``UV_*`` variable is dropped (an index URL or find-links set
    for the developer's work must not leak into a node's install), then uv is told
    to read no uv.toml, touch no network, and never download a Python.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("UV_")}
    env.pop("VIRTUAL_ENV", None)
    env.pop("CONDA_PREFIX", None)
    env.update(
        UV_NO_CONFIG="1",
        UV_OFFLINE="1",
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_PROGRESS="1",
    )
    return env


def venv_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_uv(args: list[str], *, what: str, env: dict[str, str]) -> None:
    try:
        result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise PackageError(f"{what}: cannot run {args[0]}: {exc}") from exc
    if result.returncode != 0:
        raise PackageError(f"{what} failed (uv exit {result.returncode}):\n{_tail(result.stderr or result.stdout)}")


def install_offline(
    wheels_dir: Path,
    project_wheel: Path | str,
    env_dir: Path,
    *,
    python: str | Path,
    uv: str | Path | None = None,
    compile_bytecode: bool = False,
) -> Path:
    """Create a venv at ``env_dir`` and install the project wheel from ``wheels_dir`` alone; return its python.
    ``compile_bytecode``: write every module's .pyc now, so that nothing needs writing into the environment later
    (a node's environments are read-only to the jobs that run from them, and checked against their file hashes).

    No index, no network, no cache and no build: a wheel missing from the bundle
    fails the install instead of being fetched. The venv is relocatable, so it may
    be built in a temporary directory and renamed into place.
    """
    uv_bin = str(uv) if uv is not None else find_uv()
    wheel = Path(project_wheel)
    if not wheel.is_absolute():
        wheel = Path(wheels_dir) / wheel
    env = offline_uv_env()
    _run_uv(
        [uv_bin, "venv", "--quiet", "--relocatable", "--no-project", "--python", str(python), str(env_dir)],
        what=f"creating a virtual environment at {env_dir} with {python}",
        env=env,
    )
    env_python = venv_python(Path(env_dir))
    _run_uv(
        [
            uv_bin, "pip", "install", "--quiet",
            "--offline", "--no-index", "--find-links", str(wheels_dir),
            "--no-build", "--no-cache",
            "--python", str(env_python),
            *(["--compile-bytecode"] if compile_bytecode else []),
            str(wheel),
        ],
        what=f"installing {wheel.name} offline from {wheels_dir}",
        env=env,
    )  # fmt: skip
    return env_python
