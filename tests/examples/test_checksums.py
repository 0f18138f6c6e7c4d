from __future__ import annotations

import hashlib
from pathlib import Path

from checksums.jobs import Checksums

from runly.testing import run_job


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha", "sub/b.txt": b"beta" * 1000, "sub/deeper/c.bin": bytes(range(256)), "big.bin": b"x" * 3000,
    }  # fmt: skip
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "dangling").symlink_to(root / "missing")
    return files


def test_every_file_gets_its_sha256_and_failures_have_categories(tmp_path: Path) -> None:
    # Given a directory with three ordinary files, one too large and a dangling symlink
    files = _tree(tmp_path)

    # When the job checksums it, 1 KB being the largest file allowed
    run = run_job(Checksums, {"directory": str(tmp_path), "max_file_kb": 1, "max_failed_ratio": 0.8})

    # Then it succeeds, each file's digest is right, and the failures are counted by category
    assert run.succeeded, run.error
    assert run.counts.succeeded == 2  # b.txt is 4000 bytes: too large as well
    assert run.counts.failed_by_category == {"TooLarge": 2, "FileNotFoundError": 1}
    sums = (tmp_path / ".checksums" / "SHA256SUMS").read_text().splitlines()
    assert sums == [
        f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data in sorted(files.items()) if len(data) <= 1024
    ]
    assert run.output["sha256sums"] == str(tmp_path / ".checksums" / "SHA256SUMS")
    assert {r.item_id: r.category for r in run.failures} == {
        "big.bin": "TooLarge", "sub/b.txt": "TooLarge", "dangling": "FileNotFoundError",
    }  # fmt: skip


def test_too_many_failures_fail_the_run(tmp_path: Path) -> None:
    _tree(tmp_path)

    run = run_job(Checksums, {"directory": str(tmp_path), "max_file_kb": 1, "max_failed_items": 1})

    assert run.outcome == "failed"
    assert type(run.error).__name__ == "FailureThresholdExceeded"


def test_the_generated_sample_is_checksummed_in_parallel_and_cleaned_up() -> None:
    run = run_job(Checksums, {"count": 120, "file_kb": 4, "max_file_kb": 8, "parallelism": 4}, run_id="sample-1")

    assert run.succeeded, run.error
    assert run.output["total"] == 120
    # every 37th file is too large, every 50th a dangling symlink
    assert run.counts.failed_by_category == {"TooLarge": 3, "FileNotFoundError": 2}
    assert run.output["bytes"] == 115 * 4 * 1024
    assert not (Path(run.job.root)).exists()  # type: ignore[attr-defined]


def test_a_resumed_run_gathers_the_digests_of_every_attempt() -> None:
    config = {"count": 80, "file_kb": 1, "parallelism": 3}
    whole = run_job(Checksums, config, run_id="whole")

    crashed = run_job(Checksums, config, run_id="resumed", crash_after=30)
    assert crashed.outcome == "crashed"
    resumed = crashed.resume(run_id="resumed")

    assert resumed.succeeded
    checkpoint = crashed.last_checkpoint
    assert checkpoint is not None and checkpoint.watermark is not None
    assert resumed.output["resumed_at"] == checkpoint.watermark > 0
    assert resumed.output["sha256sums_digest"] == whole.output["sha256sums_digest"]
    assert resumed.output["succeeded"] == whole.output["succeeded"]
