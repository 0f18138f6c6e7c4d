"""SHA-256 of every file under a directory, a few files at a time.

With no ``directory`` in the config the job makes its own sample: ``count`` files of random
bytes (the same bytes for the same ``seed``, on any node), among them some too large
(category ``TooLarge``) and some dangling symlinks (category ``FileNotFoundError``, the
exception's own type).

Each digest is written beside the others as ``<output_dir>/<file>.sha256`` the moment it is
known, so the work is safe to repeat and a resumed attempt loses nothing: ``finalize`` gathers
the digests into one ``SHA256SUMS`` file, whatever attempt computed them.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from pathlib import Path

from pydantic import Field

from runly import Disposition, ItemConfig, ItemFailed, ItemJob

CHUNK = 1024 * 1024


class ChecksumsConfig(ItemConfig):
    directory: str | None = Field(default=None, description="the files to checksum; a generated sample when absent")
    output_dir: str | None = Field(
        default=None, description="where the digests go [default: <directory>/.checksums, or the sample's own]"
    )
    max_file_kb: int = Field(default=256, ge=1, description="larger files fail with category TooLarge")
    count: int = Field(default=300, ge=1, le=100_000, description="files in the generated sample")
    file_kb: int = Field(default=16, ge=0, le=10_000, description="size of a generated file")
    seed: int = Field(default=7, description="the generated sample's bytes depend only on it")


class Checksums(ItemJob[ChecksumsConfig, str]):
    """SHA-256 of each file (an item is a path relative to the directory)."""

    parallelism = 4  # hashlib lets go of the GIL on large buffers: threads really overlap
    max_failed_ratio = 0.25
    item_retries = 1  # a file being replaced may fail once
    retry_backoff = 0.1

    def setup(self) -> None:
        self.generated = self.config.directory is None
        if self.config.directory is None:
            # One directory per run (not per attempt): a resumed attempt on this node reuses it.
            self.root = Path(tempfile.gettempdir()) / f"runly-checksums-{self.context.run_id}"
            config = self.config
            generate_sample(self.root, config.count, config.file_kb, config.max_file_kb, config.seed)
        else:
            self.root = Path(self.config.directory).resolve()
            if not self.root.is_dir():
                raise NotADirectoryError(f"{self.root} is not a directory")
        self.out = Path(self.config.output_dir) if self.config.output_dir else self.root / ".checksums"
        self.out.mkdir(parents=True, exist_ok=True)
        self.log.info("checksumming %s into %s", self.root, self.out)

    def items(self) -> list[str]:
        # Sorted: the same order on every attempt, so a resumed one can skip what is done.
        out = self.out.resolve()
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if (path.is_file() or path.is_symlink()) and out not in path.resolve(strict=False).parents
        )

    def process(self, name: str) -> str:
        path = self.root / name
        size = path.stat().st_size  # a dangling symlink raises FileNotFoundError: its category
        if size > self.config.max_file_kb * 1024:
            raise ItemFailed(f"{size:,} bytes, more than {self.config.max_file_kb} KB", category="TooLarge")
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(CHUNK):
                digest.update(chunk)
        sidecar = self.out / f"{name}.sha256"
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(f"{digest.hexdigest()} {size}\n", encoding="utf-8")
        return digest.hexdigest()

    def finalize(self, disposition: Disposition) -> dict[str, object] | None:
        try:
            if disposition is not Disposition.SUCCEEDED:
                return None  # the default summary
            lines, total_bytes = [], 0
            for name in self.items():
                sidecar = self.out / f"{name}.sha256"
                if sidecar.is_file():
                    digest, size = sidecar.read_text(encoding="utf-8").split()
                    lines.append(f"{digest}  {name}\n")
                    total_bytes += int(size)
            text = "".join(lines)
            sums = self.out / "SHA256SUMS"
            sums.write_text(text, encoding="utf-8")
            return {
                **self.summary(),
                "bytes": total_bytes,
                "sha256sums": None if self.generated else str(sums),
                "sha256sums_digest": hashlib.sha256(text.encode()).hexdigest(),
            }
        finally:
            if self.generated and disposition is not Disposition.LOST:
                shutil.rmtree(self.root, ignore_errors=True)  # the sample was this run's scratch


def generate_sample(root: Path, count: int, file_kb: int, max_file_kb: int, seed: int) -> None:
    """``count`` entries: mostly files of ``file_kb``; every 37th too large; every 50th a dangling symlink."""
    root.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        path = root / f"dir-{n // 100:03d}" / f"file-{n:05d}.bin"
        if path.exists() or path.is_symlink():
            continue  # made by an earlier attempt
        path.parent.mkdir(parents=True, exist_ok=True)
        if n % 50 == 49:
            os.symlink(root / "nowhere" / path.name, path)
            continue
        size = (max_file_kb + 1) * 1024 if n % 37 == 36 else file_kb * 1024
        data = random.Random(seed * 1_000_003 + n).randbytes(size)
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        os.replace(partial, path)
