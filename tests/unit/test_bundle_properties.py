"""Properties of the bundle verifier, over inputs hypothesis makes up: whatever the bytes, it answers with a
PackageError or a manifest (never another exception, never a write outside its destination), and a bundle
with any member changed is refused."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runly_core.bundle import MANIFEST_NAME, PackageError, extract_bundle, verify_bundle
from tests.unit._bundles import fake_bundle, members, rezip

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def sound(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A sound bundle (demo 1.0 with one dependency): what the made-up inputs start from."""
    return fake_bundle(tmp_path_factory.mktemp("sound")).read_bytes()


def _verdict(path: Path, expected_sha256: str | None = None) -> str:
    """'ok' or 'refused'; anything else the verifier raises fails the property."""
    try:
        verify_bundle(path, expected_sha256)
    except PackageError:
        return "refused"
    return "ok"


# ---------------------------------------------------------------- any zip: no crash

_METHODS = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
_NAMES = st.one_of(
    st.sampled_from(
        [MANIFEST_NAME, "wheels/demo-1.0-py3-none-any.whl", "wheels/dep-2.0-py3-none-any.whl", "../evil.whl"]
    ),
    st.text(min_size=1, max_size=30).map(lambda name: f"wheels/{name}.whl"),
    st.text(min_size=1, max_size=30),
)


def _zip_of(entries: list[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are an input worth making
        for name, data, method in entries:
            try:
                archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
            except (ValueError, UnicodeEncodeError):  # a name zipfile cannot write: not an input
                continue
    return buffer.getvalue()


_LEAF = st.tuples(_NAMES, st.binary(max_size=200), _METHODS)
# Members that are themselves zips (as wheels are), of members that may be zips again.
_MEMBER_DATA = st.recursive(
    st.binary(max_size=300),
    lambda inner: st.lists(st.tuples(_NAMES, inner, _METHODS), max_size=4).map(_zip_of),
    max_leaves=6,
)
_ZIPS = st.lists(st.tuples(_NAMES, _MEMBER_DATA, _METHODS), max_size=6).map(_zip_of)


def _manifest_for(entries: dict[str, bytes], **changes: Any) -> bytes:
    manifest: dict[str, Any] = {
        "name": "demo",
        "version": "1.0",
        "project_wheel": "demo-1.0-py3-none-any.whl",
        "jobs": [{"name": "demo", "entry_point": "demo.jobs:Demo", "config_schema": {}}],
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in entries.items() if name != MANIFEST_NAME},
    }
    manifest.update(changes)
    return json.dumps(manifest).encode()


def _header_offsets(data: bytes) -> list[int]:
    """Where each local header and directory entry starts (their signatures)."""
    return [
        offset
        for signature in (b"PK\x03\x04", b"PK\x01\x02")
        for offset in range(len(data))
        if data.startswith(signature, offset)
    ]


@PROPERTY
@given(data=st.one_of(_ZIPS, st.binary(max_size=4096), _ZIPS.map(lambda zipped: zipped[: len(zipped) // 2])))
def test_any_zip_is_verified_or_refused_never_a_crash(tmp_path: Path, data: bytes) -> None:
    bundle = tmp_path / "any.runly"
    bundle.write_bytes(data)
    assert _verdict(bundle) in ("ok", "refused")


@PROPERTY
@given(wheels=st.dictionaries(_NAMES, _MEMBER_DATA, max_size=4), methods=st.lists(_METHODS, min_size=5, max_size=5))
def test_any_zip_whose_manifest_lists_its_members_is_verified_or_refused_never_a_crash(
    tmp_path: Path, wheels: dict[str, bytes], methods: list[int]
) -> None:
    # A manifest that agrees with the members takes the verifier past its listing checks, into the wheels
    entries = {name: data for name, data in wheels.items() if name != MANIFEST_NAME}
    entries[MANIFEST_NAME] = _manifest_for(entries)
    bundle = tmp_path / "listed.runly"
    bundle.write_bytes(_zip_of([(name, data, methods[i % 5]) for i, (name, data) in enumerate(entries.items())]))
    assert _verdict(bundle) in ("ok", "refused")


@PROPERTY
@given(data=st.data())
def test_any_damage_to_a_sound_bundle_is_refused_or_harmless_never_a_crash(
    tmp_path: Path, sound: bytes, data: st.DataObject
) -> None:
    # Given a sound bundle with bytes flipped, cut off, or inserted anywhere, or a field of a member's header
    # (its flags, compression method, sizes, name) overwritten
    damaged = bytearray(sound)
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        position = data.draw(st.integers(0, max(len(damaged) - 1, 0)), label="position")
        edit = data.draw(st.sampled_from(["flip", "header", "cut", "insert"]), label="edit")
        if edit == "flip" and damaged:
            damaged[position] ^= data.draw(st.integers(1, 255), label="mask")
        elif edit == "header":
            headers = _header_offsets(bytes(damaged))
            if headers:
                start = data.draw(st.sampled_from(headers), label="header") + data.draw(st.integers(4, 45))
                damaged[start : start + 2] = data.draw(st.binary(min_size=2, max_size=2), label="field")
        elif edit == "cut":
            del damaged[position:]
        else:
            damaged[position:position] = data.draw(st.binary(min_size=1, max_size=64), label="inserted")
    bundle = tmp_path / "damaged.runly"
    bundle.write_bytes(bytes(damaged))

    # Then verification and extraction answer with a manifest or a PackageError, and write only under dest
    assert _verdict(bundle) in ("ok", "refused")
    dest = tmp_path / "dest"
    try:
        extract_bundle(bundle, dest)
    except PackageError:
        pass
    assert {p.name for p in tmp_path.iterdir()} <= {"damaged.runly", "dest"}
    shutil.rmtree(dest, ignore_errors=True)
    # And with the sound bundle's hash expected (as registration and nodes expect it), any change is refused
    assume(bytes(damaged) != sound)
    assert _verdict(bundle, hashlib.sha256(sound).hexdigest()) == "refused"


# ---------------------------------------------------------------- any tampered member: refused


@PROPERTY
@given(data=st.data())
def test_a_bundle_with_any_wheel_changed_is_refused(tmp_path: Path, sound: bytes, data: st.DataObject) -> None:
    # Given the sound bundle's members, one wheel changed in any way, rezipped into a well-formed zip
    source = tmp_path / "sound.runly"
    source.write_bytes(sound)
    contents = members(source)
    wheel = data.draw(st.sampled_from(sorted(name for name in contents if name != MANIFEST_NAME)), label="wheel")
    changed = data.draw(st.binary(max_size=2048), label="changed")
    assume(changed != contents[wheel])
    contents[wheel] = changed

    # Then it is refused, whether or not the whole file's hash is known
    tampered = rezip(tmp_path / "tampered.runly", contents)
    assert _verdict(tampered) == "refused"


@PROPERTY
@given(data=st.data())
def test_a_bundle_whose_manifest_lies_about_any_file_is_refused(
    tmp_path: Path, sound: bytes, data: st.DataObject
) -> None:
    # Given the sound bundle with its manifest's listing changed: a digest, a name, a file dropped or added
    source = tmp_path / "sound.runly"
    source.write_bytes(sound)
    contents = members(source)
    files = json.loads(contents[MANIFEST_NAME])["files"]
    target = data.draw(st.sampled_from(sorted(files)), label="file")
    change = data.draw(st.sampled_from(["digest", "rename", "drop", "add"]), label="change")
    if change == "digest":
        digest = data.draw(st.text("0123456789abcdef", min_size=64, max_size=64), label="digest")
        assume(digest != files[target])
        files[target] = digest
    elif change == "rename":
        renamed = data.draw(_NAMES, label="renamed")
        assume(renamed not in files)
        files[renamed] = files.pop(target)
    elif change == "drop":
        del files[target]
    else:
        added = data.draw(_NAMES, label="added")
        assume(added not in files)
        files[added] = hashlib.sha256(b"").hexdigest()
    manifest = json.loads(contents[MANIFEST_NAME])
    manifest["files"] = files
    contents[MANIFEST_NAME] = json.dumps(manifest).encode()

    assert _verdict(rezip(tmp_path / "liar.runly", contents)) == "refused"


def _patched(sound: bytes, member: str, *, flags: int | None = None, method: int | None = None) -> bytes:
    """The sound bundle with one member's flags or compression method rewritten, in its local header and its
    directory entry alike (so zipfile reads it as that)."""
    data = bytearray(sound)
    name = member.encode()
    for signature, flags_at, method_at, name_at in ((b"PK\x03\x04", 6, 8, 30), (b"PK\x01\x02", 8, 10, 46)):
        offset = next(
            o for o in _header_offsets(sound) if sound.startswith(signature, o) and sound.startswith(name, o + name_at)
        )
        if flags is not None:
            data[offset + flags_at : offset + flags_at + 2] = flags.to_bytes(2, "little")
        if method is not None:
            data[offset + method_at : offset + method_at + 2] = method.to_bytes(2, "little")
    return bytes(data)


@pytest.mark.parametrize(
    "change",
    [
        {"method": 99},  # AES: zipfile cannot read it (NotImplementedError)
        {"method": zipfile.ZIP_BZIP2},  # the stored bytes are no bzip2 stream (OSError)
        {"method": zipfile.ZIP_LZMA},  # nor an LZMA one (LZMAError)
        {"flags": 0x1},  # encrypted: zipfile wants a password (RuntimeError)
    ],
    ids=["aes", "bzip2", "lzma", "encrypted"],
)
@pytest.mark.parametrize("member", [MANIFEST_NAME, "wheels/dep-2.0-py3-none-any.whl"])
def test_a_member_zipfile_cannot_read_is_refused_not_a_crash(
    tmp_path: Path, sound: bytes, member: str, change: dict[str, int]
) -> None:
    bundle = tmp_path / "hostile.runly"
    bundle.write_bytes(_patched(sound, member, **change))

    with pytest.raises(PackageError, match=re.escape(member)):
        verify_bundle(bundle, None)
    with pytest.raises(PackageError, match=re.escape(member)):
        extract_bundle(bundle, tmp_path / "dest")
