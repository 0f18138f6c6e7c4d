"""The byte limits of what a job produces: its output, error, progress and checkpoints, and the channel's lines.

Job processes check them where a value is produced (runly.sizes), the agent again on receipt, the API where it
serves them: one constant each, here, in the SDK that all three install.
"""

from __future__ import annotations

import re

# Every value a job produces ends up in a DynamoDB item, and an item holds at most 400 KB (attribute names and
# values, in UTF-8 bytes); a write over it fails, and a run whose completing write fails is re-run. So each value
# has a byte limit, counted as it is stored: compact JSON in UTF-8 (runly.sizes.stored_json), never characters.
# The SDK checks each where the job produces it (a clear exception in the job's code) and the agent again on
# receipt (a job may bypass the SDK); a value over its limit ends the run with its own FailureReason, not
# retried. Each limit is one constant here: the checks (runly.sizes) and the documents (docs/jobs.md,
# docs/agent.md) name it, so raising one (when large values move out of the run item) changes it here only.
DYNAMODB_MAX_ITEM_BYTES = 400 * 1024
# What the run item holds at most, which the limits below add up to: the config's size only (the config, up to
# runly_core.contracts.MAX_CONFIG_BYTES, is its own CONFIG item) + output 4 KiB inline (beyond that, in S3) + error
# 21 + progress 16 + attempts 40 x 1.2 + the fixed attributes: about 90 KiB, far under the limit
# (tests/unit/test_sizes.py builds that item and counts it as DynamoDB does).
# The job's return value: inline in the run item (output_json) up to runly_core.run_objects.OUTPUT_INLINE_BYTES
# (4 KiB), beyond that an S3 object the run item names (output_ref), so the item's 400 KB no longer bounds it.
# GET /runs/{id} serves it whole (a Lambda answer takes at most 6 MB). Larger results belong in the job's own
# storage, the output naming them.
MAX_OUTPUT_BYTES = 2 * 1024 * 1024
# A failure's message, its detail (the traceback) and its exception type (error_json of the run item). An error
# over them is truncated, not refused: the run fails either way, and the start of a message says most.
MAX_ERROR_MESSAGE_BYTES = 4 * 1024
MAX_ERROR_DETAIL_BYTES = 16 * 1024
MAX_ERROR_TYPE_BYTES = 256
MAX_ERROR_BYTES = MAX_ERROR_MESSAGE_BYTES + MAX_ERROR_DETAIL_BYTES + MAX_ERROR_TYPE_BYTES + 512  # + reason, names
# Progress (progress_json, rewritten by every heartbeat): the job's message, and its failure categories, each name
# at most MAX_CATEGORY_BYTES and at most MAX_CATEGORIES of them (the SDK counts further categories under
# OTHER_CATEGORY: an item job whose categories are exception messages still runs, its counts still add up).
MAX_PROGRESS_BYTES = 16 * 1024
MAX_PROGRESS_MESSAGE_BYTES = 1024
MAX_CATEGORY_BYTES = 128
MAX_CATEGORIES = 64
OTHER_CATEGORY = "(other categories)"
# Attempts (the run item's attempts list): one entry per claim, each with an error line of at most
# MAX_ATTEMPT_ERROR_BYTES. A node's shutdown re-queues a run without counting against max_attempts (it is not the
# job's fault), so the list is capped apart: a run that reaches MAX_RECORDED_ATTEMPTS attempts fails as
# dead_letter (so many attempts without an outcome). Above the API's max_attempts (10) and the queue's receive
# count (runly_core.resources.QUEUE_MAX_RECEIVE_COUNT, 30).
MAX_RECORDED_ATTEMPTS = 40
MAX_ATTEMPT_ERROR_BYTES = 1024
# A checkpoint (its own item, checkpoint_json): the job's state blob, plus the SDK's envelope (watermark, the last
# item's id of at most MAX_ITEM_ID_BYTES, the counts by category). The job's state may take up to 1 MiB: a
# checkpoint over 8 KiB as stored keeps its state in S3 (runly_core.run_objects), so DynamoDB's 400 KB item limit
# does not bound it; the envelope stays in the item.
MAX_CHECKPOINT_STATE_BYTES = 1024 * 1024
MAX_ITEM_ID_BYTES = 1024
CHECKPOINT_ENVELOPE_BYTES = 16 * 1024
MAX_CHECKPOINT_BYTES = MAX_CHECKPOINT_STATE_BYTES + CHECKPOINT_ENVELOPE_BYTES
# One line on the job -> agent channel (every message: progress, checkpoint, result, error): the largest value
# above plus its message's own fields. The agent reads at most this much of a line, so its memory stays bounded
# whatever a job writes; a longer line ends the run (by the message's kind: output_too_large, ...). A job's
# stdout and stderr do not pass through the channel: they go to a file on disk, shipped in LOG_CHUNK_BYTES pieces
# (node_agent.logs), so the agent holds at most one chunk of them, whatever the length of a line.
CHANNEL_ENVELOPE_BYTES = 4 * 1024
MAX_CHANNEL_MESSAGE_BYTES = (
    max(MAX_OUTPUT_BYTES, MAX_CHECKPOINT_BYTES, MAX_ERROR_BYTES, MAX_PROGRESS_BYTES) + CHANNEL_ENVELOPE_BYTES
)
LOG_CHUNK_BYTES = 1024 * 1024


# ---------------------------------------------------------------- the variables and secrets a job declares
# A name becomes an environment variable of the job process (its values: runly_core.resources, in SSM).
VALUE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Names the agent sets or that change how the job's interpreter starts: a variable or secret may not take them.
RESERVED_VALUE_PREFIXES = ("RUNLY_", "PYTHON", "LD_", "OTEL_")
RESERVED_VALUE_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR", "TRACEPARENT", "MALLOC_ARENA_MAX"}
)
# What a job may declare (JobSpec.variables + JobSpec.secrets), and what its resolved values may take together: they
# travel in the job's environment (Linux caps one string at 128 KiB, the whole environment at a quarter of the
# stack limit) and, for a warm host's child, in one socket message (node_agent.fork_servers).
MAX_JOB_VALUES = 32
MAX_JOB_VALUE_BYTES = 128 * 1024


def value_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a variable's or a secret's name, or None when it can."""
    if not VALUE_NAME.match(name):
        return f"must match {VALUE_NAME.pattern} (it becomes an environment variable of the job)"
    if name.upper().startswith(RESERVED_VALUE_PREFIXES) or name.upper() in RESERVED_VALUE_NAMES:
        starts = ", ".join(RESERVED_VALUE_PREFIXES)
        return f"is reserved (names starting {starts}, and {', '.join(sorted(RESERVED_VALUE_NAMES))})"
    return None
