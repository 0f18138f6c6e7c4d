from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from functions.api.dependencies import services
from functions.logic import runs
from runly.contracts import EnqueueRunRequest, RunView

router = APIGatewayHttpRouter()


@router.post("", summary="Enqueue a run")
def enqueue(body: EnqueueRunRequest) -> tuple[RunView, int]:
    deps = services()
    return runs.enqueue(body, store=deps.store, queue=deps.queue), 201


@router.get("/<run_id>", summary="Get one run: state, attempts, timings, output")
def get_run(run_id: str) -> RunView:
    return runs.get(run_id, store=services().store)
