"""A run's values beyond the run item's inline sizes, as S3 objects of the feed bucket (docs/store.md).

An output over ``OUTPUT_INLINE_BYTES`` is stored as ``runs/{env}/{run_id}/output/{sha256}.json`` and the run item
keeps ``output_ref`` (``{"sha256", "bytes"}``) instead of ``output_json``, so the item a heartbeat rewrites stays
small and DynamoDB's 400 KB item limit no longer bounds the output (``runly.limits.MAX_OUTPUT_BYTES`` does).

Every put sends ``ChecksumSHA256`` (S3 refuses a body whose bytes do not match it: nothing torn is stored), and
every read checks the length and the sha256 the reference names: a mismatch raises ``RunObjectUnreadable``, never
a value that is not the one written. The key names its bytes (the sha256), so a put never replaces another value.

A checkpoint whose stored JSON is over ``CHECKPOINT_INLINE_BYTES`` keeps its envelope in ``checkpoint_json`` with
``state`` replaced by ``state_ref`` (``{"key", "sha256", "bytes"}``), the state itself stored first under
``runs/{env}/{run_id}/checkpoints/{attempt:04d}-{slot}.json``. An attempt's checkpoints alternate between two slots
(its checkpoint count, mod 2), so the put of one never overwrites the object the acknowledged checkpoint names: a
torn or failed put, or a lease lost before the fenced write, leaves the last checkpoint readable.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from pydantic import ValidationError

from runly.sizes import stored_json
from runly.wire import Checkpoint
from runly_core.records import ObjectRef, environment_runs_prefix, run_environment, run_objects_prefix

# Above this many bytes (UTF-8 JSON, as stored) an output goes to S3: its reference is about 100 bytes, and 4 KiB
# inline is at most 4 write units of the completing write, once.
OUTPUT_INLINE_BYTES = 4 * 1024


# Above this many bytes (the whole checkpoint, UTF-8 JSON as stored) a checkpoint's state goes to S3: a heartbeat
# never rewrites the checkpoint item, but every checkpoint rewrites it whole (a write unit per KiB), and a run
# that checkpoints often should not pay 300 of them each time.
CHECKPOINT_INLINE_BYTES = 8 * 1024
CHECKPOINT_SLOTS = 2


class RunObjectUnreadable(Exception):
    """A run's object is missing, or its bytes are not those its reference names (length or sha256)."""


def output_object_key(run_id: str, sha256: str) -> str:
    return f"{run_objects_prefix(run_id)}output/{sha256}.json"


def checkpoint_object_key(run_id: str, attempt: int, slot: int) -> str:
    return f"{run_objects_prefix(run_id)}checkpoints/{attempt:04d}-{slot}.json"


class StateRef(ObjectRef):
    """Where a checkpoint's state is stored when it is not inline: the object's key, beside its sha256 and length
    (a requeue with resume copies the checkpoint: its key stays in the original run's prefix)."""

    key: str


def ref_of(data: bytes) -> ObjectRef:
    return ObjectRef(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))


class RunObjects:
    """A run's objects in ``bucket`` through ``s3`` (a boto3 S3 client: the node's, bounded to its environment's
    ``runs/{env}/`` prefix; or the API's)."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def put(self, key: str, data: bytes) -> ObjectRef:
        """Store ``data`` under ``key`` with its SHA-256 for S3 to check; returns its reference."""
        ref = ref_of(data)
        self._s3.put_object(
            Bucket=self._bucket,
            Key=key,
            Body=data,
            ContentType="application/json",
            ChecksumSHA256=base64.b64encode(bytes.fromhex(ref.sha256)).decode(),
        )
        return ref

    def get(self, key: str, ref: ObjectRef) -> bytes:
        """The bytes under ``key``, checked against ``ref``; RunObjectUnreadable if missing or not those bytes."""
        try:
            # Reads no more than the reference says, plus one byte to see a longer object.
            body = self._s3.get_object(Bucket=self._bucket, Key=key, Range=f"bytes=0-{ref.bytes}")["Body"]
            data = body.read()
        except self._s3.exceptions.NoSuchKey as exc:
            raise RunObjectUnreadable(f"{key}: no such object") from exc
        if len(data) != ref.bytes:
            raise RunObjectUnreadable(f"{key}: {len(data)} bytes where {ref.bytes} were written")
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise RunObjectUnreadable(f"{key}: its sha256 is not the one written ({ref.sha256})")
        return data

    def put_output(self, run_id: str, output_json: str) -> ObjectRef:
        data = output_json.encode()
        return self.put(output_object_key(run_id, ref_of(data).sha256), data)

    def get_output(self, run_id: str, ref: ObjectRef) -> str:
        return self.get(output_object_key(run_id, ref.sha256), ref).decode()

    def store_checkpoint(
        self, run_id: str, attempt: int, checkpoint: Checkpoint, checkpoint_json: str, sequence: int
    ) -> str:
        """What ``checkpoint_json`` (``checkpoint`` as measured, runly.sizes) is stored as in the checkpoint item:
        itself up to ``CHECKPOINT_INLINE_BYTES``; above, its state is put in slot ``sequence % 2`` of ``attempt``
        (the writer's) first, and the envelope with a ``state_ref`` is returned, for the fenced write to store."""
        if len(checkpoint_json.encode()) <= CHECKPOINT_INLINE_BYTES:
            return checkpoint_json
        data = stored_json(checkpoint.state, "the checkpoint state").encode()
        key = checkpoint_object_key(run_id, attempt, sequence % CHECKPOINT_SLOTS)
        ref = self.put(key, data)
        envelope = checkpoint.model_dump(mode="json", exclude={"state"})
        envelope["state_ref"] = StateRef(key=key, sha256=ref.sha256, bytes=ref.bytes).model_dump()
        return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))


def stored_state_ref(run_id: str, checkpoint_json: str) -> StateRef | None:
    """The ``state_ref`` of a stored checkpoint (None: its state is inline); RunObjectUnreadable for one that is not
    a reference, or names a key outside the run's environment (a node writes the checkpoint item: the API never
    reads, for it, an object of another environment)."""
    raw = json.loads(checkpoint_json).get("state_ref")
    if raw is None:
        return None
    try:
        ref = StateRef.model_validate(raw)
    except ValidationError as exc:
        raise RunObjectUnreadable(f"run {run_id}: its checkpoint's state_ref is not a reference: {exc}") from exc
    if not ref.key.startswith(environment_runs_prefix(run_environment(run_id))):
        raise RunObjectUnreadable(f"run {run_id}: its checkpoint's state is stored outside its environment ({ref.key})")
    return ref


def load_checkpoint(run_id: str, checkpoint_json: str, objects: Any) -> Checkpoint:
    """The checkpoint stored as ``checkpoint_json`` for ``run_id``, its state read back from S3 if it is not inline
    (``objects``: a callable returning RunObjects, called only then); RunObjectUnreadable if that object is
    missing, or not the bytes written."""
    ref = stored_state_ref(run_id, checkpoint_json)
    if ref is None:
        return Checkpoint.model_validate_json(checkpoint_json)
    state = json.loads(objects().get(ref.key, ref))
    envelope = json.loads(checkpoint_json)
    del envelope["state_ref"]
    return Checkpoint.model_validate({**envelope, "state": state})
