"""The variables and secrets a job declares: resolved when its run starts, handed to its process only, and kept out
of everything the run leaves behind.

- ``resolve`` reads the names the job's manifest declares (JobSpec.variables, JobSpec.secrets) from the node's own
  environment's values path in SSM Parameter Store, with the node's environment-bounded credentials
  (functions.nodes.policy): they become environment variables of that run's job process (node_agent.job_process),
  in no file, message or record. A name that is not set fails the run before the job starts (not retried: the
  same run would fail the same way until an operator sets it).
- ``Redactor`` replaces every resolved secret value with ``***``: in the log the agent ships (node_agent.logs, also
  where a value is split across two chunks), and in the error, progress message and output the agent records.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runly.limits import MAX_JOB_VALUE_BYTES
from runly.wire import JobSpec
from runly_core.resources import value_parameter

MASK = "***"

# (parameter names, or "name:version" selectors) -> ({asked: (value, version)}, names SSM does not have)
Fetch = Callable[[Sequence[str]], tuple[dict[str, tuple[str, int]], list[str]]]


class MissingValues(Exception):
    """A declared variable or secret is not set in the environment, or they are too large together: not retried."""


class ValuesUnavailable(Exception):
    """SSM could not be read (throttled, denied, unreachable): the attempt is retried."""


@dataclass(frozen=True)
class SecretPin:
    """Which version of a secret a run got: enough to read that value again (and only that one) to redact a log
    an agent left unshipped when it died (node_agent.logs.ship_leftovers). Holds no value."""

    parameter: str
    version: int

    @property
    def selector(self) -> str:
        return f"{self.parameter}:{self.version}"


@dataclass(frozen=True)
class ResolvedValues:
    env: dict[str, str] = field(default_factory=dict)  # name -> value: the job process's extra environment
    secrets: tuple[str, ...] = ()  # the secret values, to redact
    pins: tuple[SecretPin, ...] = ()

    @property
    def redactor(self) -> Redactor:
        return Redactor(self.secrets)


NONE = ResolvedValues()


def resolve(job: JobSpec | None, *, environment: str, values_path: str, fetch: Fetch) -> ResolvedValues:
    """The job's declared values, read from ``{values_path}/{environment}/``; MissingValues or ValuesUnavailable."""
    if job is None or not (job.variables or job.secrets):
        return NONE
    wanted = {
        value_parameter(values_path, environment, kind, name): (kind, name)
        for kind, names in (("variables", job.variables), ("secrets", job.secrets))
        for name in names
    }
    try:
        found, invalid = fetch(list(wanted))
    except ValuesUnavailable:
        raise
    except Exception as exc:  # the adapter's own failures (botocore's), without their detail: no value is in them
        raise ValuesUnavailable(f"reading the job's variables and secrets failed: {type(exc).__name__}") from exc
    missing = [wanted[parameter] for parameter in wanted if parameter not in found or parameter in invalid]
    if missing:
        described = ", ".join(f"{kind.removesuffix('s')} {name}" for kind, name in missing)
        raise MissingValues(
            f"environment {environment!r} has no {described}, which job {job.name!r} declares: set it "
            f"(runly vars set / runly secrets set) and requeue the run"
        )
    env: dict[str, str] = {}
    secrets: list[str] = []
    pins: list[SecretPin] = []
    for parameter, (kind, name) in wanted.items():
        value, version = found[parameter]
        env[name] = value
        if kind == "secrets":
            secrets.append(value)
            pins.append(SecretPin(parameter, version))
    total = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())
    if total > MAX_JOB_VALUE_BYTES:
        raise MissingValues(
            f"job {job.name!r} declares variables and secrets of {total} bytes together; at most "
            f"{MAX_JOB_VALUE_BYTES} fit in a job process's environment"
        )
    return ResolvedValues(env=env, secrets=tuple(secrets), pins=tuple(pins))


def resolve_pins(pins: Sequence[SecretPin], fetch: Fetch) -> Redactor:
    """The redactor of a run's secrets, read again at the versions it got; ValuesUnavailable if any is gone."""
    if not pins:
        return Redactor(())
    try:
        found, invalid = fetch([pin.selector for pin in pins])
    except Exception as exc:
        raise ValuesUnavailable(f"reading the run's secrets again failed: {type(exc).__name__}") from exc
    missing = [pin.parameter for pin in pins if pin.selector not in found or pin.selector in invalid]
    if missing:
        raise ValuesUnavailable(f"{len(missing)} of the run's secrets (at the version it got) are gone")
    return Redactor(found[pin.selector][0] for pin in pins)


class Redactor:
    """Replaces each of a run's secret values with ``***`` in text, JSON values and a log's bytes."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a value that contains another is masked whole.
        self._texts = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._bytes = [s.encode("utf-8", errors="surrogatepass") for s in self._texts]
        self._pattern = re.compile(b"|".join(re.escape(b) for b in self._bytes)) if self._bytes else None

    def __bool__(self) -> bool:
        return bool(self._texts)

    def text(self, value: str) -> str:
        for secret in self._texts:
            value = value.replace(secret, MASK)
        return value

    def json(self, value: Any) -> Any:
        """Every string in a JSON value (keys too), redacted."""
        if not self._texts:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json(item) for item in value]
        if isinstance(value, dict):
            return {self.text(str(key)): self.json(item) for key, item in value.items()}
        return value

    def data(self, chunk: bytes) -> bytes:
        return self._pattern.sub(MASK.encode(), chunk) if self._pattern is not None else chunk

    def safe_cut(self, chunk: bytes) -> int:
        """How much of ``chunk`` may be redacted and shipped now, when more of the log follows it: all of it but a
        tail that may be the start of a secret the next bytes complete, and never through a secret it holds."""
        cut = len(chunk)
        for secret in self._bytes:
            start = max(0, len(chunk) - len(secret) + 1)
            at = chunk.find(secret[:1], start)
            while at != -1:
                if secret.startswith(chunk[at:]):
                    cut = min(cut, at)
                    break
                at = chunk.find(secret[:1], at + 1)
        if self._pattern is not None:
            for match in self._pattern.finditer(chunk):
                if match.start() < cut < match.end():
                    cut = match.start()
        return cut
