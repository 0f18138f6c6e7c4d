"""A FastAPI application that hands work to runly: ``POST /primes`` enqueues a run of the tally example's
``primes`` job from the request handler, with the async client, and ``GET /runs/{id}/progress`` streams the run's
progress (server-sent events) until it ends.

    RUNLY_API_URL=http://127.0.0.1:PORT RUNLY_API_KEY=rly_... \\
        uvicorn webapp.app:create_app --factory --port 8000

    curl -X POST localhost:8000/primes -H 'Idempotency-Key: order-42' -d '{"limit": 20000000}' \\
        -H 'content-type: application/json'
    curl -N localhost:8000/runs/<id>/progress

The request's ``Idempotency-Key`` header becomes the enqueue's: a client that retries its POST (a timeout, a
double click) gets the run the first POST created, never a second run. One AsyncRunlyClient serves every request
(its pooled connections are opened once, closed at shutdown); the API's errors reach the caller with their status
and body (a config the job's schema refuses is a 422 naming the field).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from runly_client.client import ApiError, AsyncRunlyClient
from runly_core.contracts import EnqueueRunRequest, RunView

PACKAGE, JOB = "tally", "primes"


class Settings(BaseModel):
    """Where the runly API is, read once at start-up."""

    api_url: str
    api_key: str
    environment: str = "default"
    progress_interval: float = Field(default=0.5, gt=0, description="seconds between looks at a running run")

    @classmethod
    def from_environment(cls) -> Settings:
        return cls(
            api_url=os.environ["RUNLY_API_URL"],
            api_key=os.environ["RUNLY_API_KEY"],
            environment=os.environ.get("RUNLY_ENVIRONMENT", "default"),
        )


class PrimesRequest(BaseModel):
    limit: int = Field(description="count the primes below this")
    segment: int | None = Field(default=None, description="numbers per checkpoint (the job's default if absent)")


class RunStatus(BaseModel):
    """What the application shows of a run."""

    run_id: str
    state: str
    done: int | None = None
    total: int | None = None
    message: str | None = None
    output: Any = None
    error: str | None = None

    @classmethod
    def of(cls, run: RunView) -> RunStatus:
        progress = run.progress
        return cls(
            run_id=run.id,
            state=run.state.value,
            done=progress.succeeded if progress else None,
            total=progress.total if progress else None,
            message=progress.message if progress else None,
            output=run.output,
            error=run.error.message if run.error else None,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncRunlyClient(settings.api_url, api_key=settings.api_key, timeout=10) as client:
            app.state.runly = client
            yield

    app = FastAPI(title="runly webapp example", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        # The API's own status and ErrorBody: the caller learns which field was wrong, or that the run is unknown.
        return JSONResponse(status_code=exc.status, content=exc.error.model_dump(exclude_none=True))

    @app.post("/primes", status_code=202)
    async def count_primes(
        body: PrimesRequest, request: Request, idempotency_key: Annotated[str | None, Header()] = None
    ) -> RunStatus:
        """Enqueue a run that counts primes; the answer names the run (202: it runs elsewhere, later)."""
        client: AsyncRunlyClient = request.app.state.runly
        run = await client.enqueue(
            EnqueueRunRequest(
                package=PACKAGE, job=JOB, config=body.model_dump(exclude_none=True), environment=settings.environment
            ),
            idempotency_key=idempotency_key,
        )
        return RunStatus.of(run)

    @app.get("/runs/{run_id}")
    async def run_status(run_id: str, request: Request) -> RunStatus:
        client: AsyncRunlyClient = request.app.state.runly
        return RunStatus.of(await client.get_run(run_id))

    @app.get("/runs/{run_id}/progress")
    async def run_progress(run_id: str, request: Request) -> StreamingResponse:
        """Server-sent events: the run's status each time it changes, the last one once it has ended."""
        client: AsyncRunlyClient = request.app.state.runly
        first = await client.get_run(run_id)  # an unknown run is a 404 before the stream starts

        async def events() -> AsyncIterator[str]:
            run, shown = first, None
            while True:
                status = RunStatus.of(run)
                if status != shown:
                    yield f"data: {status.model_dump_json()}\n\n"
                    shown = status
                if run.state.terminal or await request.is_disconnected():
                    return
                await asyncio.sleep(settings.progress_interval)
                run = await client.get_run(run_id)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return app
