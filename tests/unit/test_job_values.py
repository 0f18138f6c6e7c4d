"""A job's variables and secrets on the node: resolving what its manifest declares, and redacting the secrets from
the log the agent ships (also across chunk boundaries and after an agent crash) and from what it records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from node_agent import logs
from node_agent.job_values import (
    MASK,
    MissingValues,
    Redactor,
    SecretPin,
    ValuesUnavailable,
    resolve,
)
from node_agent.logs import LogSpool, ship_leftovers
from runly.limits import MAX_JOB_VALUES
from runly.wire import JobSpec

ROOT = "/runly-test"
SECRET = "s3cr3t-value-0123456789"


def job(variables: list[str] | None = None, secrets: list[str] | None = None) -> JobSpec:
    return JobSpec(
        name="sync", entry_point="pkg:Sync", config_schema={}, variables=variables or [], secrets=secrets or []
    )


class FakeSsm:
    """SSM's GetParameters over a dict of parameter -> [value of version 1, of version 2, ...]."""

    def __init__(self, parameters: dict[str, list[str]]) -> None:
        self.parameters = parameters
        self.calls: list[list[str]] = []

    def __call__(self, names: Sequence[str]) -> tuple[dict[str, tuple[str, int]], list[str]]:
        self.calls.append(list(names))
        found: dict[str, tuple[str, int]] = {}
        invalid: list[str] = []
        for asked in names:
            name, _, version = asked.partition(":")
            versions = self.parameters.get(name, [])
            number = int(version) if version else len(versions)
            if versions and 1 <= number <= len(versions):
                found[asked] = (versions[number - 1], number)
            else:
                invalid.append(asked)
        return found, invalid


def test_a_job_gets_its_declared_values_from_its_own_environment() -> None:
    ssm = FakeSsm({
        f"{ROOT}/prod/variables/REGION": ["eu-west-1"],
        f"{ROOT}/prod/secrets/API_TOKEN": ["old", SECRET],
        f"{ROOT}/staging/secrets/API_TOKEN": ["staging's"],
    })  # fmt: skip
    declared = job(variables=["REGION"], secrets=["API_TOKEN"])
    resolved = resolve(declared, environment="prod", values_path=ROOT, fetch=ssm)
    assert resolved.env == {"REGION": "eu-west-1", "API_TOKEN": SECRET}
    assert resolved.secrets == (SECRET,)
    assert resolved.pins == (SecretPin(f"{ROOT}/prod/secrets/API_TOKEN", 2),)
    assert ssm.calls == [[f"{ROOT}/prod/variables/REGION", f"{ROOT}/prod/secrets/API_TOKEN"]]


def test_a_job_that_declares_nothing_asks_for_nothing() -> None:
    ssm = FakeSsm({})
    assert resolve(job(), environment="prod", values_path=ROOT, fetch=ssm).env == {}
    assert resolve(None, environment="prod", values_path=ROOT, fetch=ssm).env == {}
    assert ssm.calls == []


def test_a_missing_value_names_itself_and_what_to_do() -> None:
    ssm = FakeSsm({f"{ROOT}/prod/variables/REGION": ["eu-west-1"]})
    with pytest.raises(MissingValues) as raised:
        resolve(job(variables=["REGION"], secrets=["API_TOKEN"]), environment="prod", values_path=ROOT, fetch=ssm)
    assert str(raised.value) == (
        "environment 'prod' has no secret API_TOKEN, which job 'sync' declares: set it (runly vars set / runly "
        "secrets set) and requeue the run"
    )


def test_an_ssm_failure_is_worth_another_attempt_and_says_no_more_than_its_kind() -> None:
    def failing(names: Sequence[str]) -> tuple[dict[str, tuple[str, int]], list[str]]:
        raise RuntimeError(f"AccessDenied for {names}")

    with pytest.raises(ValuesUnavailable, match=r"^reading the job's variables and secrets failed: RuntimeError$"):
        resolve(job(secrets=["API_TOKEN"]), environment="prod", values_path=ROOT, fetch=failing)


def test_values_too_large_together_for_an_environment_are_refused() -> None:
    names = [f"V{i}" for i in range(17)]
    ssm = FakeSsm({f"{ROOT}/prod/variables/{name}": ["x" * 8192] for name in names})
    with pytest.raises(MissingValues, match="at most 131072 fit"):
        resolve(job(variables=names), environment="prod", values_path=ROOT, fetch=ssm)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"variables": ["PATH"]}, "reserved"),
        ({"secrets": ["RUNLY_RUN_SPEC"]}, "reserved"),
        ({"secrets": ["1ABC"]}, "must match"),
        ({"variables": ["A"], "secrets": ["A"]}, "declared twice"),
        ({"variables": [f"V{i}" for i in range(MAX_JOB_VALUES + 1)]}, "at most 32"),
        ({"variables": [f"V{i}" for i in range(20)], "secrets": [f"S{i}" for i in range(13)]}, "at most 32"),
    ],
)
def test_a_manifest_declaring_bad_names_is_refused(values: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        job(**values)


# ---------------------------------------------------------------- redaction


def test_text_and_json_are_redacted_longest_value_first() -> None:
    redactor = Redactor(["abc", "abcdef", ""])
    assert redactor.text("x abcdef y abc z") == f"x {MASK} y {MASK} z"
    redacted = redactor.json({"abc": ["abcdef", 1, None, {"k": "--abc--"}]})
    assert redacted == {MASK: [MASK, 1, None, {"k": f"--{MASK}--"}]}
    assert not Redactor([]) and Redactor(["a"])


def _ship(spool: LogSpool, *, final: bool) -> list[bytes]:
    shipped: list[bytes] = []
    spool.ship(lambda key, data: shipped.append(data), final=final)
    return shipped


@pytest.mark.parametrize("split", [1, 5, len(SECRET) - 1])
def test_a_secret_split_across_two_chunks_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: int
) -> None:
    # Given chunks of 64 bytes and a log where the secret straddles the first boundary
    monkeypatch.setattr(logs, "CHUNK_BYTES", 64)
    spool = LogSpool.create(tmp_path / "spool", "run_prod_x", 1)
    spool.protect(Redactor([SECRET]), (SecretPin(f"{ROOT}/prod/secrets/T", 1),))
    head = b"." * (64 - split)
    spool.log_path.write_bytes(head + SECRET.encode() + b"\n" + b"tail " * 40 + SECRET.encode())
    # When the whole log is shipped
    chunks = _ship(spool, final=True)
    # Then no chunk holds the secret or a piece of it at the boundary, and everything else is there
    joined = b"".join(chunks)
    assert SECRET.encode() not in joined
    assert joined == head + b"***\n" + b"tail " * 40 + b"***"
    assert all(not chunk.endswith(SECRET.encode()[:split]) for chunk in chunks[:-1])


def test_a_live_log_holds_back_a_tail_that_may_begin_a_secret(tmp_path: Path) -> None:
    # Given a log (the job still running) that ends with the first half of the secret
    spool = LogSpool.create(tmp_path / "spool", "run_prod_x", 1)
    spool.protect(Redactor([SECRET]), ())
    half = len(SECRET) // 2
    spool.log_path.write_bytes(b"token=" + SECRET.encode()[:half])
    # When it is shipped, the tail is held back; once the rest is written, it is shipped masked
    assert _ship(spool, final=False) == [b"token="]
    with spool.log_path.open("ab") as log_file:
        log_file.write(SECRET.encode()[half:] + b" done\n")
    assert _ship(spool, final=True) == [b"*** done\n"]


def test_leftovers_of_a_dead_agent_are_redacted_with_the_secrets_read_again(tmp_path: Path) -> None:
    # Given a spool an agent left when it died: its state names the secret (no value), at the version the run got
    runs = tmp_path / "runs"
    spool = LogSpool.create(runs / "run-1", "run_prod_x", 1)
    spool.protect(Redactor([SECRET]), (SecretPin(f"{ROOT}/prod/secrets/T", 1),))
    spool.log_path.write_bytes(f"using {SECRET}\n".encode())
    state = (runs / "run-1" / logs.STATE_FILE).read_text()
    assert SECRET not in state
    assert json.loads(state)["secrets"] == [{"parameter": f"{ROOT}/prod/secrets/T", "version": 1}]
    # When the next agent ships it, the secret having changed since
    ssm = FakeSsm({f"{ROOT}/prod/secrets/T": [SECRET, "rotated"]})
    shipped: list[bytes] = []
    assert ship_leftovers(runs, lambda key, data: shipped.append(data), ssm) == 1
    # Then it read the version the run got, and masked it
    assert ssm.calls == [[f"{ROOT}/prod/secrets/T:1"]]
    assert shipped == [b"using ***\n"]
    assert not (runs / "run-1").exists()


def test_leftovers_whose_secrets_cannot_be_read_again_are_withheld(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    spool = LogSpool.create(runs / "run-1", "run_prod_x", 1)
    spool.protect(Redactor([SECRET]), (SecretPin(f"{ROOT}/prod/secrets/T", 3),))
    spool.log_path.write_bytes(f"using {SECRET}\n".encode())
    shipped: list[bytes] = []
    assert ship_leftovers(runs, lambda key, data: shipped.append(data), FakeSsm({})) == 1
    [note] = shipped
    assert SECRET.encode() not in note and b"not shipped" in note
    assert not (runs / "run-1").exists()
