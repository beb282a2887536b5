"""Hand-made cabs for tests: any headers and any data blocks, the lies of a hostile cab too.

cabarchive (the lab's builder) only writes honest cabs and holds them whole in memory;
these helpers write a cab block by block from whatever they are given, so a test can make
a cab of hundreds of MiB in a moment, or one whose headers say what its blocks do not.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from lab.store.cabformat import BLOCK_MAX, CabMember, checksum

RESERVE_PRESENT = 0x0004


@dataclass
class Folder:
    """A folder to write: its blocks as stored (payload, declared unpacked size)."""

    blocks: Sequence[tuple[bytes, int]]
    compression: int = 1  # MSZIP
    declared_blocks: int | None = None  # CFFOLDER.cCFData, when it should lie


@dataclass
class Reserve:
    """The optional reserved areas of CFHEADER, each CFFOLDER and each CFDATA."""

    header: bytes = b""
    folder: bytes = b""
    block: bytes = b""


@dataclass
class CabLayout:
    """Everything a cab's headers say, as written."""

    members: Sequence[CabMember]
    folders: Sequence[Folder]
    flags: int = 0
    reserve: Reserve | None = None
    checksums: bool = True
    cabinet_size: int | None = None  # CFHEADER.cbCabinet, when it should lie


def deflate_block(chunk: bytes, level: int = 6) -> tuple[bytes, int]:
    """One MSZIP block holding ``chunk``: ``CK`` and a raw deflate stream of its own."""
    packer = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return b"CK" + packer.compress(chunk) + packer.flush(), len(chunk)


def mszip_blocks(chunks: Iterable[bytes], level: int = 1) -> list[tuple[bytes, int]]:
    """MSZIP blocks for ``chunks`` (each at most 32 KiB); equal chunks are packed once."""
    packed: dict[bytes, tuple[bytes, int]] = {}
    blocks = []
    for chunk in chunks:
        if chunk not in packed:
            packed[chunk] = deflate_block(chunk, level)
        blocks.append(packed[chunk])
    return blocks


def chunked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes of ``pieces``, one after the other, cut into blocks of 32 KiB."""
    pending = bytearray()
    for piece in pieces:
        pending += piece
        whole = len(pending) - len(pending) % BLOCK_MAX
        for at in range(0, whole, BLOCK_MAX):
            yield bytes(pending[at : at + BLOCK_MAX])
        del pending[:whole]
    if pending:
        yield bytes(pending)


def members_in_order(named: Sequence[tuple[str, int]], folder: int = 0) -> list[CabMember]:
    """Members of one folder, each starting where the one before it ends."""
    members, offset = [], 0
    for name, size in named:
        members.append(CabMember(name, size, folder, offset))
        offset += size
    return members


def write_cab(out: BinaryIO, layout: CabLayout) -> None:
    """Write the cab ``layout`` describes to ``out``, block by block."""
    reserve = layout.reserve
    flags = layout.flags | (RESERVE_PRESENT if reserve else 0)
    header_size = 36 + (4 + len(reserve.header) if reserve else 0)
    folder_size = 8 + (len(reserve.folder) if reserve else 0)
    block_head = 8 + (len(reserve.block) if reserve else 0)
    files = b"".join(
        struct.pack("<IIHHHH", m.size, m.offset, m.folder, 0x4162, 0x5000, 0x20)
        + m.name.encode("utf-8", "surrogateescape")  # "\udcff" writes the byte 0xff
        + b"\0"
        for m in layout.members
    )
    files_at = header_size + folder_size * len(layout.folders)
    at = files_at + len(files)
    starts = []
    for folder in layout.folders:
        starts.append(at)
        at += sum(block_head + len(payload) for payload, _ in folder.blocks)
    out.write(
        struct.pack(
            "<4sIIIIIBBHHHHH",
            b"MSCF",
            0,
            layout.cabinet_size if layout.cabinet_size is not None else at,
            0,
            files_at,
            0,
            3,
            1,
            len(layout.folders),
            len(layout.members),
            flags,
            0,
            0,
        )
    )
    if reserve:
        out.write(struct.pack("<HBB", len(reserve.header), len(reserve.folder), len(reserve.block)))
        out.write(reserve.header)
    for start, folder in zip(starts, layout.folders, strict=True):
        declared = folder.declared_blocks
        count = min(len(folder.blocks), 0xFFFF) if declared is None else declared
        out.write(struct.pack("<IHH", start, count, folder.compression))
        if reserve:
            out.write(reserve.folder)
    out.write(files)
    for folder in layout.folders:
        for payload, size in folder.blocks:
            sizes = struct.pack("<HH", len(payload), size)
            stored_sum = checksum(sizes, checksum(payload)) if layout.checksums else 0
            out.write(struct.pack("<I", stored_sum) + sizes)
            if reserve:
                out.write(reserve.block)
            out.write(payload)
