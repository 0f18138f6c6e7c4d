"""Wheels that inflate to gigabytes from a few megabytes, built in milliseconds without inflating anything.

A deflate stream of zeros is periodic once each mebibyte ends with a full flush (the history is reset, so
every mebibyte compresses to the same bytes): N MiB of zeros is one block repeated N times. The zip around
it is written by hand, so a member can also state sizes it does not hold (the lying kind of bomb).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from runly.wire import JobSpec
from runly_core.bundle import write_bundle
from tests.support.bundles import GREETER_SCHEMA

MIB = 1024 * 1024
_ZEROS = bytes(MIB)


@cache
def _zeros_block() -> tuple[bytes, bytes]:
    """(one MiB of zeros, deflated and fully flushed; the end of the stream)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = deflater.compress(_ZEROS) + deflater.flush(zlib.Z_FULL_FLUSH)
    return block, deflater.flush()


@cache
def _zeros_crc(mebibytes: int) -> int:
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(_ZEROS, crc)
    return crc


@dataclass(frozen=True)
class RawMember:
    name: str
    data: bytes  # as stored: raw deflate (method 8) or the bytes themselves (method 0)
    crc: int
    size: int  # what the directory states the member inflates to
    method: int = 8


def zeros(name: str, mebibytes: int, *, stated_size: int | None = None) -> RawMember:
    """``mebibytes`` MiB of zeros, deflated; stating ``stated_size`` instead of the truth when given."""
    block, end = _zeros_block()
    size = mebibytes * MIB
    return RawMember(name, block * mebibytes + end, _zeros_crc(mebibytes), size if stated_size is None else stated_size)


def stored(name: str, data: bytes) -> RawMember:
    return RawMember(name, data, zlib.crc32(data), len(data), method=0)


def write_zip(
    path: Path,
    members: list[RawMember],
    *,
    unlisted: frozenset[str] = frozenset(),
    aliases: dict[str, str] | None = None,
) -> Path:
    """A plain (not zip64) zip of the members as given: the sizes and CRCs they state, the data they hold.

    ``unlisted`` members are written but left out of the directory (found only by a streaming reader);
    ``aliases`` adds directory entries (alias -> member name) that point at another member's data.
    """
    local = bytearray()
    directory = bytearray()
    entries = 0
    offsets: dict[str, int] = {}

    def listed(member: RawMember, name: bytes, offset: int) -> bytes:
        sizes = (member.crc, len(member.data), member.size)
        fixed = (20, 20, 0, member.method, 0, 0x21, *sizes, len(name), 0, 0, 0, 0, 0, offset)
        return struct.pack("<4s6H3L5H2L", b"PK\x01\x02", *fixed) + name

    for member in members:
        name = member.name.encode()
        offsets[member.name] = len(local)
        sizes = (member.crc, len(member.data), member.size)
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, member.method, 0, 0x21, *sizes, len(name), 0)
        local += name + member.data
        if member.name not in unlisted:
            directory += listed(member, name, offsets[member.name])
            entries += 1
    by_name = {member.name: member for member in members}
    for alias, target in (aliases or {}).items():
        directory += listed(by_name[target], alias.encode(), offsets[target])
        entries += 1
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, len(directory), len(local), 0)
    path.write_bytes(bytes(local) + bytes(directory) + end)
    return path


def wheel_members(name: str, version: str, payload: list[RawMember]) -> list[RawMember]:
    """The payload plus the metadata that makes the zip look like a wheel."""
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    return [
        stored(f"{name}/__init__.py", b""),
        *payload,
        stored(f"{name}-{version}.dist-info/METADATA", metadata),
    ]


def bomb_bundle(directory: Path, name: str, version: str, payload: list[RawMember], **zip_options: Any) -> Path:
    """A bundle whose project wheel holds ``payload`` (written by :func:`write_zip` with ``zip_options``),
    well-formed and correctly hashed in every other way."""
    wheels = directory / f"bomb-wheels-{name}-{version}"
    wheels.mkdir(parents=True, exist_ok=True)
    members = wheel_members(name, version, payload)
    wheel = write_zip(wheels / f"{name}-{version}-py3-none-any.whl", members, **zip_options)
    dest = directory / f"{name}-{version}.runly"
    write_bundle(
        dest,
        name=name,
        version=version,
        requires_python=">=3.11",
        project_wheel=wheel.name,
        jobs=[JobSpec(name="greet", entry_point=f"{name}.jobs:Greet", config_schema=GREETER_SCHEMA)],
        wheels=[wheel],
    )
    return dest
