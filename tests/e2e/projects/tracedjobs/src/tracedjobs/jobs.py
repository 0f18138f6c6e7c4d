"""A job that records spans of its own steps and says which trace context it was given."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from runly import Job


class TracedConfig(BaseModel):
    steps: int = 2


class Traced(Job[TracedConfig]):
    def run(self) -> Any:
        for step in range(self.config.steps):
            with self.span("step", step=step):
                pass
        return {"traceparent": self.context.traceparent}
