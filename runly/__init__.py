"""runly: out-of-process background jobs on AWS.

The job SDK: :class:`Job` (one action) and :class:`ItemJob` (items processed one by one, in
parallel if asked, with results by category, automatic checkpoints and resume). ``runly.testing``
runs a job in-process for its tests.
"""

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
]
__version__ = "0.1.0"
