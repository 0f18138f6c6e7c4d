"""Function jobs (``@runly.job``, ``@runly.item_job``): the same config schemas, checkpoints, resume, cancellation
and runly.testing support as class jobs, in-process and in a real job process (``python -m runly.runner run``)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel, Field

import runly
from runly import Disposition, ItemConfig, ItemFailed
from runly.job import Job, JobCancelled
from runly.runner import EXIT_CANCELLED, EXIT_OK, describe_jobs, load_job_class
from runly.testing import run_job
from runly.wire import RunSpec
from runly_cli.run_local import LocalRun, Project
from tests.unit.test_sdk_host import REPO, _wait_for


class ResizeConfig(BaseModel):
    width: int = Field(default=200, ge=1, description="pixels")
    name: str = "a.png"


@runly.job
def resize(config: ResizeConfig) -> dict[str, Any]:
    """Pretends to resize an image."""
    return {"resized": config.name, "width": config.width}


class PagesConfig(BaseModel):
    pages: int = 10
    fail_at: int | None = None
    delay: float = 0.0


@runly.job(checkpoint_interval=0.1)
def export(config: PagesConfig, job: runly.Job[PagesConfig]) -> dict[str, Any]:
    start = job.resumed_state or 0
    done = []
    for page in range(start, config.pages):
        job.cancellation.raise_if_cancelled()
        if page == config.fail_at:
            raise RuntimeError(f"page {page} failed")
        time.sleep(config.delay)
        done.append(page)
        job.checkpoint(page + 1)
    return {"started_at": start, "pages": done}


@runly.job
async def fetch(config: PagesConfig, job: runly.Job[PagesConfig]) -> dict[str, Any]:
    fetched = []
    job.log.info("fetching %d pages", config.pages)
    try:
        for page in range(config.pages):
            await asyncio.sleep(config.delay)
            fetched.append(page)
    finally:
        job.log.info("fetch stopped after %d pages", len(fetched))
        job.checkpoint(len(fetched), wait=False)
    return {"pages": len(fetched)}


@runly.job
def cleanup() -> str:
    return "clean"


class WordsConfig(ItemConfig):
    words: list[str] = Field(default=["alpha", "beta", "", "gamma"])


def words(config: WordsConfig) -> list[str]:
    return config.words


def report(config: WordsConfig, disposition: Disposition, job: runly.ItemJob[WordsConfig, str]) -> dict[str, Any]:
    return {**job.summary(), "disposition": disposition.value}


@runly.item_job(items=words, finalize=report, parallelism=2, item_retries=1, retry_backoff=0.0)
def hash_word(config: WordsConfig, word: str) -> int:
    if not word:
        raise ItemFailed("an empty word", category="Empty")
    return len(word)


class NumbersConfig(ItemConfig):
    count: int = 20
    delay: float = 0.0


def numbers(config: NumbersConfig) -> range:
    return range(config.count)


async def summed(config: NumbersConfig, disposition: Disposition) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"disposition": disposition.value}


@runly.item_job(items=numbers, finalize=summed, parallelism=4, item_id=lambda n: f"n{n}", checkpoint_interval=0.1)
async def square(config: NumbersConfig, number: int) -> int:
    await asyncio.sleep(config.delay)
    return number * number


# ---------------------------------------------------------------- what the decorators make


def test_a_function_job_is_a_job_class_with_its_config_schema() -> None:
    assert isinstance(resize, type) and issubclass(resize, Job)
    assert resize.__name__ == "resize" and resize.__module__ == __name__ and resize.__doc__
    assert resize.config_schema() == ResizeConfig.model_json_schema()
    assert resize.default_config() == {"width": 200, "name": "a.png"}
    assert resize.function(ResizeConfig(width=3)) == {"resized": "a.png", "width": 3}  # the function, as written
    assert issubclass(hash_word, runly.ItemJob) and hash_word.config_schema() == WordsConfig.model_json_schema()


def test_the_host_loads_and_describes_function_jobs_by_entry_point() -> None:
    assert load_job_class(f"{__name__}:resize") is resize
    specs = describe_jobs({"resize": f"{__name__}:resize", "words": f"{__name__}:hash_word"})
    assert [(s.name, s.config_schema) for s in specs] == [
        ("resize", ResizeConfig.model_json_schema()),
        ("words", WordsConfig.model_json_schema()),
    ]


@runly.job(variables=["REGION"], secrets=["API_TOKEN"])
def uses_values(config: ResizeConfig) -> dict[str, str]:
    return {}


@runly.item_job(items=lambda config: config.words, secrets=("DB_URL",))
def uses_a_secret(config: WordsConfig, word: str) -> None:
    pass


def test_function_jobs_declare_variables_and_secrets_into_their_manifest_entry() -> None:
    specs = describe_jobs({"a": f"{__name__}:uses_values", "b": f"{__name__}:uses_a_secret", "c": f"{__name__}:resize"})
    assert [(s.name, s.variables, s.secrets) for s in specs] == [
        ("a", ["REGION"], ["API_TOKEN"]),
        ("b", [], ["DB_URL"]),
        ("c", [], []),
    ]


def test_runly_job_is_the_decorator_and_runly_job_the_module_still_imports() -> None:
    import sys

    from runly.job import Job as JobClass

    assert runly.job is runly.function_jobs.job
    assert sys.modules["runly.job"].Job is JobClass


# ---------------------------------------------------------------- one action


def test_a_function_job_runs_with_its_config_and_refuses_a_bad_one() -> None:
    run = run_job(resize, {"width": 64})
    assert run.succeeded and run.output == {"resized": "a.png", "width": 64}
    with pytest.raises(ValueError, match="width"):
        run_job(resize, {"width": 0})
    assert run_job(cleanup).output == "clean"


def test_a_function_job_checkpoints_and_resumes_where_it_stopped() -> None:
    # Given an export that fails at page 4, having checkpointed after each page
    failed = run_job(export, {"pages": 8, "fail_at": 4})
    assert failed.outcome == "failed" and "page 4 failed" in str(failed.error)
    assert failed.job_state == 4

    # When the next attempt runs from its checkpoint (the failure gone)
    resumed = run_job(export, {"pages": 8}, resume_from=failed.last_checkpoint, attempt=2)

    # Then it starts at page 4 and does only the rest
    assert resumed.succeeded and resumed.output == {"started_at": 4, "pages": [4, 5, 6, 7]}


def test_a_sync_function_job_honours_a_cancel() -> None:
    job = export(export.parse_config({"pages": 1000, "delay": 0.01}))
    threading.Timer(0.2, job.cancellation.cancel).start()
    with pytest.raises(JobCancelled):
        job.execute()


def test_an_async_function_job_is_cancelled_at_its_next_await() -> None:
    # Given an async job with 100 pages of 50 ms
    job = fetch(fetch.parse_config({"pages": 100, "delay": 0.05}))
    threading.Timer(0.3, job.cancellation.cancel, args=("cancelled (SIGTERM)",)).start()
    started = time.monotonic()

    # When the run is cancelled after 0.3 s, the job's task is cancelled: it raises JobCancelled soon after,
    # its finally block having run (it kept a state of the pages done)
    with pytest.raises(JobCancelled, match="SIGTERM"):
        job.execute()
    assert time.monotonic() - started < 1.5
    assert 2 <= job._job_state < 100


def test_an_async_function_job_returns_its_output() -> None:
    run = run_job(fetch, {"pages": 3})
    assert run.succeeded and run.output == {"pages": 3}


# ---------------------------------------------------------------- items


def test_an_item_function_job_counts_results_by_category_and_finalizes() -> None:
    run = run_job(hash_word, {"words": ["a", "", "bb", ""]})
    assert run.succeeded, run.error
    assert run.counts.succeeded == 2 and run.counts.failed_by_category == {"Empty": 2}
    assert run.output["disposition"] == "succeeded" and run.output["failed"] == 2
    assert sorted(r.value for r in run.results if r.ok) == [1, 2]


def test_config_fields_override_the_decorators_defaults() -> None:
    run = run_job(hash_word, {"words": ["a", "", ""], "max_failed_items": 1})
    assert run.outcome == "failed" and type(run.error).__name__ == "FailureThresholdExceeded"


def test_an_item_function_job_resumes_after_a_crash_without_repeating_items() -> None:
    config = {"count": 30, "parallelism": 1}
    crashed = run_job(square, config, crash_after=12)
    assert crashed.outcome == "crashed"
    assert crashed.last_checkpoint is not None and crashed.last_checkpoint.watermark == 12
    assert crashed.last_checkpoint.last_item_id == "n11"  # the item_id function

    resumed = crashed.resume()  # raises if an item before the watermark is processed again

    assert resumed.succeeded and resumed.output == {"disposition": "succeeded"}
    assert resumed.processed_ids == [f"n{n}" for n in range(12, 30)]
    assert resumed.counts.succeeded == 30


def test_an_async_item_function_job_is_cancelled_after_n_items() -> None:
    run = run_job(square, {"count": 200, "parallelism": 2}, cancel_after=10)
    assert run.outcome == "cancelled"
    assert 10 <= run.counts.done < 200


# ---------------------------------------------------------------- mistakes, said at once


def test_mistakes_in_the_functions_are_reported_when_decorating() -> None:
    def untyped(config):  # type: ignore[no-untyped-def]
        return 1

    with pytest.raises(TypeError, match="annotate its first parameter 'config'"):
        runly.job(untyped)

    def three(config: ResizeConfig, job: Any, extra: int) -> None:
        pass

    with pytest.raises(TypeError, match="takes 3 positional parameters"):
        runly.job(three)

    async def async_finalize(config: WordsConfig, disposition: Disposition) -> None:
        pass

    def process(config: WordsConfig, word: str) -> None:
        pass

    with pytest.raises(TypeError, match="is async but"):
        runly.item_job(items=words, finalize=async_finalize)(process)

    async def awaited_items(config: WordsConfig) -> list[str]:
        return []

    with pytest.raises(TypeError, match="must be a plain function"):
        runly.item_job(items=awaited_items)(process)  # type: ignore[arg-type]  # deliberately async: refused

    def no_items() -> list[str]:
        return []

    with pytest.raises(TypeError, match=r"\(items\) takes 0 positional parameters"):
        runly.item_job(items=no_items)(process)


# ---------------------------------------------------------------- in a real job process


def _start(config: dict[str, object], *, job: str) -> LocalRun:
    """``python -m runly.runner run`` of one of this module's jobs, runly_cli.run_local playing the agent."""
    spec = RunSpec(
        run_id="r1", attempt=1, package="tests", version="1", job=job, entry_point=f"{__name__}:{job}", config=config
    )
    lines: list[str] = []
    run = LocalRun(
        spec=spec,
        cwd=REPO,
        env=Project(root=REPO, name="tests", version="1", jobs={}).env() | {"PYTHONPATH": str(REPO)},
        on_output=lines.append,
        on_checkpoint=lambda taken: None,
    )
    run.lines = lines  # type: ignore[attr-defined]
    return run.start()


def test_a_function_item_job_runs_in_a_job_process_and_sigterm_cancels_it() -> None:
    run = _start({"count": 5}, job="square")
    assert run.wait(timeout=30) == EXIT_OK
    assert run.result is not None and run.result.output == {"disposition": "succeeded"}

    slow = _start({"count": 100_000, "delay": 0.01, "parallelism": 2}, job="square")
    _wait_for(lambda: slow.checkpoints)
    slow.cancel()
    assert slow.wait(timeout=10) == EXIT_CANCELLED
    assert slow.error is not None and slow.error.type == "JobCancelled"


def test_an_async_function_job_in_a_job_process_stops_on_sigterm() -> None:
    run = _start({"pages": 10_000, "delay": 0.05}, job="fetch")
    _wait_for(lambda: any("fetching" in line for line in run.lines), timeout=30)  # type: ignore[attr-defined]
    started = time.monotonic()
    run.cancel()
    assert run.wait(timeout=10) == EXIT_CANCELLED
    assert time.monotonic() - started < 3
    assert run.error is not None and run.error.type == "JobCancelled"
    assert any("fetch stopped after" in line for line in run.lines)  # type: ignore[attr-defined]
