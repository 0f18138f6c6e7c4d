import sys

from pydantic import BaseModel

from runly import Job

sys.exit("brokenjobs.exits_at_import: refusing to import")


class ExitsConfig(BaseModel):
    pass


class Exits(Job[ExitsConfig]):
    def run(self) -> None:
        pass
