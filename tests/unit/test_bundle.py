"""The bundle format: every way a bundle can be wrong is caught, with a message naming it."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import runly_core.bundle as bundle_module
from runly_core.bundle import (
    MANIFEST_NAME,
    PackageError,
    check_python,
    extract_bundle,
    inspect_bundle,
    install_offline,
    read_manifest,
    sha256_file,
    verify_bundle,
    write_bundle,
)
from runly_core.contracts import PackageManifest
from runly_core.resources import MAX_BUNDLE_WHEELS
from tests.support.zip_bombs import RawMember, bomb_bundle, stored, zeros
from tests.unit._bundles import (
    DEMO_JOB,
    fake_bundle,
    fake_wheel,
    manifest_of,
    members,
    packed_hello,
    rezip,
    with_manifest,
)

DEP = "wheels/dep-2.0-py3-none-any.whl"
PROJECT = "wheels/demo-1.0-py3-none-any.whl"


@pytest.fixture(scope="session")
def hello_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return packed_hello(tmp_path_factory)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return fake_bundle(tmp_path)


def test_a_sound_bundle_verifies_and_its_hash_is_the_file_hash(bundle: Path) -> None:
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()

    manifest = verify_bundle(bundle, digest)

    assert sha256_file(bundle) == digest
    assert (manifest.name, manifest.version, manifest.project_wheel) == ("demo", "1.0", Path(PROJECT).name)
    assert set(manifest.files) == {PROJECT, DEP}
    assert read_manifest(bundle) == manifest


def test_a_wrong_whole_bundle_sha256_is_rejected(bundle: Path) -> None:
    with pytest.raises(PackageError, match=r"expected " + "0" * 64):
        verify_bundle(bundle, "0" * 64)


def test_a_flipped_byte_inside_a_wheel_is_caught(bundle: Path) -> None:
    # Given a bundle whose bytes are changed in place, inside the dependency wheel
    data = bytearray(bundle.read_bytes())
    with zipfile.ZipFile(bundle) as archive:
        info = archive.getinfo(DEP)
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    data[offset] ^= 0xFF
    bundle.write_bytes(bytes(data))

    # When it is verified without the whole-file hash, the member itself still gives it away
    with pytest.raises(PackageError, match=DEP.replace(".", r"\.")):
        verify_bundle(bundle, None)


def test_a_wheel_replaced_behind_the_manifest_s_back_is_caught(bundle: Path, tmp_path: Path) -> None:
    # Given a well-formed zip (valid CRCs) whose wheel no longer matches the hash in the manifest
    contents = members(bundle)
    contents[DEP] = fake_wheel(tmp_path, "dep", "2.0", payload=b"import os; os.system('evil')\n").read_bytes()
    tampered = rezip(tmp_path / "tampered.runly", contents)

    with pytest.raises(PackageError, match=r"dep-2\.0-py3-none-any\.whl has SHA-256 .* \(tampered\?\)"):
        verify_bundle(tampered, None)


def test_a_member_not_in_the_manifest_is_rejected(bundle: Path, tmp_path: Path) -> None:
    contents = members(bundle) | {"wheels/extra-1.0-py3-none-any.whl": b"surprise"}

    with pytest.raises(PackageError, match=r"not listed in manifest.json: wheels/extra-1.0-py3-none-any.whl"):
        verify_bundle(rezip(tmp_path / "extra.runly", contents), None)


def test_a_file_listed_but_absent_is_rejected(bundle: Path, tmp_path: Path) -> None:
    contents = members(bundle)
    del contents[DEP]

    with pytest.raises(PackageError, match=f"listed in manifest.json but absent: {DEP}"):
        verify_bundle(rezip(tmp_path / "missing.runly", contents), None)


@pytest.mark.parametrize(
    "evil_name",
    ["../evil.whl", "wheels/../../evil.whl", "/etc/evil.whl", "wheels\\..\\evil.whl", "C:/evil.whl"],
)
def test_zip_slip_paths_are_rejected_and_nothing_is_written_outside(
    bundle: Path, tmp_path: Path, evil_name: str
) -> None:
    # Given a bundle whose manifest even lists the evil member with its true hash
    contents = members(bundle)
    manifest = manifest_of(contents)
    manifest["files"][evil_name] = hashlib.sha256(b"owned").hexdigest()
    evil = rezip(tmp_path / "evil.runly", with_manifest(contents, manifest) | {evil_name: b"owned"})
    dest = tmp_path / "deep" / "dest"

    with pytest.raises(PackageError, match=r"unsafe path"):
        verify_bundle(evil, None)
    with pytest.raises(PackageError, match=r"unsafe path"):
        extract_bundle(evil, dest)
    assert not (tmp_path / "evil.whl").exists() and not (tmp_path / "deep" / "evil.whl").exists()
    assert not dest.exists()


def test_a_symlink_member_is_rejected(bundle: Path, tmp_path: Path) -> None:
    contents = members(bundle)
    link = rezip(tmp_path / "link.runly", contents, symlinks=frozenset({DEP}))

    with pytest.raises(PackageError, match=r"not a regular file"):
        verify_bundle(link, None)


def test_anything_but_wheels_under_wheels_is_rejected(bundle: Path, tmp_path: Path) -> None:
    contents = members(bundle)
    manifest = manifest_of(contents)
    manifest["files"]["setup.sh"] = hashlib.sha256(b"rm -rf /").hexdigest()
    odd = rezip(tmp_path / "odd.runly", with_manifest(contents, manifest) | {"setup.sh": b"rm -rf /"})

    with pytest.raises(PackageError, match=r"unexpected member 'setup.sh'"):
        verify_bundle(odd, None)


def test_a_missing_manifest_is_named(bundle: Path, tmp_path: Path) -> None:
    contents = members(bundle)
    del contents[MANIFEST_NAME]
    headless = rezip(tmp_path / "headless.runly", contents)

    with pytest.raises(PackageError, match=r"no manifest.json"):
        verify_bundle(headless, None)
    with pytest.raises(PackageError, match=r"no manifest.json"):
        read_manifest(headless)


def test_a_file_that_is_not_a_zip_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.runly"
    junk.write_bytes(b"this is not a zip")

    with pytest.raises(PackageError, match=r"junk.runly is not a readable zip"):
        verify_bundle(junk, None)


def test_an_invalid_manifest_names_the_field(bundle: Path, tmp_path: Path) -> None:
    contents = members(bundle)
    manifest = manifest_of(contents)
    manifest["version"] = "not a version"

    with pytest.raises(PackageError, match=r"not a valid manifest: version"):
        read_manifest(rezip(tmp_path / "bad.runly", with_manifest(contents, manifest)))
    with pytest.raises(PackageError, match=r"not valid JSON"):
        read_manifest(rezip(tmp_path / "garbled.runly", contents | {MANIFEST_NAME: b"{nope"}))


def test_a_manifest_that_disagrees_with_the_project_wheel_is_rejected(bundle: Path, tmp_path: Path) -> None:
    contents = members(bundle)
    manifest = manifest_of(contents)
    manifest["version"] = "1.1"

    with pytest.raises(PackageError, match=r"manifest says demo 1\.1 but the project wheel .* is demo 1\.0"):
        verify_bundle(rezip(tmp_path / "liar.runly", with_manifest(contents, manifest)), None)


def test_a_project_wheel_that_is_not_in_the_bundle_is_rejected(bundle: Path, tmp_path: Path) -> None:
    contents = members(bundle)
    manifest = manifest_of(contents)
    manifest["project_wheel"] = "other-1.0-py3-none-any.whl"

    with pytest.raises(PackageError, match=r"project_wheel 'other-1.0-py3-none-any.whl' is not one of"):
        verify_bundle(rezip(tmp_path / "other.runly", with_manifest(contents, manifest)), None)


def test_a_bundle_over_the_size_limit_is_rejected(bundle: Path) -> None:
    with pytest.raises(PackageError, match=r"over the 1000-byte package limit"):
        verify_bundle(bundle, None, max_bytes=1000)


def test_check_python_applies_requires_python(tmp_path: Path) -> None:
    manifest = read_manifest(fake_bundle(tmp_path, requires_python=">=3.12"))

    with pytest.raises(PackageError, match=r"requires Python >=3\.12; this node runs 3\.11\.7"):
        check_python(manifest, (3, 11, 7))
    check_python(manifest, (3, 12, 0))
    check_python(manifest.model_copy(update={"requires_python": None}), (3, 8, 0))
    with pytest.raises(PackageError, match=r"not a PEP 440 specifier"):
        check_python(manifest.model_copy(update={"requires_python": "three"}), (3, 12, 0))


def test_extract_writes_every_wheel_and_the_manifest(bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"

    manifest = extract_bundle(bundle, dest)

    assert sorted(p.name for p in (dest / "wheels").iterdir()) == sorted(Path(n).name for n in manifest.files)
    assert PackageManifest.model_validate_json((dest / MANIFEST_NAME).read_text()) == manifest
    for name, digest in manifest.files.items():
        assert sha256_file(dest / name) == digest


def test_extract_refuses_a_tampered_member_and_removes_it(bundle: Path, tmp_path: Path) -> None:
    contents = members(bundle)
    contents[DEP] = b"tampered"

    with pytest.raises(PackageError, match=r"tampered"):
        extract_bundle(rezip(tmp_path / "t.runly", contents), tmp_path / "out")
    assert not (tmp_path / "out" / DEP).exists()


def test_write_bundle_is_deterministic(tmp_path: Path) -> None:
    # Given the same wheels written twice, with different file times and in a different order
    wheels = tmp_path / "w"
    wheels.mkdir()
    project = fake_wheel(wheels, "demo", "1.0")
    dependency = fake_wheel(wheels, "dep", "2.0")

    def write(dest: Path, wheels: list[Path]) -> PackageManifest:
        return write_bundle(
            dest,
            name="demo",
            version="1.0",
            requires_python=None,
            project_wheel=project.name,
            jobs=[DEMO_JOB],
            wheels=wheels,
        )

    first = write(tmp_path / "a.runly", [project, dependency])
    os.utime(project, (1_000_000, 1_000_000))
    second = write(tmp_path / "b.runly", [dependency, project])

    assert first == second
    assert sha256_file(tmp_path / "a.runly") == sha256_file(tmp_path / "b.runly")
    assert not list(tmp_path.glob(".*partial"))


# ---------------------------------------------------------------- offline install (real wheels)


def test_install_offline_needs_nothing_but_the_bundle(
    hello_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the hello bundle extracted, and no index or network reachable
    manifest = extract_bundle(hello_bundle, tmp_path / "x")
    nowhere = "http://127.0.0.1:9"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, nowhere)
    monkeypatch.setenv("UV_INDEX_URL", f"{nowhere}/simple")
    monkeypatch.setenv("UV_FIND_LINKS", f"{nowhere}/links")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "empty-uv-cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "uv.toml").write_text(f'index-url = "{nowhere}/simple"\n')

    # When it is installed
    python = install_offline(tmp_path / "x" / "wheels", manifest.project_wheel, tmp_path / "env", python=sys.executable)

    # Then the job imports in that environment, from that environment
    result = subprocess.run(
        [str(python), "-I", "-c", "import hello.jobs, runly, pydantic; print(hello.jobs.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().startswith(str(tmp_path / "env"))


def test_install_offline_fails_clearly_when_a_wheel_is_missing(hello_bundle: Path, tmp_path: Path) -> None:
    # Given the bundle's wheels without pydantic's: uv may not go and fetch it
    manifest = extract_bundle(hello_bundle, tmp_path / "x")
    for wheel in (tmp_path / "x" / "wheels").glob("pydantic-*.whl"):
        wheel.unlink()

    with pytest.raises(PackageError, match=r"(?s)installing hello-1.0.0-py3-none-any.whl offline.*pydantic"):
        install_offline(tmp_path / "x" / "wheels", manifest.project_wheel, tmp_path / "env", python=sys.executable)


# ---------------------------------------------------------------- what the wheels unpack to


def test_a_sound_bundle_states_what_its_wheels_unpack_to(bundle: Path) -> None:
    verified = inspect_bundle(bundle, sha256_file(bundle))

    with zipfile.ZipFile(bundle) as archive:
        wheels = [zipfile.ZipFile(archive.open(name)) for name in (PROJECT, DEP)]
        infos = [info for wheel in wheels for info in wheel.infolist()]
    assert verified.unpacked_files == len(infos) == 4
    assert verified.unpacked_bytes == sum(info.file_size for info in infos)
    assert verified.manifest == verify_bundle(bundle, None)


@pytest.mark.parametrize(
    ("payload", "options", "refusal"),
    [
        pytest.param(
            [zeros("bomb/zeros.bin", 2048)], {}, r"inflates from \d+ to 2147483648 bytes, over 200", id="ratio"
        ),
        pytest.param([zeros(f"bomb/part{i}.bin", 1) for i in range(1100)], {}, r"unpack to over \d+ bytes", id="total"),
        pytest.param(
            [zeros("bomb/zeros.bin", 2048, stated_size=1024)], {}, r"inflates past the 1024 bytes it states", id="lying"
        ),
        pytest.param(
            [zeros("bomb/a.bin", 1, stated_size=100)],
            {},
            r"inflates past the 100 bytes",
            id="lying-small",
        ),
        pytest.param(
            [zeros("bomb/one.bin", 1)],
            {"aliases": {f"bomb/alias{i}.bin": "bomb/one.bin" for i in range(3)}},
            r"overlaps the file before it",
            id="overlapping",
        ),
        pytest.param(
            [stored("bomb/hidden.py", b"import os\n")],
            {"unlisted": frozenset({"bomb/hidden.py"})},
            r"bytes before .* belong to no listed file",
            id="hidden-file",
        ),
        pytest.param(
            [RawMember("bomb/x.bin", b"BZh9", 0, 4, method=zipfile.ZIP_BZIP2)],
            {},
            r"compression method 12, not stored or deflated",
            id="bzip2",
        ),
    ],
)
def test_a_wheel_that_unpacks_past_the_limits_is_refused(
    tmp_path: Path, payload: list[RawMember], options: dict[str, Any], refusal: str
) -> None:
    # Given a bundle, correctly hashed and listed, whose wheel is a bomb of some kind
    bomb = bomb_bundle(tmp_path, "bomb", "1.0.0", payload, **options)
    assert bomb.stat().st_size < 3 * 1024 * 1024

    # Then verification refuses it, naming the wheel and what is wrong
    with pytest.raises(PackageError, match=rf"wheels/bomb-1\.0\.0-py3-none-any\.whl.*{refusal}"):
        verify_bundle(bomb, sha256_file(bomb))


def test_wheels_with_more_files_than_the_limit_are_refused_from_their_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plain zip lists at most 65,535 members, fewer than the limit: the limit is lowered to what one holds
    monkeypatch.setattr(bundle_module, "MAX_UNPACKED_FILES", 1000)
    bomb = bomb_bundle(tmp_path, "bomb", "1.0.0", [stored(f"bomb/f{i}.py", b"") for i in range(999)])

    with pytest.raises(PackageError, match=r"lists 1001 members, over the limit of 1000"):
        verify_bundle(bomb, None)


def test_a_wheel_member_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    contents = members(fake_bundle(tmp_path))
    contents[DEP] = b"not a zip at all"
    manifest = manifest_of(contents)
    manifest["files"][DEP] = hashlib.sha256(contents[DEP]).hexdigest()

    with pytest.raises(PackageError, match=r"dep-2\.0-py3-none-any\.whl is not a readable zip"):
        verify_bundle(rezip(tmp_path / "notzip.runly", with_manifest(contents, manifest)), None)


def test_a_wheel_with_large_honest_files_verifies_and_is_counted_exactly(tmp_path: Path) -> None:
    # Given a wheel, deflated by zipfile as build tools do, with files larger than the verifier's read size
    rng = random.Random(13)
    words = [bytes(rng.choices(range(97, 123), k=rng.randint(2, 9))) for _ in range(500)]
    text = b" ".join(rng.choices(words, k=900_000))[: 5 * 1024 * 1024]
    noise = rng.randbytes(3 * 1024 * 1024)
    wheel = tmp_path / "big-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big/text.txt", text)
        archive.writestr("big/noise.bin", noise)
        archive.writestr("big/empty.py", b"")
    bundle = tmp_path / "big-1.0.runly"
    write_bundle(
        bundle, name="big", version="1.0", requires_python=None, project_wheel=wheel.name, jobs=[DEMO_JOB],
        wheels=[wheel],
    )  # fmt: skip

    verified = inspect_bundle(bundle, sha256_file(bundle))

    assert (verified.unpacked_files, verified.unpacked_bytes) == (3, len(text) + len(noise))


def test_a_bundle_listing_more_wheels_than_the_limit_is_refused_from_its_directory(tmp_path: Path) -> None:
    contents = {f"wheels/w{i}-1.0-py3-none-any.whl": b"" for i in range(MAX_BUNDLE_WHEELS + 1)}
    crowded = rezip(tmp_path / "crowded.runly", {MANIFEST_NAME: b"{}", **contents})

    with pytest.raises(PackageError, match=rf"lists {MAX_BUNDLE_WHEELS + 2} members, over the limit of"):
        verify_bundle(crowded, None)
