"""Ship a job's output to the feed in chunks, during the run and at its end.

The job writes stdout/stderr to a file on the node's disk (the spool); a
shipper uploads what is new as ``logs/{environment}/{run_id}/{attempt:04d}/{seq:08d}.log``.
Its position is saved beside the spool, so after an agent crash the next agent
on this node ships the leftovers and nothing is uploaded twice or lost.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from runly.limits import LOG_CHUNK_BYTES
from runly_core.records import run_log_prefix

log = logging.getLogger(__name__)

CHUNK_BYTES = LOG_CHUNK_BYTES  # one read and one upload: the agent holds at most this much of a job's log
LOG_FILE = "output.log"
STATE_FILE = "ship.json"

Upload = Callable[[str, bytes], None]


def chunk_key(run_id: str, attempt: int, seq: int) -> str:
    # Under the run's environment (runly_core.records.run_log_prefix): the node's credentials reach only that prefix.
    return f"{run_log_prefix(run_id, attempt)}{seq:08d}.log"


class LogSpool:
    """The spool directory of one attempt: its log file and how much of it has been shipped."""

    def __init__(self, directory: Path, run_id: str, attempt: int) -> None:
        self.directory = directory
        self.run_id = run_id
        self.attempt = attempt
        self.log_path = directory / LOG_FILE
        self._lock = threading.Lock()
        self.offset = 0
        self.seq = 0

    @classmethod
    def create(cls, directory: Path, run_id: str, attempt: int) -> LogSpool:
        directory.mkdir(parents=True, exist_ok=True)
        spool = cls(directory, run_id, attempt)
        spool._save()
        return spool

    @classmethod
    def reopen(cls, directory: Path) -> LogSpool | None:
        try:
            state = json.loads((directory / STATE_FILE).read_text())
            spool = cls(directory, state["run_id"], int(state["attempt"]))
            spool.offset, spool.seq = int(state["offset"]), int(state["seq"])
            return spool
        except (OSError, ValueError, KeyError):
            return None

    def _save(self) -> None:
        state = {"run_id": self.run_id, "attempt": self.attempt, "offset": self.offset, "seq": self.seq}
        tmp = self.directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.directory / STATE_FILE)

    def ship(self, upload: Upload) -> int:
        """Upload what was written since the last call; returns the bytes shipped."""
        shipped = 0
        with self._lock:
            if not self.log_path.exists():
                return 0
            with open(self.log_path, "rb") as source:
                source.seek(self.offset)
                while chunk := source.read(CHUNK_BYTES):
                    upload(chunk_key(self.run_id, self.attempt, self.seq), chunk)
                    # Saved after each upload: a crash between the two re-sends one chunk under the same key.
                    self.offset += len(chunk)
                    self.seq += 1
                    shipped += len(chunk)
                    self._save()
        return shipped

    def finish(self, upload: Upload) -> None:
        """Ship the rest and remove the spool."""
        self.ship(upload)
        shutil.rmtree(self.directory, ignore_errors=True)


def ship_leftovers(runs_dir: Path, upload: Upload) -> int:
    """At start: ship what a previous agent on this node spooled but did not ship, then clean up."""
    count = 0
    if not runs_dir.exists():
        return 0
    for directory in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        spool = LogSpool.reopen(directory)
        if spool is None:
            shutil.rmtree(directory, ignore_errors=True)
            continue
        try:
            spool.finish(upload)
            count += 1
            log.info("shipped the leftover log of run %s attempt %d", spool.run_id, spool.attempt)
        except Exception:  # kept on disk for the next start; must not stop the agent
            log.exception("could not ship the leftover log in %s", directory)
    return count
