"""Ship a job's output to the feed in chunks, during the run and at its end.

The job writes stdout/stderr to a file on the node's disk (the spool); a
shipper uploads what is new as ``runs/{environment}/{run_id}/logs/{attempt:04d}/{seq:08d}.log``.
Its position is saved beside the spool, so after an agent crash the next agent
on this node ships the leftovers and nothing is uploaded twice or lost.

Every secret value the run got (node_agent.job_values) is replaced with ``***`` in what is shipped, also where a
value straddles two chunks: a chunk's tail that may begin a secret is held back and shipped with the next one. The
spool's state names the secrets (parameter and version, never a value), so an agent shipping a dead agent's
leftovers reads them again to redact; if it cannot, it ships a note instead of the log.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from node_agent.job_values import Fetch, Redactor, SecretPin, ValuesUnavailable, resolve_pins
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
        self.redactor = Redactor(())
        self.pins: tuple[SecretPin, ...] = ()

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
            spool.pins = tuple(SecretPin(str(p["parameter"]), int(p["version"])) for p in state.get("secrets", []))
            return spool
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def protect(self, redactor: Redactor, pins: tuple[SecretPin, ...]) -> None:
        """Redact these secrets from what is shipped; the pins are saved first, for an agent that ships the
        leftovers of this one."""
        with self._lock:
            self.pins = pins
            self._save()
            self.redactor = redactor

    def _save(self) -> None:
        state: dict[str, object] = {
            "run_id": self.run_id, "attempt": self.attempt, "offset": self.offset, "seq": self.seq,
            "secrets": [{"parameter": pin.parameter, "version": pin.version} for pin in self.pins],
        }  # fmt: skip
        tmp = self.directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.directory / STATE_FILE)

    def ship(self, upload: Upload, *, final: bool = False) -> int:
        """Upload what was written since the last call, redacted; returns the bytes of the log shipped. ``final``:
        the job has ended, nothing more is written, so no tail is held back."""
        shipped = 0
        with self._lock:
            if not self.log_path.exists():
                return 0
            with open(self.log_path, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                source.seek(self.offset)
                while chunk := source.read(CHUNK_BYTES):
                    last = final and self.offset + len(chunk) >= size
                    cut = len(chunk) if last or not self.redactor else self.redactor.safe_cut(chunk)
                    if cut == 0:
                        break  # all of it may begin a secret: shipped once what follows is written
                    upload(chunk_key(self.run_id, self.attempt, self.seq), self.redactor.data(chunk[:cut]))
                    # Saved after each upload: a crash between the two re-sends one chunk under the same key.
                    self.offset += cut
                    self.seq += 1
                    shipped += cut
                    self._save()
                    source.seek(self.offset)
        return shipped

    def finish(self, upload: Upload) -> None:
        """Ship the rest and remove the spool."""
        self.ship(upload, final=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def withhold(self, upload: Upload, reason: str) -> None:
        """Ship a note in place of the rest of the log, and remove the spool."""
        with self._lock:
            note = f"\n[runly: the rest of this log was not shipped: {reason}]\n".encode()
            upload(chunk_key(self.run_id, self.attempt, self.seq), note)
        shutil.rmtree(self.directory, ignore_errors=True)


def ship_leftovers(runs_dir: Path, upload: Upload, fetch: Fetch | None = None) -> int:
    """At start: ship what a previous agent on this node spooled but did not ship, then clean up. A spool of a run
    that got secrets is redacted with them, read again at the versions it got (``fetch``: SSM); when they cannot be
    read, a note is shipped instead of the log."""
    count = 0
    if not runs_dir.exists():
        return 0
    for directory in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        spool = LogSpool.reopen(directory)
        if spool is None:
            shutil.rmtree(directory, ignore_errors=True)
            continue
        try:
            if spool.pins:
                try:
                    if fetch is None:
                        raise ValuesUnavailable("no access to the environment's secrets")
                    spool.redactor = resolve_pins(spool.pins, fetch)
                except ValuesUnavailable as exc:
                    spool.withhold(upload, f"its run's secrets could not be read again to redact it ({exc})")
                    count += 1
                    continue
            spool.finish(upload)
            count += 1
            log.info("shipped the leftover log of run %s attempt %d", spool.run_id, spool.attempt)
        except Exception:  # kept on disk for the next start; must not stop the agent
            log.exception("could not ship the leftover log in %s", directory)
    return count
