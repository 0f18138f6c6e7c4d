"""Jobs as decorated functions: ``@runly.job`` and ``@runly.item_job``, sugar over :class:`~runly.job.Job` and
:class:`~runly.items.ItemJob`.

::

    class ResizeConfig(BaseModel):
        width: int = 200

    @runly.job
    def resize(config: ResizeConfig) -> dict:          # sync or async def
        return {"width": config.width}

    def words(config: WordsConfig) -> list[str]:       # the items, in a stable order
        return config.words

    @runly.item_job(items=words, parallelism=4, item_retries=1)
    def hash_word(config: WordsConfig, word: str) -> str:
        return hashlib.sha256(word.encode()).hexdigest()

Each decorator returns a Job class (a subclass of ``Job`` or ``ItemJob``, named and placed as the function is), so
everything that takes a job class takes it unchanged: the entry point in ``pyproject.toml``
(``resize = "my_jobs.jobs:resize"``), ``runly pack``, the agent, ``runly run-local`` and ``runly.testing.run_job``.
The function itself stays at ``resize.function``.

The config is the first parameter, and its annotation (a pydantic model) is the job's config model: its schema and
defaults go into the manifest as a class job's do. A function with no parameter has an empty config. Each function
may take one more parameter, last: the running job object (annotate it ``runly.Job[ResizeConfig]``, or
``runly.ItemJob[WordsConfig, str]``), for its logger, cancellation, checkpoints, progress and counts::

    @runly.job
    def export(config: ExportConfig, job: runly.Job[ExportConfig]) -> dict:
        start = job.resumed_state or 0              # what the previous attempt checkpointed
        for page in range(start, config.pages):
            job.cancellation.raise_if_cancelled()   # a cancel stops it between pages
            write_page(page)
            job.checkpoint(page + 1)                # durable before it returns
        return {"pages": config.pages}

An ``async def`` one-action job runs on its own event loop; a cancel (SIGTERM from the agent) cancels its task,
so it stops at its next ``await`` (``asyncio.CancelledError`` runs its ``finally`` blocks) and the run ends
Cancelled. Item functions follow ItemJob's rules: ``process`` may be ``async def`` (then ``finalize`` may be too).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any, overload

from pydantic import BaseModel

from runly.items import ItemJob
from runly.job import Disposition, Job, JobCancelled

__all__ = ["FunctionItemJob", "FunctionJob", "item_job", "job"]

_CANCEL_POLL_SECONDS = 0.1  # how soon an async job's task is cancelled after SIGTERM


class NoConfig(BaseModel):
    """The config of a function job whose function takes none."""


def _positional(function: Callable[..., Any]) -> list[inspect.Parameter]:
    parameters = list(inspect.signature(function).parameters.values())
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    odd = [p.name for p in parameters if p.kind not in kinds and p.default is inspect.Parameter.empty]
    if odd:
        raise TypeError(f"{_name(function)}: parameters {odd} cannot be passed: use plain positional parameters")
    return [p for p in parameters if p.kind in kinds]


def _name(function: Callable[..., Any]) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"


def _config_model(function: Callable[..., Any]) -> type[BaseModel]:
    """The pydantic model the function's first parameter is annotated with (NoConfig when it takes none)."""
    parameters = _positional(function)
    if not parameters:
        return NoConfig
    first = parameters[0]
    try:
        hints = typing.get_type_hints(function)
    except Exception as exc:
        raise TypeError(f"{_name(function)}: its annotations cannot be resolved ({exc})") from exc
    model = hints.get(first.name)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(
            f"{_name(function)}: annotate its first parameter {first.name!r} with the job's config, a pydantic model "
            f"(got {model!r})"
        )
    return model


def _arity(function: Callable[..., Any], given: int, role: str) -> bool:
    """Whether ``function`` takes the running job after its ``given`` arguments (it may take exactly one more)."""
    count = len(_positional(function))
    if count not in (given, given + 1):
        raise TypeError(
            f"{_name(function)} ({role}) takes {count} positional parameters: it is called with {given} "
            f"(and may take the running job as one more)"
        )
    return count == given + 1


def _class_attributes(function: Callable[..., Any], model: type[BaseModel]) -> dict[str, Any]:
    """What makes the generated class look like the function to the entry point, logs and tracebacks."""
    return {
        "config_model": model,
        "function": staticmethod(function),
        "__module__": function.__module__,
        "__qualname__": function.__qualname__,
        "__doc__": function.__doc__,
    }


def _timing(checkpoint_interval: float | None, progress_interval: float | None) -> dict[str, float]:
    options = {"checkpoint_interval": checkpoint_interval, "progress_interval": progress_interval}
    return {name: float(value) for name, value in options.items() if value is not None}


def _values(variables: Iterable[str], secrets: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The names of the environment's variables and secrets the job gets (Job.variables, Job.secrets)."""
    return {"variables": tuple(variables), "secrets": tuple(secrets)}


# ---------------------------------------------------------------- one action


class FunctionJob(Job[Any]):
    """The Job class ``@runly.job`` makes: ``run`` calls the function."""

    function: Callable[..., Any]
    _takes_job: bool = False
    _takes_config: bool = True

    def _arguments(self) -> tuple[Any, ...]:
        config = (self.config,) if self._takes_config else ()
        return (*config, self) if self._takes_job else config

    def run(self) -> Any:
        if not inspect.iscoroutinefunction(self.function):
            return self.function(*self._arguments())
        import asyncio  # only async jobs pay for it (see runly.items)

        return asyncio.run(self._run_async())

    async def _run_async(self) -> Any:
        import asyncio

        task = asyncio.ensure_future(self.function(*self._arguments()))
        # The token is set from a signal-watching thread: look at it from the loop, and cancel the task once.
        while not task.done():
            await asyncio.wait({task}, timeout=_CANCEL_POLL_SECONDS)
            if self.cancellation.cancelled and not task.done():
                task.cancel()
                break
        try:
            return await task
        except asyncio.CancelledError:
            if self.cancellation.cancelled:
                raise JobCancelled(self.cancellation.reason or "cancelled") from None
            raise


@overload
def job(function: Callable[..., Any], /) -> type[FunctionJob]: ...


@overload
def job(
    *,
    checkpoint_interval: float | None = None,
    progress_interval: float | None = None,
    variables: Iterable[str] = (),
    secrets: Iterable[str] = (),
) -> Callable[[Callable[..., Any]], type[FunctionJob]]: ...


def job(
    function: Callable[..., Any] | None = None,
    /,
    *,
    checkpoint_interval: float | None = None,
    progress_interval: float | None = None,
    variables: Iterable[str] = (),
    secrets: Iterable[str] = (),
) -> type[FunctionJob] | Callable[[Callable[..., Any]], type[FunctionJob]]:
    """Make a one-action job of a function (``@runly.job`` or ``@runly.job(checkpoint_interval=5)``).

    ``function(config)`` or ``function(config, job)``, sync or ``async def``; what it returns (JSON) is the run's
    output. The intervals are those of :class:`~runly.job.Job` (seconds between checkpoints and progress reports
    sent to the agent, at most); ``variables`` and ``secrets`` name the environment's values the job gets as
    environment variables of its process (:attr:`~runly.job.Job.variables`).
    """

    def make(target: Callable[..., Any]) -> type[FunctionJob]:
        model = _config_model(target)
        given = 0 if model is NoConfig and not _positional(target) else 1
        attributes = {
            **_class_attributes(target, model),
            **_timing(checkpoint_interval, progress_interval),
            **_values(variables, secrets),
            "_takes_config": given == 1,
            "_takes_job": _arity(target, given, "the job") if given else False,
        }
        return type(target.__name__, (FunctionJob,), attributes)

    return make if function is None else make(function)


# ---------------------------------------------------------------- items


class FunctionItemJob(ItemJob[Any, Any]):
    """The ItemJob class ``@runly.item_job`` makes: items, process (the decorated function) and finalize call
    the functions given; their ``async`` flavours get methods of the same flavour, so ItemJob picks its driver."""

    function: Callable[..., Any]
    items_function: Callable[..., Iterable[Any]]
    finalize_function: Callable[..., Any] | None = None
    item_id_function: Callable[[Any], Any] | None = None
    _takes_job: dict[str, bool] = {}  # noqa: RUF012 - set per generated class

    def _with_job(self, role: str, *arguments: Any) -> tuple[Any, ...]:
        return (*arguments, self) if self._takes_job[role] else arguments

    def items(self) -> Iterable[Any]:
        return self.items_function(*self._with_job("items", self.config))

    def item_id(self, item: Any) -> str:
        if self.item_id_function is None:
            return super().item_id(item)
        return str(self.item_id_function(item))


def _process_method(function: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(function):

        async def process_async(self: FunctionItemJob, item: Any) -> Any:
            return await function(*self._with_job("process", self.config, item))

        return process_async

    def process(self: FunctionItemJob, item: Any) -> Any:
        return function(*self._with_job("process", self.config, item))

    return process


def _finalize_method(function: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(function):

        async def finalize_async(self: FunctionItemJob, disposition: Disposition) -> Any:
            return await function(*self._with_job("finalize", self.config, disposition))

        return finalize_async

    def finalize(self: FunctionItemJob, disposition: Disposition) -> Any:
        return function(*self._with_job("finalize", self.config, disposition))

    return finalize


def item_job(
    *,
    items: Callable[..., Iterable[Any]],
    finalize: Callable[..., Any] | None = None,
    item_id: Callable[[Any], Any] | None = None,
    parallelism: int = 1,
    max_failed_items: int | None = None,
    max_failed_ratio: float | None = None,
    item_retries: int = 0,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 60.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    checkpoint_interval: float | None = None,
    progress_interval: float | None = None,
    variables: Iterable[str] = (),
    secrets: Iterable[str] = (),
) -> Callable[[Callable[..., Any]], type[FunctionItemJob]]:
    """Make an item job of a function that processes one item: ``process(config, item)`` (or
    ``process(config, item, job)``), sync on threads or ``async def`` on one event loop.

    - ``items(config)`` (or ``items(config, job)``): the items, in the same order on every attempt (a resumed
      attempt skips those before the checkpoint's watermark);
    - ``finalize(config, disposition)`` (or ``(config, disposition, job)``): always runs, last; what it returns (if
      not None) is the output instead of the summary (``job.summary()``: counts by category);
    - ``item_id(item)``: a stable id (default: the item's ``id`` attribute, its ``"id"`` key, else ``str(item)``).

    The other options are ItemJob's class attributes (the job's defaults; a config field of the same name, as
    :class:`~runly.items.ItemConfig` has, overrides one for a run).
    """

    def make(process: Callable[..., Any]) -> type[FunctionItemJob]:
        model = _config_model(process)
        if model is NoConfig:
            raise TypeError(f"{_name(process)}: an item job's function takes (config, item): annotate config")
        for plain in (items, item_id):
            if plain is not None and (inspect.iscoroutinefunction(plain) or inspect.isasyncgenfunction(plain)):
                raise TypeError(f"{_name(plain)} must be a plain function: the items are read in order, not awaited")
        if finalize is not None and inspect.iscoroutinefunction(finalize) and not inspect.iscoroutinefunction(process):
            raise TypeError(f"{_name(finalize)} is async but {_name(process)} is not: make both async, or neither")
        takes_job = {
            "process": _arity(process, 2, "process"),
            "items": _arity(items, 1, "items"),
            "finalize": _arity(finalize, 2, "finalize") if finalize is not None else False,
        }
        attributes: dict[str, Any] = {
            **_class_attributes(process, model),
            **_timing(checkpoint_interval, progress_interval),
            **_values(variables, secrets),
            "items_function": staticmethod(items),
            "item_id_function": staticmethod(item_id) if item_id is not None else None,
            "finalize_function": staticmethod(finalize) if finalize is not None else None,
            "_takes_job": takes_job,
            "process": _process_method(process),
            "parallelism": parallelism,
            "max_failed_items": max_failed_items,
            "max_failed_ratio": max_failed_ratio,
            "item_retries": item_retries,
            "retry_backoff": retry_backoff,
            "retry_backoff_max": retry_backoff_max,
            "retry_on": tuple(retry_on),
        }
        if finalize is not None:
            attributes["finalize"] = _finalize_method(finalize)
        return type(process.__name__, (FunctionItemJob,), attributes)

    return make
