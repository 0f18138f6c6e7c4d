"""A bundle's manifest is read with the API's JSON limits (runly_core.strict_json): a hostile manifest is a
PackageError naming the bundle, never a RecursionError, a stored NaN or a lone surrogate (registration: 422)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from runly_core.bundle import PackageError, verify_bundle


def bundle_with_manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scratch-dir" / "p-1.runly"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", text)
    return path


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"name":"p","jobs":' + "[" * 5000 + "]" * 5000 + "}", "deeper than 64"),
        ('{"name":"p","jobs":[{"default_config":{"x":NaN}}]}', "NaN"),
        ('{"name":"\\ud800"}', "lone surrogate"),
        ('{"format":' + "1" * 5000 + "}", "integer out of range"),
    ],
)
def test_a_hostile_manifest_is_a_package_error_naming_the_bundle_not_its_path(
    tmp_path: Path, text: str, words: str
) -> None:
    bundle = bundle_with_manifest(tmp_path, text)
    with pytest.raises(PackageError) as refused:
        verify_bundle(bundle, None, shown="p-1.runly")
    assert words in str(refused.value) and str(refused.value).startswith("p-1.runly")
    assert "scratch-dir" not in str(refused.value)
