"""The node's package cache: one ready-to-run environment per bundle content hash.

Layout under ``root``::

    envs/<sha256>/         a complete venv (relocatable) + runly-env.json; present only once complete
    tmp/<sha256>.<random>/ one install in progress: the download, the extracted wheels, the venv being built,
                           and ``needed``: the bytes it will add (counted by installs beside it)
    locks/<sha256>.lock    held exclusively while one process installs (or evicts) that hash
    locks/<sha256>.use     held shared by every InstalledPackage in use; eviction needs it exclusively

An environment is built in ``tmp/`` and renamed into ``envs/`` as the last step,
so a crash mid-install never leaves a half environment that looks complete. The
file locks (fcntl) make two agent processes on one machine wait for each other
instead of installing the same hash twice; the thread locks do the same for the
threads of one agent.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from runly_core.bundle import PackageError, check_python, extract_bundle, inspect_bundle, install_offline, venv_python
from runly_core.contracts import SHA256_HEX, PackageManifest

log = logging.getLogger(__name__)

ENV_INFO_FILE = "runly-env.json"
NEEDED_FILE = "needed"  # in an install's work directory: the bytes it will add, so that others count them
_SHA256 = re.compile(SHA256_HEX)


class PackageDownloadError(PackageError):
    """The bundle could not be downloaded (the feed, not the package, may be at fault)."""


class TamperedEnvironment(PackageError):
    """An installed environment differs from what was installed (a file added, changed or removed, or one that
    someone other than the agent's user may write): it is discarded, never run."""


@dataclass
class InstalledPackage:
    """A ready environment. While it is held (until :meth:`release`, or garbage collection) it is never evicted."""

    sha256: str
    python: Path
    env_dir: Path
    manifest: PackageManifest
    timings: dict[str, float]
    cached: bool
    _hold: IO[bytes] | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        if self._hold is not None:
            self._hold.close()  # closing the file drops its shared lock
            self._hold = None

    def __enter__(self) -> InstalledPackage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class PackageCache:
    def __init__(self, root: Path, *, budget_bytes: int, python: str = sys.executable, uv: str | None = None) -> None:
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        self.python = python
        self.uv = uv
        self.envs = self.root / "envs"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        for directory in (self.envs, self.tmp, self.locks):
            directory.mkdir(parents=True, exist_ok=True)
        # Jobs (another user) pass through to their environment's interpreter; nothing here is theirs to write.
        for directory, mode in ((self.root, 0o755), (self.envs, 0o755), (self.tmp, 0o700), (self.locks, 0o700)):
            if directory.stat().st_uid == os.getuid():
                directory.chmod(mode)
        self._guard = threading.Lock()
        self._thread_locks: dict[str, threading.Lock] = {}
        self._python_version: tuple[int, ...] | None = None
        self._manifests: dict[str, PackageManifest] = {}  # by hash, of environments this process has used
        self._clean_abandoned()

    # ------------------------------------------------------------ public

    def ensure(self, sha256: str, fetch: Callable[[Path], None], *, verify: bool = False) -> InstalledPackage:
        """The environment of the bundle with this content hash, installing it first if needed.

        ``fetch(path)`` downloads the bundle to ``path``; it is only called on a miss.
        Any failure raises PackageError and leaves nothing behind. ``verify``: check every file of a cached
        environment against the hashes noted at install (a warm host is about to start from it); a tampered
        one is discarded and installed again from the bundle. An agent checks each environment on first use too.
        """
        if not _SHA256.match(sha256):
            raise PackageError(f"{sha256!r} is not a lower-case hex SHA-256")
        started = time.monotonic()
        cached = self._cached(sha256, started)
        if cached is not None:
            if not verify:
                return cached
            try:
                self._verify(cached.env_dir)
                return cached
            except TamperedEnvironment as exc:
                log.error("package %s: %s; installing it again", sha256[:12], exc)
                cached.release()
                self._manifests.pop(sha256, None)
        with self._exclusive(sha256, blocking=True):
            hold = self._hold(sha256)
            try:
                env_dir = self.envs / sha256
                info = self._read_info(env_dir)
                if info is not None:
                    try:
                        self._verify(env_dir)  # first use by this agent, or asked for: every file as installed
                    except TamperedEnvironment as exc:
                        log.error("package %s: %s; installing it again", sha256[:12], exc)
                        self._discard(env_dir)
                        info = None
                if info is not None:
                    os.utime(env_dir)  # most recently used
                    timings = {"total": time.monotonic() - started}
                    log.info("package %s: cached environment %s", sha256[:12], env_dir)
                    manifest = PackageManifest.model_validate(info["manifest"])
                    self._manifests[sha256] = manifest
                    return InstalledPackage(
                        sha256, venv_python(env_dir), env_dir, manifest, timings, cached=True, _hold=hold
                    )
                if env_dir.exists():  # complete-looking but unreadable: never trust it
                    self._discard(env_dir)
                manifest, timings = self._install(sha256, fetch)
            except BaseException:
                hold.close()
                raise
        self._manifests[sha256] = manifest
        timings["total"] = time.monotonic() - started
        log.info(
            "package %s (%s %s) installed in %.2fs: %s",
            sha256[:12], manifest.name, manifest.version, timings["total"],
            ", ".join(f"{phase} {seconds:.2f}s" for phase, seconds in timings.items() if phase != "total"),
        )  # fmt: skip
        return InstalledPackage(sha256, venv_python(env_dir), env_dir, manifest, timings, cached=False, _hold=hold)

    def _cached(self, sha256: str, started: float) -> InstalledPackage | None:
        """The fast path of a run of a package this agent has seen: hold it (an eviction in progress
        finishes first; none starts while held), check it is still there, and reuse the manifest read
        before (an environment never changes under its hash). None: take the full path."""
        manifest = self._manifests.get(sha256)
        if manifest is None:
            return None
        env_dir = self.envs / sha256
        hold = self._hold(sha256)
        try:
            os.utime(env_dir)  # most recently used; raises if it was evicted meanwhile
            if not (env_dir / ENV_INFO_FILE).is_file():
                raise FileNotFoundError(env_dir / ENV_INFO_FILE)
        except OSError:
            hold.close()
            self._manifests.pop(sha256, None)
            return None
        timings = {"total": time.monotonic() - started}
        return InstalledPackage(sha256, venv_python(env_dir), env_dir, manifest, timings, cached=True, _hold=hold)

    def installed(self) -> list[str]:
        """Content hashes with a complete environment, least recently used first."""
        return [sha for _, sha, _ in self._inventory()]

    def size_bytes(self) -> int:
        return sum(size for _, _, size in self._inventory())

    # ------------------------------------------------------------ install

    def _install(self, sha256: str, fetch: Callable[[Path], None]) -> tuple[PackageManifest, dict[str, float]]:
        self._clean_leftovers(sha256)
        work = Path(tempfile.mkdtemp(prefix=f"{sha256}.", dir=self.tmp))
        timings: dict[str, float] = {}
        try:
            bundle = work / "bundle.runly"
            with _timed(timings, "download"):
                try:
                    fetch(bundle)
                except PackageError:
                    raise
                except Exception as exc:  # any download failure is reported with the package
                    raise PackageDownloadError(f"downloading package {sha256} failed: {exc}") from exc
                if not bundle.is_file():
                    raise PackageDownloadError(f"downloading package {sha256} produced no file")
            with _timed(timings, "verify"):
                # Messages name the bundle by its hash: a run's error is read over the API, this node's paths are not.
                shown = f"bundle {sha256}"
                verified = inspect_bundle(bundle, sha256, shown=shown)
                manifest = verified.manifest
                check_python(manifest, self._interpreter_version())
                self._make_room(sha256, verified.unpacked_bytes, work)
            with _timed(timings, "install"):
                extract_bundle(bundle, work / "bundle", shown=shown)
                bundle.unlink()
                staged = work / "env"
                install_offline(
                    work / "bundle" / "wheels", manifest.project_wheel, staged, python=self.python, uv=self.uv,
                    compile_bytecode=True,
                )  # fmt: skip
                _seal(staged)
                info = {
                    "sha256": sha256,
                    "size": _tree_size(staged),
                    "manifest": manifest.model_dump(mode="json"),
                    "files": _fingerprint(staged),
                }
                (staged / ENV_INFO_FILE).write_text(json.dumps(info), encoding="utf-8")
                os.rename(staged, self.envs / sha256)  # the commit point: same file system, atomic
            return manifest, timings
        except PackageError:
            raise
        except Exception as exc:  # disk full, permissions...: the run fails with a package error
            raise PackageError(f"installing package {sha256} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _interpreter_version(self) -> tuple[int, ...]:
        if self._python_version is None:
            if Path(self.python).resolve() == Path(sys.executable).resolve():
                self._python_version = tuple(sys.version_info[:3])
            else:
                try:
                    output = subprocess.run(
                        [self.python, "-c", "import sys; print(*sys.version_info[:3])"],
                        capture_output=True, text=True, check=True,
                    ).stdout  # fmt: skip
                except (OSError, subprocess.CalledProcessError) as exc:
                    raise PackageError(f"cannot run the node's Python {self.python}: {exc}") from exc
                self._python_version = tuple(int(part) for part in output.split())
        return self._python_version

    # ------------------------------------------------------------ eviction

    def _inventory(self) -> list[tuple[float, str, int]]:
        """(last use, sha256, size) of every complete environment, least recently used first."""
        entries = []
        for env_dir in self.envs.iterdir():
            info = self._read_info(env_dir)
            if info is None:
                continue
            try:
                entries.append((env_dir.stat().st_mtime, env_dir.name, int(info["size"])))
            except (OSError, KeyError, TypeError, ValueError):
                continue
        return sorted(entries)

    def _make_room(self, sha256: str, needed: int, work: Path) -> None:
        """Before an install: refuse a package that alone exceeds the budget, else evict the least recently
        used environments (none in use) until the cache, the installs in progress and ``needed`` fit. What
        is in use stays, and the install goes ahead over budget: those become evictable when their runs end.

        Each install notes what it needs in its work directory first (``tmp/<sha256>.*/needed``), so
        installs in progress at once, in this agent or another on the machine, count one another.
        """
        if needed > self.budget_bytes:
            raise PackageError(
                f"package {sha256} unpacks to {needed} bytes, more than this node's package cache budget of "
                f"{self.budget_bytes} bytes (RUNLY_CACHE_BUDGET_BYTES)"
            )
        (work / NEEDED_FILE).write_text(str(needed), encoding="utf-8")
        entries = self._inventory()
        total = sum(size for _, _, size in entries) + self._reserved(besides=work)
        for _, other, size in entries:
            if total + needed <= self.budget_bytes:
                return
            if other != sha256 and self._try_remove(other):
                log.info("package %s: evicted (%d bytes, least recently used)", other[:12], size)
                total -= size
        if total + needed > self.budget_bytes:
            log.warning(
                "package cache holds %d bytes (with installs in progress) and package %s needs %d, over the "
                "%d-byte budget: the rest is in use",
                total, sha256[:12], needed, self.budget_bytes,
            )  # fmt: skip

    def _reserved(self, *, besides: Path) -> int:
        """What the other installs in progress noted they need (a crashed one's work directory is removed
        when an agent starts, or when its hash is installed again)."""
        total = 0
        for note in self.tmp.glob(f"*/{NEEDED_FILE}"):
            if note.parent == besides:
                continue
            try:
                total += int(note.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # finished (its directory went) or half written: not worth failing an install over
        return total

    def _try_remove(self, sha256: str) -> bool:
        """Remove an environment nobody is installing or using; False when it is busy."""
        with self._exclusive(sha256, blocking=False) as acquired:
            if not acquired:
                return False
            with open(self.locks / f"{sha256}.use", "ab") as use:
                try:
                    fcntl.flock(use, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                self._discard(self.envs / sha256)
        return True

    def _discard(self, env_dir: Path) -> None:
        # Renamed out of envs/ first: a half-deleted environment must not look complete.
        trash = self.tmp / f"trash-{env_dir.name}-{uuid.uuid4().hex}"
        os.rename(env_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------ locks and leftovers

    @contextmanager
    def _exclusive(self, sha256: str, *, blocking: bool) -> Iterator[bool]:
        with self._guard:
            thread_lock = self._thread_locks.setdefault(sha256, threading.Lock())
        if not thread_lock.acquire(blocking=blocking):
            yield False
            return
        try:
            with open(self.locks / f"{sha256}.lock", "ab") as lock_file:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                yield True  # the lock goes with the file when it closes
        finally:
            thread_lock.release()

    def hold(self, sha256: str) -> IO[bytes]:
        """Keep an installed environment from eviction until the returned file is closed."""
        return self._hold(sha256)

    def _hold(self, sha256: str) -> IO[bytes]:
        hold = open(self.locks / f"{sha256}.use", "ab")  # kept open by InstalledPackage: closing it releases the hold
        fcntl.flock(hold, fcntl.LOCK_SH)
        return hold

    def _clean_leftovers(self, sha256: str) -> None:
        """Remove what a crashed install of this hash left in tmp/ (the caller holds its lock)."""
        for leftover in self.tmp.glob(f"{sha256}.*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _clean_abandoned(self) -> None:
        for entry in self.tmp.iterdir():
            if entry.name.startswith("trash-"):
                shutil.rmtree(entry, ignore_errors=True)
                continue
            sha256 = entry.name.partition(".")[0]
            if _SHA256.match(sha256):
                with self._exclusive(sha256, blocking=False) as acquired:
                    if acquired:  # nobody is installing it: a crash left it
                        self._clean_leftovers(sha256)

    def _verify(self, env_dir: Path) -> None:
        """Raise TamperedEnvironment unless the environment holds exactly the files noted at install, each with
        its hash (symlinks with their target), all of the agent's user and writable by nobody else."""
        info = self._read_info(env_dir)
        noted = info.get("files") if info else None
        record = os.lstat(env_dir / ENV_INFO_FILE)
        if record.st_uid != os.getuid() or record.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise TamperedEnvironment(f"{ENV_INFO_FILE} of {env_dir.name[:12]} is writable by another user")
        if not isinstance(noted, dict):
            raise TamperedEnvironment(f"{env_dir} has no file hashes (installed by an older agent)")
        found = _fingerprint(env_dir, check_owner=os.getuid())
        if found != noted:
            added = sorted(set(found) - set(noted))
            removed = sorted(set(noted) - set(found))
            changed = sorted(name for name in set(found) & set(noted) if found[name] != noted[name])
            raise TamperedEnvironment(
                f"environment {env_dir.name[:12]} was modified: added {added[:5]}, removed {removed[:5]},"
                f" changed {changed[:5]}"
            )

    def _read_info(self, env_dir: Path) -> dict[str, Any] | None:
        try:
            info = json.loads((env_dir / ENV_INFO_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not venv_python(env_dir).exists():
            return None
        return info


@contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        timings[phase] = time.monotonic() - started


def _tree_size(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                continue
    return total


def _seal(root: Path) -> None:
    """No write bit for group or others anywhere in an environment (uv honours the umask, which may be lax)."""
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files, None]:
            path = os.path.join(directory, name) if name is not None else directory
            info = os.lstat(path)
            if not stat.S_ISLNK(info.st_mode) and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                os.chmod(path, stat.S_IMODE(info.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))


def _fingerprint(root: Path, *, check_owner: int | None = None) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (``link:<target>`` for a symlink, ``dir`` for a directory) under
    ``root``, but its info file. ``check_owner``: raise TamperedEnvironment for an entry of another user or one
    that group or others may write."""
    found: dict[str, str] = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files, None]:
            path = os.path.join(directory, name) if name is not None else directory
            relative = os.path.relpath(path, root)
            if relative == ENV_INFO_FILE:
                continue
            info = os.lstat(path)
            if check_owner is not None and not stat.S_ISLNK(info.st_mode):
                if info.st_uid != check_owner or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                    raise TamperedEnvironment(f"{relative} in {root.name[:12]} is writable by another user")
            if stat.S_ISLNK(info.st_mode):
                found[relative] = "link:" + os.readlink(path)
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = "dir"
            else:
                with open(path, "rb") as handle:
                    found[relative] = hashlib.file_digest(handle, "sha256").hexdigest()
    return found
