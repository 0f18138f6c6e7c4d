import os

from pydantic import BaseModel

from runly import Job

# A module that needs something the node does not have: it raises while it is imported.
DATABASE_URL = os.environ["BROKENJOBS_DATABASE_URL_THAT_NO_NODE_HAS"]


class RaisesConfig(BaseModel):
    pass


class Raises(Job[RaisesConfig]):
    def run(self) -> None:
        pass
