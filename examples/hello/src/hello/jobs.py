import os
import platform

from pydantic import BaseModel, Field

from runly import Job


class HelloConfig(BaseModel):
    name: str = Field(default="world", description="who to greet")
    times: int = Field(default=1, ge=1, le=100, description="how many greetings")


class Hello(Job[HelloConfig]):
    """Greets someone, and says where it ran, to show the job ran in its own process."""

    def run(self) -> dict[str, object]:
        greetings = [f"Hello, {self.config.name}!" for _ in range(self.config.times)]
        for line in greetings:
            print(line)
        return {"greetings": greetings, "pid": os.getpid(), "python": platform.python_version()}
