from pydantic import BaseModel

from runly import Job


class OkConfig(BaseModel):
    pass


class Ok(Job[OkConfig]):
    def run(self) -> dict[str, bool]:
        return {"ok": True}


NOT_A_JOB = "a module attribute that is not a Job class"
