"""S3 access for the API: the package feed."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from runly_core.records import run_log_prefix
from runly_core.run_objects import RunObjects

_CHUNK_NAME = re.compile(r"^(\d{8})\.log$")


@dataclass(frozen=True)
class LogChunk:
    """One shipped piece of a run attempt's output: ``runs/{environment}/{run_id}/logs/{attempt:04d}/{seq:08d}.log``."""

    key: str
    seq: int
    size: int


def log_prefix(run_id: str, attempt: int) -> str:
    return run_log_prefix(run_id, attempt)


@dataclass(frozen=True)
class StoredObject:
    """What S3 says of one object: its length, its ETag, and its version id (the feed bucket is versioned)."""

    size: int
    etag: str
    version_id: str | None


class Feed:
    @property
    def run_objects(self) -> RunObjects:
        """Runs' values stored out of their items (runly_core.run_objects), read with the API's credentials."""
        return RunObjects(self._s3, self.bucket)

    def __init__(self, bucket: str, *, client: Any = None) -> None:
        self.bucket = bucket
        # SigV4: the headers a presigned URL names are signed, so the uploader must send them as given (SigV2,
        # botocore's default for presigning in us-east-1, signs no If-None-Match and new buckets refuse it).
        self._s3 = client or boto3.client("s3", config=Config(signature_version="s3v4"))

    def presign_put(self, key: str, *, sha256_hex: str, size: int, expires_in: int) -> tuple[str, dict[str, str]]:
        """A presigned PUT that binds the length and the SHA-256 the client stated, and creates only.

        S3 itself rejects a body whose checksum differs; registration verifies again
        on its own, so a store that does not check (moto) cannot let a bad bundle in.
        ``If-None-Match: *`` makes S3 refuse the PUT (412) once an object is at the key:
        whoever holds the URL can create the object once, never replace it.
        """
        checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
        headers = {
            "Content-Type": "application/octet-stream",
            "If-None-Match": "*",
            "x-amz-checksum-sha256": checksum,
            "x-amz-sdk-checksum-algorithm": "SHA256",
        }
        url = self._s3.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ContentType": headers["Content-Type"],
                "ContentLength": size,
                "ChecksumSHA256": checksum,
                "ChecksumAlgorithm": "SHA256",
                "IfNoneMatch": headers["If-None-Match"],
            },
            ExpiresIn=expires_in,
        )
        return url, headers

    def head(self, key: str) -> StoredObject | None:
        """The object at ``key`` (its current version), or None when there is none."""
        try:
            answer = self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return StoredObject(
            size=int(answer["ContentLength"]), etag=str(answer["ETag"]), version_id=answer.get("VersionId")
        )

    def download(self, key: str, destination: Path, *, version_id: str | None = None) -> None:
        """The object (that very version, when given) into ``destination``."""
        extra = {"VersionId": version_id} if version_id else None
        self._s3.download_file(self.bucket, key, str(destination), ExtraArgs=extra)

    # ------------------------------------------------------------ run logs
    def log_chunks(self, run_id: str, attempt: int, *, from_seq: int = 0) -> Iterator[LogChunk]:
        """The attempt's chunks from ``from_seq`` on, in order (zero-padded names: key order is seq order)."""
        prefix = log_prefix(run_id, attempt)
        # Listing starts after "{seq:08d}", which sorts just before "{seq:08d}.log": chunk from_seq is included.
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "StartAfter": f"{prefix}{from_seq:08d}"}
        while True:
            page = self._s3.list_objects_v2(**request)
            for entry in page.get("Contents", []):
                name = entry["Key"][len(prefix) :]
                matched = _CHUNK_NAME.match(name)
                if matched:
                    yield LogChunk(key=entry["Key"], seq=int(matched.group(1)), size=int(entry["Size"]))
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]
            request.pop("StartAfter", None)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of an object from ``start`` (fewer at its end)."""
        if length <= 0:
            return b""
        body = self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")["Body"]
        return bytes(body.read())
