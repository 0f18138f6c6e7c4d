"""S3 access for the API: the package feed."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError


class Feed:
    def __init__(self, bucket: str, *, client: Any = None) -> None:
        self.bucket = bucket
        self._s3 = client or boto3.client("s3")

    def presign_put(self, key: str, *, sha256_hex: str, size: int, expires_in: int) -> tuple[str, dict[str, str]]:
        """A presigned PUT that binds the length and the SHA-256 the client stated.

        S3 itself rejects a body whose checksum differs; registration verifies again
        on its own, so a store that does not check (moto) cannot let a bad bundle in.
        """
        checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
        headers = {
            "Content-Type": "application/octet-stream",
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
            },
            ExpiresIn=expires_in,
        )
        return url, headers

    def size_of(self, key: str) -> int | None:
        try:
            return int(self._s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise

    def download(self, key: str, destination: Path) -> None:
        self._s3.download_file(self.bucket, key, str(destination))
