"""runly: out-of-process background jobs on AWS."""

from runly.job import Job, JobContext

__all__ = ["Job", "JobContext"]
__version__ = "0.1.0"
