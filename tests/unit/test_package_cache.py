"""The node's package cache: install once per content hash, verify first, never leave half an environment."""

from __future__ import annotations

import shutil
import subprocess
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import node_agent.package_cache as package_cache
from node_agent.package_cache import InstalledPackage, PackageCache, PackageDownloadError
from runly_core.bundle import PackageError, sha256_file
from tests.support.zip_bombs import bomb_bundle, zeros
from tests.unit._bundles import hello_variant, packed_hello


@pytest.fixture(scope="session")
def hello_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return packed_hello(tmp_path_factory)


class Feed:
    """Stands in for the S3 download: copies a local bundle and counts the calls."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.calls = 0

    def __call__(self, path: Path) -> None:
        self.calls += 1
        shutil.copyfile(self.source, path)


def _leftovers(cache: PackageCache) -> list[str]:
    return sorted(p.name for p in cache.tmp.iterdir())


def test_installs_once_then_reuses_the_environment(hello_bundle: Path, tmp_path: Path) -> None:
    cache = PackageCache(tmp_path / "cache", budget_bytes=10**9)
    sha = sha256_file(hello_bundle)
    feed = Feed(hello_bundle)

    # When the package is needed twice
    first = cache.ensure(sha, feed)
    first.release()
    second = cache.ensure(sha, feed)
    second.release()

    # Then it was downloaded and installed once, each phase timed
    assert feed.calls == 1
    assert (first.cached, second.cached) == (False, True)
    assert {"download", "verify", "install", "total"} <= set(first.timings)
    assert second.python == first.python == cache.envs / sha / "bin" / "python"
    assert second.manifest == first.manifest
    assert first.manifest.jobs[0].name == "hello"
    assert cache.installed() == [sha]
    assert _leftovers(cache) == []


def test_the_installed_environment_runs_the_job(hello_bundle: Path, tmp_path: Path) -> None:
    cache = PackageCache(tmp_path / "cache", budget_bytes=10**9)

    with cache.ensure(sha256_file(hello_bundle), Feed(hello_bundle)) as installed:
        result = subprocess.run(
            [
                str(installed.python),
                "-I",
                "-c",
                "import hello.jobs as j; print(j.__file__); print(j.Hello.default_config())",
            ],
            capture_output=True,
            text=True,
            check=True,
        )

    module_file, default_config = result.stdout.splitlines()
    assert Path(module_file).is_relative_to(installed.env_dir)  # the renamed env, not the temporary one
    assert default_config == "{'name': 'world', 'times': 1}"


def test_a_tampered_download_is_rejected_and_leaves_nothing_behind(hello_bundle: Path, tmp_path: Path) -> None:
    # Given a feed that serves a bundle with one byte changed
    cache = PackageCache(tmp_path / "cache", budget_bytes=10**9)
    sha = sha256_file(hello_bundle)
    tampered = tmp_path / "tampered.runly"
    data = bytearray(hello_bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))

    with pytest.raises(PackageError, match=rf"SHA-256 .*, expected {sha}"):
        cache.ensure(sha, Feed(tampered))

    assert not (cache.envs / sha).exists()
    assert cache.installed() == []
    assert _leftovers(cache) == []
    # And the cache keeps serving: the genuine bundle installs
    cache.ensure(sha, Feed(hello_bundle)).release()
    assert cache.installed() == [sha]


def test_a_failed_download_is_a_package_download_error(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path / "cache", budget_bytes=10**9)

    def broken(path: Path) -> None:
        path.write_bytes(b"partial")
        raise ConnectionError("feed unreachable")

    with pytest.raises(PackageDownloadError, match="feed unreachable"):
        cache.ensure("a" * 64, broken)
    assert _leftovers(cache) == []


def test_a_crash_mid_install_leaves_no_environment_that_looks_complete(
    hello_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an install that dies after writing half a venv
    cache = PackageCache(tmp_path / "cache", budget_bytes=10**9)
    sha = sha256_file(hello_bundle)

    def dies_halfway(wheels_dir: Path, project_wheel: str, env_dir: Path, **_: object) -> Path:
        (env_dir / "bin").mkdir(parents=True)
        (env_dir / "bin" / "python").write_text("half")
        raise OSError("No space left on device")

    monkeypatch.setattr(package_cache, "install_offline", dies_halfway)
    with pytest.raises(PackageError, match="No space left on device"):
        cache.ensure(sha, Feed(hello_bundle))
    assert not (cache.envs / sha).exists()
    assert _leftovers(cache) == []

    # When the install works again, the package installs from scratch
    monkeypatch.undo()
    installed = cache.ensure(sha, Feed(hello_bundle))
    assert not installed.cached and installed.python.exists()


def test_leftovers_of_a_crashed_process_are_cleaned_on_start(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "tmp" / f"{'b' * 64}.abc123" / "env").mkdir(parents=True)
    (root / "tmp" / f"trash-{'c' * 64}-1").mkdir(parents=True)

    cache = PackageCache(root, budget_bytes=10**9)

    assert _leftovers(cache) == []


def test_a_package_for_another_python_is_refused_before_install(hello_bundle: Path, tmp_path: Path) -> None:
    cache = PackageCache(tmp_path / "cache", budget_bytes=10**9)
    other = hello_variant(hello_bundle, tmp_path, "py4", requires_python=">=4")

    with pytest.raises(PackageError, match=r"requires Python >=4; this node runs 3\."):
        cache.ensure(sha256_file(other), Feed(other))
    assert cache.installed() == [] and _leftovers(cache) == []


def test_a_malformed_hash_is_refused(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path / "cache", budget_bytes=10**9)

    with pytest.raises(PackageError, match="not a lower-case hex SHA-256"):
        cache.ensure("../../etc", Feed(tmp_path / "none"))


def _unpacked(bundle: Path) -> int:
    """What the bundle's wheels unpack to, read here from the zips themselves."""
    with zipfile.ZipFile(bundle) as archive:
        wheels = [name for name in archive.namelist() if name.endswith(".whl")]
        return sum(info.file_size for name in wheels for info in zipfile.ZipFile(archive.open(name)).infolist())


def _install(cache: PackageCache, bundle: Path) -> str:
    sha = sha256_file(bundle)
    cache.ensure(sha, Feed(bundle)).release()
    return sha


def test_least_recently_used_environments_are_evicted_past_the_budget(hello_bundle: Path, tmp_path: Path) -> None:
    # Given a budget for two environments, with A used after B
    a, b, c = (hello_variant(hello_bundle, tmp_path, tag) for tag in ("a", "b", "c"))
    probe = PackageCache(tmp_path / "probe", budget_bytes=10**9)
    _install(probe, a)
    one_env = probe.size_bytes()
    cache = PackageCache(tmp_path / "cache", budget_bytes=int(one_env * 2.5))
    sha_a, sha_b = _install(cache, a), _install(cache, b)
    assert cache.ensure(sha_a, Feed(a)).cached

    # When a third package is installed
    sha_c = _install(cache, c)

    # Then B, the least recently used, made room
    assert sorted(cache.installed()) == sorted([sha_a, sha_c])
    assert not (cache.envs / sha_b).exists()
    assert cache.size_bytes() <= cache.budget_bytes


def test_an_environment_in_use_is_never_evicted(hello_bundle: Path, tmp_path: Path) -> None:
    # Given a budget too small for two environments, and A in use by a running job
    a, b, c = (hello_variant(hello_bundle, tmp_path, tag) for tag in ("a", "b", "c"))
    cache = PackageCache(tmp_path / "cache", budget_bytes=int(_unpacked(a) * 1.5))
    in_use = cache.ensure(sha256_file(a), Feed(a))

    # When B is installed, A stays (in use) and B stays (just installed)
    sha_b = _install(cache, b)
    assert sorted(cache.installed()) == sorted([in_use.sha256, sha_b])
    assert in_use.python.exists()

    # When A is released and C installed, both A and B go
    in_use.release()
    sha_c = _install(cache, c)
    assert cache.installed() == [sha_c]


def test_two_agents_needing_the_same_package_install_it_once(hello_bundle: Path, tmp_path: Path) -> None:
    # Given two caches on one root (as two agent processes on one machine) and threads in each
    caches = [PackageCache(tmp_path / "cache", budget_bytes=10**9) for _ in range(2)]
    sha = sha256_file(hello_bundle)
    feed = Feed(hello_bundle)
    results: list[InstalledPackage] = []
    errors: list[BaseException] = []

    def need(cache: PackageCache) -> Callable[[], None]:
        def run() -> None:
            try:
                results.append(cache.ensure(sha, feed))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=need(caches[i % 2])) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert feed.calls == 1
    assert sorted(r.cached for r in results) == [False, True, True, True]
    assert len({r.python for r in results}) == 1


def test_an_environment_another_agent_evicted_is_installed_again_not_trusted_from_memory(
    hello_bundle: Path, tmp_path: Path
) -> None:
    # Given an environment this agent used (so its manifest is remembered)
    cache = PackageCache(tmp_path / "cache", budget_bytes=10**9)
    sha = sha256_file(hello_bundle)
    feed = Feed(hello_bundle)
    cache.ensure(sha, feed).release()
    assert cache.ensure(sha, feed).cached  # the fast path: remembered and still there

    # When another agent on the machine evicts it
    other = PackageCache(tmp_path / "cache", budget_bytes=10**9)
    assert other._try_remove(sha)

    # Then the next run installs it again instead of using a vanished environment
    again = cache.ensure(sha, feed)
    again.release()
    assert not again.cached and feed.calls == 2
    assert again.python.exists()


def test_room_is_made_before_an_install_not_after(
    hello_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a budget for one environment and a half, holding A (not in use)
    a, b = (hello_variant(hello_bundle, tmp_path, tag) for tag in ("a", "b"))
    cache = PackageCache(tmp_path / "cache", budget_bytes=int(_unpacked(a) * 1.5))
    sha_a = _install(cache, a)
    seen_at_install: list[list[str]] = []
    real_install = package_cache.install_offline

    def install_offline(*args: Any, **kwargs: Any) -> Path:
        seen_at_install.append(cache.installed())
        return real_install(*args, **kwargs)

    monkeypatch.setattr(package_cache, "install_offline", install_offline)

    # When B is installed
    sha_b = _install(cache, b)

    # Then A was gone before B's install started: the cache never held both
    assert seen_at_install == [[]]
    assert cache.installed() == [sha_b] and sha_a != sha_b


def test_a_package_larger_than_the_whole_budget_is_refused_before_it_is_extracted(
    hello_bundle: Path, tmp_path: Path
) -> None:
    # Given a cache whose budget is smaller than what hello unpacks to, holding another environment
    other = hello_variant(hello_bundle, tmp_path, "other")
    needed = _unpacked(hello_bundle)
    cache = PackageCache(tmp_path / "cache", budget_bytes=needed - 1)
    kept = _install(PackageCache(tmp_path / "cache", budget_bytes=10**9), other)

    # When hello is needed, it is refused with the sizes named, before anything is extracted or evicted
    with pytest.raises(PackageError, match=rf"unpacks to {needed} bytes, more than .* budget of {needed - 1} bytes"):
        cache.ensure(sha256_file(hello_bundle), Feed(hello_bundle))
    assert cache.installed() == [kept]
    assert _leftovers(cache) == []


@pytest.mark.parametrize(
    ("payload", "refusal"),
    [
        pytest.param([zeros("bomb/zeros.bin", 2048)], r"inflates from \d+ to 2147483648 bytes", id="one-2GiB-file"),
        pytest.param(
            [zeros("bomb/zeros.bin", 2048, stated_size=1024)], r"inflates past the 1024 bytes it states", id="lying"
        ),
        pytest.param(
            [zeros(f"bomb/part{i}.bin", 1) for i in range(1100)], r"unpack to over \d+ bytes", id="many-1MiB-files"
        ),
    ],
)
def test_a_wheel_that_inflates_to_gigabytes_is_refused_before_a_byte_is_extracted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: list[Any], refusal: str
) -> None:
    # Given a bundle of a few MB, correctly hashed, whose wheel inflates to over a GiB of zeros
    bomb = bomb_bundle(tmp_path, "bomb", "1.0.0", payload)
    assert bomb.stat().st_size < 3 * 1024 * 1024
    cache = PackageCache(tmp_path / "cache", budget_bytes=100 * 1024**3)
    extracted: list[Path] = []
    monkeypatch.setattr(package_cache, "extract_bundle", lambda *args, **kwargs: extracted.append(args[0]))

    # When a node needs it, the package is refused, naming what is wrong and the bundle by its hash (the
    # message becomes the run's error, read over the API: no path of the node's)
    with pytest.raises(PackageError, match=refusal) as refused:
        cache.ensure(sha256_file(bomb), Feed(bomb))
    assert f"bundle {sha256_file(bomb)}: wheels/bomb-1.0.0" in str(refused.value)
    assert str(tmp_path) not in str(refused.value)

    # Then nothing was extracted and nothing is left behind
    assert extracted == []
    assert cache.installed() == [] and _leftovers(cache) == []


def test_installs_in_progress_count_against_the_budget(hello_bundle: Path, tmp_path: Path) -> None:
    # Given a budget for two environments and a half, holding B, while another agent on the machine installs
    # a package as large (its work directory notes what it will add)
    a, b = (hello_variant(hello_bundle, tmp_path, tag) for tag in ("a", "b"))
    one_env = _unpacked(a)
    cache = PackageCache(tmp_path / "cache", budget_bytes=int(one_env * 2.5))
    sha_b = _install(cache, b)
    elsewhere = cache.tmp / f"{'e' * 64}.inprogress"
    elsewhere.mkdir()
    (elsewhere / package_cache.NEEDED_FILE).write_text(str(one_env))

    # When A is installed
    sha_a = _install(cache, a)

    # Then B made room: B, A and the install in progress would not fit together
    assert cache.installed() == [sha_a] and sha_b != sha_a
    # And A's own note went with its work directory
    assert sorted(p.name for p in cache.tmp.iterdir()) == [elsewhere.name]


# ---------------------------------------------------------------- installed environments are sealed and checked


def _site_packages(env_dir: Path) -> Path:
    (site,) = env_dir.glob("lib/python*/site-packages")
    return site


@pytest.mark.parametrize("tamper", ["plant a .pth", "change a module", "remove a file", "let others write"])
def test_a_tampered_environment_is_installed_again_before_it_is_used(
    hello_bundle: Path, tmp_path: Path, tamper: str
) -> None:
    # Given an installed environment, with no write bit for anyone but its owner anywhere in it
    sha = sha256_file(hello_bundle)
    feed = Feed(hello_bundle)
    PackageCache(tmp_path / "cache", budget_bytes=10**9).ensure(sha, feed).release()
    env_dir = tmp_path / "cache" / "envs" / sha
    assert not [p for p in env_dir.rglob("*") if not p.is_symlink() and p.stat().st_mode & 0o022]
    site = _site_packages(env_dir)
    module = next(site.glob("hello/*.py"))

    # When it is tampered with
    if tamper == "plant a .pth":
        (site / "zz_planted.pth").write_text("import os\n")
    elif tamper == "change a module":
        module.write_text(module.read_text() + "\nPLANTED = True\n")
    elif tamper == "remove a file":
        module.unlink()
    else:
        module.chmod(0o666)

    # Then the next agent to use it (or one about to start a warm host from it) installs it again from the bundle
    again = PackageCache(tmp_path / "cache", budget_bytes=10**9)
    reinstalled = again.ensure(sha, feed, verify=True)
    reinstalled.release()
    assert feed.calls == 2 and not reinstalled.cached
    assert not (site / "zz_planted.pth").exists()
    assert "PLANTED" not in next(site.glob("hello/*.py")).read_text()


def test_a_checked_environment_is_served_from_the_cache(hello_bundle: Path, tmp_path: Path) -> None:
    sha = sha256_file(hello_bundle)
    feed = Feed(hello_bundle)
    cache = PackageCache(tmp_path / "cache", budget_bytes=10**9)
    cache.ensure(sha, feed).release()

    # An untouched environment passes the check, from this agent's memory or another agent's first use
    assert cache.ensure(sha, feed, verify=True).cached
    assert PackageCache(tmp_path / "cache", budget_bytes=10**9).ensure(sha, feed).cached
    assert feed.calls == 1


def test_an_environment_tampered_after_this_agent_used_it_is_caught_when_checked(
    hello_bundle: Path, tmp_path: Path
) -> None:
    sha = sha256_file(hello_bundle)
    feed = Feed(hello_bundle)
    cache = PackageCache(tmp_path / "cache", budget_bytes=10**9)
    cache.ensure(sha, feed).release()
    (_site_packages(cache.envs / sha) / "zz_planted.pth").write_text("import os\n")

    # Without a check (a warm host already serves it) the fast path trusts what this agent checked before
    assert cache.ensure(sha, feed).cached
    # With one (a host is about to start from it), it is installed again
    assert not cache.ensure(sha, feed, verify=True).cached
    assert feed.calls == 2
