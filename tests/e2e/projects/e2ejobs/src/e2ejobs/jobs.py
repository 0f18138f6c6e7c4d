import os
import signal
import time

from pydantic import BaseModel, Field

from runly import Job


class EchoConfig(BaseModel):
    message: str = "echo"


class Echo(Job[EchoConfig]):
    def run(self) -> dict[str, object]:
        print(f"echo says {self.config.message}")
        return {"message": self.config.message, "pid": os.getpid(), "attempt": self.context.attempt}


class FailConfig(BaseModel):
    message: str = "this job always fails"


class Fail(Job[FailConfig]):
    def run(self) -> None:
        raise ValueError(self.config.message)


class CrashConfig(BaseModel):
    pass


class Crash(Job[CrashConfig]):
    def run(self) -> None:
        print("about to die", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


class SleepConfig(BaseModel):
    seconds: float = Field(default=30, ge=0)


class Sleep(Job[SleepConfig]):
    def run(self) -> dict[str, float]:
        time.sleep(self.config.seconds)
        return {"slept": self.config.seconds}
