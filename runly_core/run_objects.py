"""A run's values beyond the run item's inline sizes, as S3 objects of the feed bucket (docs/store.md).

An output over ``OUTPUT_INLINE_BYTES`` is stored as ``runs/{env}/{run_id}/output/{sha256}.json`` and the run item
keeps ``output_ref`` (``{"sha256", "bytes"}``) instead of ``output_json``, so the item a heartbeat rewrites stays
small and DynamoDB's 400 KB item limit no longer bounds the output (``runly.limits.MAX_OUTPUT_BYTES`` does).

Every put sends ``ChecksumSHA256`` (S3 refuses a body whose bytes do not match it: nothing torn is stored), and
every read checks the length and the sha256 the reference names: a mismatch raises ``RunObjectUnreadable``, never
a value that is not the one written. The key names its bytes (the sha256), so a put never replaces another value.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from runly_core.records import ObjectRef, run_objects_prefix

# Above this many bytes (UTF-8 JSON, as stored) an output goes to S3: its reference is about 100 bytes, and 4 KiB
# inline is at most 4 write units of the completing write, once.
OUTPUT_INLINE_BYTES = 4 * 1024


class RunObjectUnreadable(Exception):
    """A run's object is missing, or its bytes are not those its reference names (length or sha256)."""


def output_object_key(run_id: str, sha256: str) -> str:
    return f"{run_objects_prefix(run_id)}output/{sha256}.json"


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
