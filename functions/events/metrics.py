"""The metrics the event publisher emits (Powertools, embedded metric format), read by the dashboard too."""

from __future__ import annotations

from runly_core.contracts import RunState

NAMESPACE = "runly"
SERVICE = "runly-events"  # also the metrics' `service` dimension

# One count per state a run enters. Cancelling is a request, not an outcome: not counted.
RUN_STATE_METRICS: dict[RunState, str] = {
    RunState.QUEUED: "RunsQueued",
    RunState.RUNNING: "RunsStarted",
    RunState.SUCCEEDED: "RunsSucceeded",
    RunState.FAILED: "RunsFailed",
    RunState.TIMED_OUT: "RunsTimedOut",
    RunState.CANCELLED: "RunsCancelled",
}
# Events that could not be put on the bus after every retry (their stream records are retried by Lambda).
UNPUBLISHED_METRIC = "RunEventsUnpublished"
