"""Two jobs written as functions.

``primes`` is one action (``@runly.job``): it counts the primes below ``limit`` segment by segment (a sieve per
segment), reports its progress, checkpoints the count after each segment and, resumed, starts at the segment after
the last checkpoint; a cancel stops it between segments.

``word-counts`` runs over items (``@runly.item_job``): each item is a text file under ``directory`` (a sample is
made when there is none); each file's counts are written beside the others as ``<output_dir>/<file>.json`` the
moment they are known (safe to repeat, so a resumed attempt loses nothing), files that are empty or not UTF-8 fail
by category, and ``finalize`` merges the counts of every attempt into the output.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field

import runly
from runly import Disposition, ItemConfig, ItemFailed

# ---------------------------------------------------------------- primes: one action


class PrimesConfig(BaseModel):
    limit: int = Field(default=5_000_000, ge=2, le=10**10, description="count the primes below this")
    segment: int = Field(default=250_000, ge=1_000, le=10**8, description="numbers sieved between checkpoints")


@runly.job(checkpoint_interval=1.0)
def primes(config: PrimesConfig, job: runly.Job[PrimesConfig]) -> dict[str, int]:
    """The number of primes below ``limit``."""
    segments = math.ceil(config.limit / config.segment)
    state = job.resumed_state or {"segment": 0, "count": 0}
    if state["segment"]:
        job.log.info("attempt %d resumes at segment %d of %d", job.context.attempt, state["segment"] + 1, segments)
    small = _sieve(math.isqrt(config.limit) + 1)
    base = [n for n, prime in enumerate(small) if prime]
    for index in range(state["segment"], segments):
        job.cancellation.raise_if_cancelled()  # between segments: what is checkpointed is never redone
        low, high = index * config.segment, min((index + 1) * config.segment, config.limit)
        state = {"segment": index + 1, "count": state["count"] + _count_in(low, high, base)}
        job.checkpoint(state, wait=False)  # goes out with the next periodic checkpoint (every second)
        job.report_progress(index + 1, segments, f"{state['count']:,} primes below {high:,}")
    return {"limit": config.limit, "primes": state["count"], "segments": segments}


def _sieve(size: int) -> bytearray:
    flags = bytearray([1]) * size
    flags[: min(size, 2)] = bytes(min(size, 2))
    for n in range(2, math.isqrt(size - 1) + 1 if size > 1 else 0):
        if flags[n]:
            flags[n * n :: n] = bytes(len(range(n * n, size, n)))
    return flags


def _count_in(low: int, high: int, base: list[int]) -> int:
    """Primes in [low, high), crossing out multiples of the primes up to sqrt(high)."""
    flags = bytearray([1]) * (high - low)
    for n in range(low, min(high, 2)):
        flags[n - low] = 0
    for p in base:
        if p * p >= high:
            break
        start = max(p * p, (low + p - 1) // p * p)
        flags[start - low :: p] = bytes(len(range(start, high, p)))
    return sum(flags)


# ---------------------------------------------------------------- word-counts: over items

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
SAMPLE_WORDS = "the quick brown fox jumps over the lazy dog and the dog sleeps while the fox runs".split()


class WordCountsConfig(ItemConfig):
    directory: str | None = Field(default=None, description="the *.txt files to count; a generated sample if absent")
    output_dir: str | None = Field(
        default=None, description="where each file's counts go [default: <directory>/.counts]"
    )
    top: int = Field(default=10, ge=1, le=1000, description="the most frequent words in the output")
    sample_files: int = Field(default=50, ge=1, le=100_000, description="files in the generated sample")


def _root(config: WordCountsConfig, job: runly.ItemJob[WordCountsConfig, str]) -> Path:
    if config.directory is not None:
        return Path(config.directory).resolve()
    # One directory per run (not per attempt): a resumed attempt on this node finds it again.
    return Path(tempfile.gettempdir()) / f"runly-tally-{job.context.run_id}"


def _out(config: WordCountsConfig, root: Path) -> Path:
    return Path(config.output_dir) if config.output_dir else root / ".counts"


def text_files(config: WordCountsConfig, job: runly.ItemJob[WordCountsConfig, str]) -> list[str]:
    """The files, sorted: the same order on every attempt, so a resumed one skips what is done."""
    root = _root(config, job)
    if config.directory is None:
        _make_sample(root, config.sample_files)
    elif not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    _out(config, root).mkdir(parents=True, exist_ok=True)
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*.txt") if path.is_file())


def merge(
    config: WordCountsConfig, disposition: Disposition, job: runly.ItemJob[WordCountsConfig, str]
) -> dict[str, object] | None:
    """The counts of every file done, whichever attempt counted it; the sample is removed once done."""
    root = _root(config, job)
    try:
        if disposition is not Disposition.SUCCEEDED:
            return None  # the default summary (counts by category)
        totals: Counter[str] = Counter()
        files = 0
        for sidecar in sorted(_out(config, root).rglob("*.json")):
            totals.update(json.loads(sidecar.read_text(encoding="utf-8")))
            files += 1
        return {
            **job.summary(),
            "files_counted": files,
            "words": sum(totals.values()),
            "top": [[word, count] for word, count in totals.most_common(config.top)],
        }
    finally:
        if config.directory is None and disposition is not Disposition.LOST:
            shutil.rmtree(root, ignore_errors=True)


@runly.item_job(items=text_files, finalize=merge, parallelism=4, max_failed_ratio=0.5)
def word_counts(config: WordCountsConfig, name: str, job: runly.ItemJob[WordCountsConfig, str]) -> int:
    """Counts the words of one file; an empty file fails with category Empty, one not in UTF-8 with
    UnicodeDecodeError (the exception's type)."""
    root = _root(config, job)
    text = (root / name).read_text(encoding="utf-8")
    counts = Counter(word.lower() for word in WORD.findall(text))
    if not counts:
        raise ItemFailed("no words", category="Empty")
    sidecar = _out(config, root) / f"{name}.json"
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    partial = sidecar.with_suffix(".partial")
    partial.write_text(json.dumps(counts, sort_keys=True), encoding="utf-8")
    partial.replace(sidecar)  # whole or not at all: a crash mid-write leaves no half file to merge
    return sum(counts.values())


def _make_sample(root: Path, count: int) -> None:
    """``count`` files of 20-60 words each (the same on every node); every 10th empty, every 25th not UTF-8."""
    for n in range(count):
        path = root / f"part-{n // 100:03d}" / f"file-{n:05d}.txt"
        if path.exists():
            continue  # made by an earlier attempt
        path.parent.mkdir(parents=True, exist_ok=True)
        if n % 25 == 24:
            data = b"caf\xe9 au lait"  # Latin-1, not UTF-8
        elif n % 10 == 9:
            data = b""
        else:
            words = [SAMPLE_WORDS[(n * 7 + k * 3) % len(SAMPLE_WORDS)] for k in range(20 + n % 41)]
            data = " ".join(words).encode()
        path.write_bytes(data)
