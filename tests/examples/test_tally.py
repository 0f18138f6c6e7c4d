"""The function-form example (examples/tally), tested as its author would, with runly.testing."""

from __future__ import annotations

from pathlib import Path

from tally.jobs import primes, word_counts

from runly.job import split_state
from runly.testing import run_job


def _brute_force(limit: int) -> int:
    return sum(1 for n in range(2, limit) if all(n % d for d in range(2, int(n**0.5) + 1)))


def test_primes_counts_the_primes_below_the_limit_across_segments() -> None:
    for limit, segment in [(2, 1000), (1000, 1000), (12_345, 1000), (30_011, 4096)]:
        run = run_job(primes, {"limit": limit, "segment": segment})
        assert run.succeeded, run.error
        assert run.output["primes"] == _brute_force(limit), limit
    assert run_job(primes, {"limit": 1_000_000}).output["primes"] == 78_498


def test_primes_resumes_after_its_last_checkpoint() -> None:
    # Given a whole run, and the checkpoint it took after 4 of its 10 segments
    config = {"limit": 100_000, "segment": 10_000}
    whole = run_job(primes, config)
    fourth = whole.checkpoints[3]

    # When an attempt resumes from that checkpoint
    resumed = run_job(primes, config, resume_from=fourth, attempt=2)

    # Then it sieves only segments 5 to 10 and comes to the same count
    assert resumed.succeeded and resumed.output == whole.output == {"limit": 100_000, "primes": 9592, "segments": 10}
    assert [split_state(c.state)[0]["segment"] for c in resumed.checkpoints] == list(range(5, 11))


def test_primes_reports_its_progress_in_segments() -> None:
    run = run_job(primes, {"limit": 50_000, "segment": 10_000})
    last = run.progress[-1]
    assert (last.succeeded, last.total, last.message) == (5, 5, "5,133 primes below 50,000")


def _texts(root: Path) -> None:
    files = {"a.txt": "The fox and the dog.", "sub/b.txt": "the DOG sleeps", "empty.txt": "", "notes.md": "skipped"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "latin1.txt").write_bytes(b"caf\xe9")


def test_word_counts_merges_every_file_and_fails_by_category(tmp_path: Path) -> None:
    _texts(tmp_path)

    run = run_job(word_counts, {"directory": str(tmp_path), "top": 2})

    assert run.succeeded, run.error
    assert run.counts.succeeded == 2
    assert run.counts.failed_by_category == {"Empty": 1, "UnicodeDecodeError": 1}
    assert run.output["files_counted"] == 2 and run.output["words"] == 8
    assert run.output["top"] == [["the", 3], ["dog", 2]]


def test_word_counts_resumed_after_a_crash_gives_what_a_whole_run_gives() -> None:
    config = {"sample_files": 120, "parallelism": 3}
    whole = run_job(word_counts, config, run_id="whole")
    assert whole.succeeded and whole.counts.failed_by_category == {"Empty": 10, "UnicodeDecodeError": 4}

    crashed = run_job(word_counts, config, run_id="resumed", crash_after=40)
    assert crashed.outcome == "crashed"
    resumed = crashed.resume(run_id="resumed")

    assert resumed.succeeded
    checkpoint = crashed.last_checkpoint
    assert checkpoint is not None and checkpoint.watermark is not None
    assert resumed.output["resumed_at"] == checkpoint.watermark > 0
    assert {k: resumed.output[k] for k in ("files_counted", "words", "top", "succeeded")} == {
        k: whole.output[k] for k in ("files_counted", "words", "top", "succeeded")
    }
    assert not (Path("/tmp") / "runly-tally-resumed").exists()  # the sample was the run's scratch
