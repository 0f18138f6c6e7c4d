"""Every value a job produces has a byte limit (runly_core.resources): the SDK refuses it in the job's code, and the
agent's end of the channel (node_agent.channel) refuses it again when a job bypasses the SDK, holding at most
one line's limit of memory whatever the job writes."""

from __future__ import annotations

import json
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from node_agent.aws import bounded_error
from node_agent.channel import AgentChannel
from runly import ItemConfig, ItemJob, Job, limits, sizes
from runly.runner import EXIT_JOB_FAILED, Channel
from runly.testing import run_job
from runly.wire import AckMessage, Checkpoint, CheckpointMessage, Progress, RunSpec
from runly_cli.run_local import LocalRun, Project
from runly_core.contracts import AttemptView, FailureReason, RunState
from runly_core.records import RunRecord, iso, utcnow
from runly_core.run_objects import OUTPUT_INLINE_BYTES
from runly_core.run_store import run_item

REPO = Path(__file__).resolve().parents[2]
KB = 1024


# ---------------------------------------------------------------- jobs that produce too much, through the SDK


class SizeConfig(BaseModel):
    what: str  # output, nan, checkpoint, progress, error
    size: int = 0


class Producer(Job[SizeConfig]):
    def run(self) -> Any:
        what, size = self.config.what, self.config.size
        if what == "output":
            return {"blob": "x" * size}
        if what == "nan":
            return {"mean": float("nan")}
        if what == "checkpoint":
            self.checkpoint({"blob": "é" * (size // 2)})  # two bytes a character: the limit counts bytes
            return "checkpointed"
        if what == "progress":
            self.report_progress(1, 2, message="m" * size)
            return "reported"
        if what == "error":
            raise RuntimeError("e" * size)
        raise AssertionError(what)


class RawConfig(BaseModel):
    line: str = ""  # written as is to the channel, bypassing the SDK
    repeat: int = 1  # the middle of the line, repeated (a long line in small writes)
    middle: str = ""
    end: str = ""


class Hostile(Job[RawConfig]):
    """Writes to the channel pipe itself, as a job that ignores the SDK's limits can."""

    def run(self) -> Any:
        stream = self._channel._stream  # type: ignore[attr-defined]
        stream.write(self.config.line)
        for _ in range(self.config.repeat):
            stream.write(self.config.middle)
        stream.write(self.config.end)
        stream.flush()
        time.sleep(30)  # the agent stops it


# The longest id the API makes: a 31-character environment name (runly_core.resources.ENVIRONMENT_NAME).
LONGEST_RUN_ID = f"run_{'e' * 31}_20260101000000_0123456789ab"


def _local(job: str, config: dict[str, Any]) -> LocalRun:
    spec = RunSpec(
        run_id="r1", attempt=1, package="tests", version="1", job=job.lower(), entry_point=f"{__name__}:{job}",
        config=config,
    )  # fmt: skip
    env = Project(root=REPO, name="tests", version="1", jobs={}).env() | {"PYTHONPATH": str(REPO)}
    return LocalRun(spec=spec, cwd=REPO, env=env).start()


def _finished(run: LocalRun, timeout: float = 20) -> LocalRun:
    deadline = time.monotonic() + timeout
    while run.poll() is None and run.violation is None:
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    if run.poll() is None:
        run.kill()  # as the supervisor does on a violation
    run.wait(10)
    return run


def test_an_output_over_its_limit_fails_in_the_job_with_its_own_error() -> None:
    # Given a job whose output is over its 2 MiB limit
    run = _finished(_local("Producer", {"what": "output", "size": limits.MAX_OUTPUT_BYTES + 64 * KB}))
    # Then the job process sends no result but an OutputTooLarge error, which the agent maps to its reason
    assert run.exit_code == EXIT_JOB_FAILED and run.result is None
    assert run.error is not None and run.error.type == "OutputTooLarge"
    assert sizes.LIMIT_ERRORS[run.error.type] == FailureReason.OUTPUT_TOO_LARGE
    assert str(limits.MAX_OUTPUT_BYTES) in run.error.message


def test_nan_in_the_output_is_a_job_failure_saying_so_not_null() -> None:
    run = _finished(_local("Producer", {"what": "nan"}))
    assert run.result is None
    assert run.error is not None and run.error.type == "NotJson" and "NaN" in run.error.message


def test_a_checkpoint_over_its_limit_counted_in_bytes_raises_in_the_job() -> None:
    # 550,000 characters but 1,100,000 bytes: under the limit (1 MiB of state) in characters, over it in bytes
    run = run_job(Producer, {"what": "checkpoint", "size": 1_100_000})
    assert run.outcome == "failed" and isinstance(run.error, sizes.CheckpointTooLarge)
    assert run.checkpoints == []


def test_a_progress_message_over_its_limit_raises_where_it_is_reported() -> None:
    run = run_job(Producer, {"what": "progress", "size": 500 * KB})
    assert run.outcome == "failed" and isinstance(run.error, sizes.ProgressTooLarge)


def test_a_huge_error_is_sent_cut_to_its_limits_keeping_both_ends_of_its_traceback() -> None:
    run = _finished(_local("Producer", {"what": "error", "size": 5 * 1024 * KB}))
    assert run.error is not None and run.error.type == "RuntimeError"
    assert len(json.dumps(run.error.message).encode()) <= limits.MAX_ERROR_MESSAGE_BYTES
    assert run.error.message.startswith("eeee") and run.error.message.endswith("[truncated]")
    assert len(json.dumps(run.error.traceback).encode()) <= limits.MAX_ERROR_DETAIL_BYTES
    # Its start and its end: where it was raised, and the exception
    assert run.error.traceback.startswith("Traceback") and "in run" in run.error.traceback
    assert run.error.traceback.rstrip().endswith("eee") and "[truncated]" in run.error.traceback


class CategoriesConfig(ItemConfig):
    count: int = 1000


class ManyCategories(ItemJob[CategoriesConfig, int]):
    """Each item fails in a category of its own, with a long name: as a job whose categories are messages."""

    def items(self) -> range:
        return range(self.config.count)

    def process(self, item: int) -> None:
        from runly.items import ItemFailed

        raise ItemFailed("no", category=f"{item:05d} " + "c" * 500)


def test_failure_categories_are_bounded_in_number_and_length_and_still_add_up() -> None:
    run = run_job(ManyCategories, {"count": 1000})
    counts = run.counts.failed_by_category
    assert len(counts) == limits.MAX_CATEGORIES
    assert sum(counts.values()) == 1000 and counts[limits.OTHER_CATEGORY] == 1000 - (limits.MAX_CATEGORIES - 1)
    assert all(len(json.dumps(name).encode()) <= limits.MAX_CATEGORY_BYTES for name in counts)
    # The progress and the checkpoint that carry them fit their limits
    assert run.progress and all(sizes.progress_json(p) for p in run.progress)
    assert len(sizes.checkpoint_json(run.checkpoints[-1]).encode()) <= limits.MAX_CHECKPOINT_BYTES


def test_the_agent_refusing_a_checkpoint_for_its_size_raises_that_not_a_lost_lease() -> None:
    # Given a job process's channel whose agent answers a checkpoint with a size refusal
    read_acks, write_acks = os.pipe()
    ack = AckMessage(seq=1, ok=False, error="too big", reason=FailureReason.CHECKPOINT_TOO_LARGE.value)
    os.write(write_acks, (ack.model_dump_json() + "\n").encode())
    sent = _Sink()
    channel = Channel(sent, os.fdopen(read_acks, "r"))  # type: ignore[arg-type]
    # Then the job gets CheckpointTooLarge, which it can raise as such
    with pytest.raises(sizes.CheckpointTooLarge, match="too big"):
        channel.checkpoint(watermark=1, state={"a": 1})
    os.close(write_acks)


class _Sink:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------- the agent's end: a job that bypasses the SDK


@contextmanager
def agent_channel(on_checkpoint: Any = lambda message: None) -> Iterator[tuple[AgentChannel, int, Any]]:
    """An AgentChannel reading a pipe the test writes (the job's end), and the job's end of the ack pipe."""
    channel_read, channel_write = os.pipe()
    ack_read, ack_write = os.pipe()
    unreadable: list[str] = []
    channel = AgentChannel(channel_read, ack_write, on_checkpoint, on_unreadable=unreadable.append, name="test")
    channel.unreadable = unreadable  # type: ignore[attr-defined]
    acks = os.fdopen(ack_read, "r")
    try:
        yield channel, channel_write, acks
    finally:
        try:
            os.close(channel_write)
        except OSError:
            pass
        channel.close()
        acks.close()


def _send(fd: int, text: str) -> None:
    os.write(fd, text.encode())


def _checkpoint_handler(message: CheckpointMessage) -> str | None:
    # What a node does (node_agent.aws.write_checkpoint measures before it writes)
    sizes.checkpoint_json(
        Checkpoint(watermark=message.watermark, state=message.state, attempt=1, written_at=datetime.now(UTC))
    )
    return None


def test_a_150_mb_line_costs_the_agent_no_more_than_the_line_limit_and_fails_the_run_by_its_kind() -> None:
    chunk = b"x" * (1024 * KB)
    with agent_channel() as (channel, fd, _):
        tracemalloc.start()
        try:
            # When a job writes a single 150 MB result line, then a valid result
            os.write(fd, b'{"kind":"result","output":"')
            for _ in range(150):
                os.write(fd, chunk)
            os.write(fd, b'"}\n{"kind":"result","output":"late"}\n')
            os.close(fd)
            channel.close()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # Then the reader never held more than the line limit (and a read), not the line
    assert peak < limits.MAX_CHANNEL_MESSAGE_BYTES + 4 * 1024 * KB, peak
    assert channel.violation is not None and channel.violation.reason is FailureReason.OUTPUT_TOO_LARGE
    # And nothing the job sent after it counts
    assert channel.result is None


def test_an_oversized_checkpoint_line_is_answered_with_its_reason_and_fails_the_run() -> None:
    with agent_channel(_checkpoint_handler) as (channel, fd, acks):
        _send(fd, '{"kind":"checkpoint","seq":7,"state":"' + "s" * (1100 * KB) + '"}\n')
        ack = AckMessage.model_validate_json(acks.readline())
    assert ack.seq == 7 and not ack.ok and ack.reason == FailureReason.CHECKPOINT_TOO_LARGE.value
    assert channel.violation is not None and channel.violation.reason is FailureReason.CHECKPOINT_TOO_LARGE


def test_a_checkpoint_within_the_line_but_over_its_limit_in_bytes_is_refused_by_the_handler() -> None:
    with agent_channel(_checkpoint_handler) as (channel, fd, acks):
        # 530,000 characters of two bytes: 1,060,000 bytes, over MAX_CHECKPOINT_STATE_BYTES, in a line within the
        # channel's
        state = "é" * 530_000
        line = CheckpointMessage(seq=1, watermark=3, state=state).model_dump_json()
        assert len(line.encode()) <= limits.MAX_CHANNEL_MESSAGE_BYTES
        _send(fd, line + "\n")
        ack = AckMessage.model_validate_json(acks.readline())
    assert not ack.ok and ack.reason == FailureReason.CHECKPOINT_TOO_LARGE.value
    assert channel.violation is not None and channel.violation.reason is FailureReason.CHECKPOINT_TOO_LARGE


@pytest.mark.parametrize(
    ("line", "reason", "said"),
    [
        # a progress the heartbeat could not write (every heartbeat would fail)
        (
            '{"kind":"progress","progress":{"message":"' + "m" * (20 * KB) + '"}}',
            FailureReason.PROGRESS_TOO_LARGE,
            "16384",
        ),
        (
            '{"kind":"progress","progress":{"message":"' + "m" * (limits.MAX_CHANNEL_MESSAGE_BYTES + KB) + '"}}',
            FailureReason.PROGRESS_TOO_LARGE,
            "progress line",
        ),
        # a result within the line's limit but over the output's
        (
            '{"kind":"result","output":"' + "o" * (limits.MAX_OUTPUT_BYTES + KB) + '"}',
            FailureReason.OUTPUT_TOO_LARGE,
            str(limits.MAX_OUTPUT_BYTES),
        ),
        # NaN, which would be stored as null
        ('{"kind":"result","output":{"mean":NaN}}', FailureReason.USER_ERROR, "NaN or Infinity"),
        ('{"kind":"result","output":[Infinity]}', FailureReason.USER_ERROR, "NaN or Infinity"),
        # a lone surrogate, which is not UTF-8 (DynamoDB refuses it)
        ('{"kind":"result","output":"\\ud800"}', FailureReason.USER_ERROR, "lone surrogate"),
        # a line over the channel's limit that is no known message
        (
            '{"padding":"' + "p" * (limits.MAX_CHANNEL_MESSAGE_BYTES + KB) + '"}',
            FailureReason.MESSAGE_TOO_LARGE,
            "message line",
        ),
    ],
    ids=[
        "progress-20k",
        "progress-over-a-line",
        "output-over-2m",
        "nan",
        "infinity",
        "surrogate",
        "unknown-over-a-line",
    ],
)
def test_a_value_the_agent_cannot_store_is_a_violation_with_its_reason(
    line: str, reason: FailureReason, said: str
) -> None:
    with agent_channel() as (channel, fd, _):
        _send(fd, line + "\n")
        os.close(fd)
        channel.close()
    assert channel.violation is not None and channel.violation.reason is reason
    assert said in channel.violation.message
    assert channel.result is None and channel.latest_progress is None


def test_unreadable_lines_do_not_stop_the_reader() -> None:
    with agent_channel() as (channel, fd, _):
        _send(fd, "[" * 100_000 + "\n")  # deeper than json can parse
        _send(fd, '{"kind":"progress","progress":{"total":' + "9" * 5000 + "}}\n")  # over int's digit limit
        _send(fd, "not json\n")
        _send(fd, '{"kind":"result","output":{"ok":true}}\n')
        os.close(fd)
        channel.close()
    assert len(channel.unreadable) == 3  # type: ignore[attr-defined]
    assert channel.violation is None and channel.result is not None and channel.result.output == {"ok": True}


def test_a_hostile_job_process_is_failed_by_the_agent_not_by_its_own_sdk() -> None:
    # Given a real job process that writes a 500 KB progress line straight to its channel
    run = _local("Hostile", {"line": '{"kind":"progress","progress":{"message":"', "middle": "m" * KB,
                             "repeat": 500, "end": '"}}\n'})  # fmt: skip
    _finished(run)
    assert run.outcome == "failed"
    assert run.error is not None and run.error.type == FailureReason.PROGRESS_TOO_LARGE.value


# ---------------------------------------------------------------- the run item: what is stored fits


def _dynamodb_size(value: Any) -> int:
    """An attribute value's size as DynamoDB counts it (strings and names in UTF-8 bytes; numbers about one byte
    per two digits plus one; each list or map 3 bytes plus 1 per element)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int | float):
        return len(str(value)) // 2 + 2
    if isinstance(value, list):
        return 3 + sum(1 + _dynamodb_size(v) for v in value)
    if isinstance(value, dict):
        return 3 + sum(1 + len(k.encode()) + _dynamodb_size(v) for k, v in value.items())
    raise TypeError(type(value))


def _config_json_at_the_limit() -> str:
    """The config_json the API writes for the largest config it accepts, of two-byte characters (which an
    ASCII-escaping encoder would store as six)."""
    from functions.logic.runs import check_config_size, new_run
    from runly.wire import JobSpec
    from runly_core.contracts import MAX_CONFIG_BYTES, EnqueueRunRequest
    from runly_core.records import PackageRecord

    config = {"c": "é" * ((MAX_CONFIG_BYTES - 8) // 2)}
    check_config_size(config)  # accepted by the API
    job = JobSpec(name="j", entry_point="m:J", config_schema={})
    package = PackageRecord(name="p", version="1", sha256="0" * 64, size=1, key="k", jobs_json="[]", created_at="")
    request = EnqueueRunRequest(package="p", job="j", config=config)
    return new_run(request, package, job, now=utcnow()).required_config_json


def test_the_api_stores_a_config_as_it_measured_it() -> None:
    from runly_core.contracts import MAX_CONFIG_BYTES

    assert MAX_CONFIG_BYTES - 16 <= len(_config_json_at_the_limit().encode()) <= MAX_CONFIG_BYTES


def test_a_run_item_with_every_value_at_its_limit_stays_well_under_dynamodbs_item_limit() -> None:
    now = utcnow()
    long_error = "€" * (limits.MAX_ATTEMPT_ERROR_BYTES * 2)
    error = bounded_error(
        {"reason": "user_error", "message": "\x01€" * 10_000, "type": "T" * 1000, "traceback": '"€' * 50_000}
    )
    progress = Progress(
        total=10**15, succeeded=10**15, failed=10**15, message="€" * 341,
        failed_by_category={f"{i:02d}" + "€" * 41: 10**15 for i in range(limits.MAX_CATEGORIES)},
    )  # fmt: skip
    record = RunRecord(
        run_id=LONGEST_RUN_ID, state=RunState.FAILED, package="p" * 100, version="1" * 64, job="j" * 128,
        entry_point="e" * 256, environment="e" * 31, config_json=_config_json_at_the_limit(), timeout_seconds=604800,
        max_attempts=10, bundle_key="k" * 300, bundle_sha256="0" * 64, created_at=iso(now), started_at=iso(now),
        finished_at=iso(now), attempt=limits.MAX_RECORDED_ATTEMPTS, requeued_from=LONGEST_RUN_ID,
        retry_at=iso(now), schedule_id="s" * 64,
        attempts=[
            AttemptView(number=n, node_id="n" * 128, started_at=now, ended_at=now, outcome=RunState.QUEUED,
                        reason=FailureReason.CHECKPOINT_TOO_LARGE,
                        error=sizes.truncate_utf8(long_error, limits.MAX_ATTEMPT_ERROR_BYTES))
            for n in range(1, limits.MAX_RECORDED_ATTEMPTS + 1)
        ],
        output_json="€" * (OUTPUT_INLINE_BYTES // 3),  # the most an output keeps inline (beyond, in S3)
        error_json=sizes.stored_json(error),
        progress_json=sizes.progress_json(progress),
    )  # fmt: skip
    assert len(record.error_json.encode()) <= limits.MAX_ERROR_BYTES  # type: ignore[union-attr]
    item = run_item(record)
    size = sum(len(name.encode()) + _dynamodb_size(value) for name, value in item.items())
    print(f"worst-case run item: {size} bytes of {limits.DYNAMODB_MAX_ITEM_BYTES}")
    assert size <= 0.3 * limits.DYNAMODB_MAX_ITEM_BYTES, size
    # And every limit fits in one channel line, so a value within its limit always reaches the agent
    assert limits.MAX_CHANNEL_MESSAGE_BYTES > max(
        limits.MAX_OUTPUT_BYTES, limits.MAX_CHECKPOINT_BYTES, limits.MAX_ERROR_BYTES
    )


def test_stored_json_counts_bytes_not_characters() -> None:
    text = "€" * (limits.MAX_OUTPUT_BYTES // 3 + 1)  # fewer characters than the limit, more bytes
    assert len(text) < limits.MAX_OUTPUT_BYTES
    with pytest.raises(sizes.OutputTooLarge):
        sizes.output_json(text)
    assert sizes.output_json("€" * (limits.MAX_OUTPUT_BYTES // 3 - 2))


def test_truncation_keeps_whole_characters_and_drops_lone_surrogates() -> None:
    cut = sizes.truncate_json_string("€" * 100 + "\ud800", 50)
    assert len(json.dumps(cut, ensure_ascii=False).encode()) <= 50 and cut.endswith("[truncated]")
    assert sizes.truncate_utf8("a\ud800b", 10) == "a?b"
    assert sizes.truncate_json_string("ok", 10) == "ok"


def test_a_job_log_of_one_long_line_is_shipped_a_chunk_at_a_time(tmp_path: Path) -> None:
    from node_agent.logs import LogSpool

    # Given a job that printed one 40 MB line to its log (stdout goes to the spool file, not through the agent)
    spool = LogSpool.create(tmp_path / "run", "run_default_1", 1)
    with open(spool.log_path, "wb") as log:
        megabyte = b"x" * (1024 * KB)
        for _ in range(40):
            log.write(megabyte)
        log.write(b"\n")
    uploads: list[tuple[str, int]] = []
    tracemalloc.start()
    try:
        shipped = spool.ship(lambda key, data: uploads.append((key, len(data))))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then it goes in chunks of LOG_CHUNK_BYTES, and the agent held about one of them, not the line
    assert shipped == 40 * 1024 * KB + 1
    assert max(size for _, size in uploads) == limits.LOG_CHUNK_BYTES and len(uploads) == 41
    assert peak < 3 * limits.LOG_CHUNK_BYTES, peak


def test_bounded_lines_cut_only_lines_over_the_limit_wherever_the_reads_split_them() -> None:
    from node_agent.channel import READ_BYTES, bounded_lines

    limit = 100_000
    at_limit = b"a" * limit
    over = b"b" * (limit + 1)
    # Lines that straddle reads, one exactly at the limit, one just over, an unterminated last one
    data = b"first\n" + at_limit + b"\n" + over + b"\nsecond\n" + b"c" * (READ_BYTES - 3) + b"\nlast"
    read_fd, write_fd = os.pipe()

    def write() -> None:
        with os.fdopen(write_fd, "wb") as pipe:
            for start in range(0, len(data), 7_777):  # odd-sized writes: lines split anywhere
                pipe.write(data[start : start + 7_777])
                pipe.flush()

    writer = threading.Thread(target=write)
    writer.start()
    lines = list(bounded_lines(read_fd, limit))
    writer.join()
    os.close(read_fd)
    assert [(line if not cut else line[:3], cut) for line, cut in lines] == [
        (b"first", False), (at_limit, False), (b"bbb", True), (b"second", False),
        (b"c" * (READ_BYTES - 3), False), (b"last", False),
    ]  # fmt: skip
