"""runly: out-of-process background jobs on AWS.

The job SDK: :class:`Job` (one action) and :class:`ItemJob` (items processed one by one, in
parallel if asked, with results by category, automatic checkpoints and resume), or the same as
decorated functions (``@runly.job``, ``@runly.item_job``: ``runly.function_jobs``). ``runly.testing``
runs a job in-process for its tests.
"""

from __future__ import annotations

import importlib
import sys

# Not typing.TYPE_CHECKING: importing typing would be most of what `import runly` costs (type checkers
# know this spelling too).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from runly.function_jobs import item_job, job
    from runly.items import (
        FailureThresholdExceeded,
        ItemConfig,
        ItemCounts,
        ItemFailed,
        ItemJob,
        ItemResult,
        ResumeMismatch,
    )
    from runly.job import CancellationToken, CheckpointRefused, Disposition, Job, JobCancelled, JobContext

__all__ = [
    "CancellationToken",
    "CheckpointRefused",
    "Disposition",
    "FailureThresholdExceeded",
    "ItemConfig",
    "ItemCounts",
    "ItemFailed",
    "ItemJob",
    "ItemResult",
    "Job",
    "JobCancelled",
    "JobContext",
    "ResumeMismatch",
    "item_job",
    "job",
]
__version__ = "0.1.0"

# Each name is imported from its module on first use (PEP 562), not here: every job process
# imports this package, and a job that only needs Job should not pay for the item machinery
# (nor the CLI and the agent for either).
_HOMES = {
    "CancellationToken": "runly.job",
    "CheckpointRefused": "runly.job",
    "Disposition": "runly.job",
    "FailureThresholdExceeded": "runly.items",
    "ItemConfig": "runly.items",
    "ItemCounts": "runly.items",
    "ItemFailed": "runly.items",
    "ItemJob": "runly.items",
    "ItemResult": "runly.items",
    "Job": "runly.job",
    "JobCancelled": "runly.job",
    "JobContext": "runly.job",
    "ResumeMismatch": "runly.items",
    "item_job": "runly.function_jobs",
    "job": "runly.function_jobs",
}


class _Package(type(sys)):  # type: ignore[misc]  # types.ModuleType, without importing types
    """``runly.job`` is the decorator, though ``runly/job.py`` is a module too (the Job classes, imported as
    ``from runly.job import Job``): the import system sets a package's attribute to each submodule it loads, and
    this keeps that one name for the decorator (``sys.modules["runly.job"]`` is the module, as always)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "job" and isinstance(value, type(sys)):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

# Hidden from type checkers, which see the imports above: they would take any runly.<name> for
# valid if they saw a module __getattr__.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # the next lookup does not come here
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
