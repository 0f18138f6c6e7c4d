"""``pack_project``: from a job project to a self-contained, verifiable bundle."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

import runly
from runly_cli.pack import find_runly_source, pack_project
from runly_core.bundle import PackageError, check_python, read_manifest, sha256_file, verify_bundle
from tests.unit._bundles import HELLO_PROJECT, REPO, packed_hello


@pytest.fixture(scope="session")
def hello_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return packed_hello(tmp_path_factory)


def test_hello_packs_into_a_bundle_that_verifies_and_describes_its_job(hello_bundle: Path) -> None:
    manifest = verify_bundle(hello_bundle, sha256_file(hello_bundle))

    assert hello_bundle.name == "hello-1.0.0.runly"
    assert (manifest.name, manifest.version, manifest.project_wheel) == (
        "hello",
        "1.0.0",
        "hello-1.0.0-py3-none-any.whl",
    )
    (job,) = manifest.jobs
    assert job.name == "hello"
    assert job.entry_point == "hello.jobs:Hello"
    assert job.default_config == {"name": "world", "times": 1}
    assert set(job.config_schema["properties"]) == {"name", "times"}
    assert job.config_schema["properties"]["times"]["maximum"] == 100


def test_the_bundle_carries_every_dependency_including_the_runly_sdk(hello_bundle: Path) -> None:
    wheels = [Path(name).name for name in read_manifest(hello_bundle).files]

    # The job SDK depends on pydantic alone: the bundle holds the project, the SDK and pydantic's own wheels.
    projects = {wheel.split("-")[0] for wheel in wheels}
    assert projects == {
        "hello",
        "runly",
        "pydantic",
        "pydantic_core",
        "annotated_types",
        "typing_extensions",
        "typing_inspection",
    }, wheels
    with zipfile.ZipFile(hello_bundle) as archive:
        runly_wheel = next(n for n in archive.namelist() if Path(n).name.startswith("runly-"))
        assert runly_wheel.endswith(f"runly-{runly.__version__}-py3-none-any.whl")


def test_the_bundled_runly_wheel_holds_the_job_sdk_and_nothing_else(hello_bundle: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(hello_bundle) as archive:
        member = next(n for n in archive.namelist() if Path(n).name.startswith("runly-"))
        (tmp_path / "runly.whl").write_bytes(archive.read(member))
    with zipfile.ZipFile(tmp_path / "runly.whl") as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = [n for n in names if n.endswith("entry_points.txt")]

    modules = {name for name in names if not name.startswith("runly-")}
    # exactly the SDK's modules, as they are in the source tree: no CLI, agent, platform core or embedded stack
    assert modules == {f"runly/{path.name}" for path in (REPO / "runly").glob("*.py")}
    assert {"runly/job.py", "runly/items.py", "runly/runner.py", "runly/wire.py"} <= modules
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist")]
    # pydantic is the one dependency every job gets; the rest are optional extras (runly[otel]) a job asks for
    assert [line for line in requires if "extra ==" not in line] == ["Requires-Dist: pydantic<3,>=2.7"]
    assert {line.rsplit("extra == ", 1)[1] for line in requires if "extra ==" in line} <= {'"otel"'}
    assert entry_points == []  # no console script that could not run in a bundle


def test_requires_python_is_narrowed_to_the_interpreter_the_binary_wheels_were_built_for(hello_bundle: Path) -> None:
    # pydantic_core is a CPython-version-specific wheel: another minor version could not install it
    manifest = read_manifest(hello_bundle)

    check_python(manifest)
    with pytest.raises(PackageError, match=r"requires Python"):
        check_python(manifest, (3, 99, 0))


def test_packing_again_elsewhere_gives_the_same_bytes_and_leaves_the_sources_clean(
    hello_bundle: Path, tmp_path: Path
) -> None:
    # Given a copy of the hello project somewhere else
    project = tmp_path / "hello"
    shutil.copytree(HELLO_PROJECT, project, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))

    again = pack_project(project, tmp_path / "out")

    # Then the bundle is byte for byte the same, and setuptools left nothing in the project
    assert sha256_file(again) == sha256_file(hello_bundle)
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*")) == [
        "pyproject.toml", "src", "src/hello", "src/hello/__init__.py", "src/hello/jobs.py",
    ]  # fmt: skip


def test_a_directory_without_pyproject_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"has no pyproject.toml"):
        pack_project(tmp_path, tmp_path / "out")


def _project(root: Path, *, dependencies: str = '["runly"]', jobs: str = "", module: str = "") -> Path:
    """A small job project named demo: src/demo/jobs.py holds ``module``."""
    (root / "src" / "demo").mkdir(parents=True)
    (root / "src" / "demo" / "__init__.py").write_text("")
    (root / "src" / "demo" / "jobs.py").write_text(module)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "demo"\nversion = "0.1"\ndependencies = {dependencies}\n{jobs}'
    )
    return root


JOBS = '[project.entry-points."runly.jobs"]\ndemo = "demo.jobs:Demo"\n'


def test_a_project_that_declares_no_jobs_is_refused(tmp_path: Path) -> None:
    project = _project(tmp_path / "nojobs")

    with pytest.raises(PackageError, match=r'declares no jobs(?s:.*)\[project\.entry-points\."runly\.jobs"\]'):
        pack_project(project, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_a_project_that_does_not_depend_on_runly_is_refused(tmp_path: Path) -> None:
    project = _project(tmp_path / "norunly", dependencies="[]", jobs=JOBS)

    with pytest.raises(PackageError, match='does not depend on runly: add "runly"'):
        pack_project(project, tmp_path / "out")


def test_a_job_module_that_fails_to_import_is_reported(tmp_path: Path) -> None:
    project = _project(tmp_path / "broken", jobs=JOBS, module="raise RuntimeError('boom at import')\n")

    with pytest.raises(PackageError, match=r"(?s)describing the jobs failed.*boom at import"):
        pack_project(project, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_a_project_that_does_not_build_reports_the_build_output(tmp_path: Path) -> None:
    project = tmp_path / "broken"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "broken"\nversion = "not a version"\n')

    with pytest.raises(PackageError, match=r"(?s)building a wheel of .*broken failed.*version"):
        pack_project(project, tmp_path / "out")


def test_runly_must_be_installed_from_its_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert find_runly_source() == REPO / "runly"

    monkeypatch.setattr(runly, "__file__", str(tmp_path / "site-packages" / "runly" / "__init__.py"))

    with pytest.raises(PackageError, match=r"not from its source tree"):
        find_runly_source()
