"""The MS-CAB container, read block by block: what a vendor cab is made of, trusting nothing.

Rules of this module:
- The headers (CFHEADER, CFFOLDER, CFFILE) are read and judged before any data block is
  touched: one cabinet (no multi-cabinet sets), folders stored or MSZIP-compressed, every
  member inside a folder of this cab, and the total the members declare no larger than the
  caller's limit (``[limits] cab_unpacked_max``). A cab past the limit is refused from its
  headers alone, however small it is on disk.
- The members of a folder follow each other from its first byte, with no gap and no
  overlap, as cab writers lay them out. So a folder unpacks to exactly the total of its
  members' declared sizes and never more: a header cannot make the reader unpack data no
  member owns.
- Data blocks (CFDATA) are read one at a time: at most 64 KiB in, 32 KiB out, as many as
  the folder declares (a folder of 0xFFFF blocks or more declares 0xFFFF: writers cap the
  16-bit count) and exactly as many as its members fill. A non-zero
  checksum is verified (the cab format's XOR of 32-bit words, as cabarchive and libmspack
  compute it). An MSZIP block is a raw deflate stream (after ``CK``) whose dictionary is the
  previous block's output, and it is inflated only up to the size it declares: a block
  that holds more is refused, not unpacked.
- Member bytes go to a MemberSink as they are unpacked, in the order they lie in the cab;
  nothing here holds more than one block. Whatever is wrong raises CabError saying where
  (which member, which block of which folder), without the cab's name: callers add it.
"""

from __future__ import annotations

import enum
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from lab.errors import CabError

SIGNATURE = b"MSCF"
BLOCK_MAX = 0x8000
"""The most a data block may unpack to (32 KiB), and the MSZIP window."""
MANY_BLOCKS = 0xFFFF
"""CFFOLDER.cCFData of a folder with this many blocks or more (writers cap the count)."""

_CFHEADER = struct.Struct("<4sIIIIIBBHHHHH")
_CFHEADER_RESERVE = struct.Struct("<HBB")
_CFFOLDER = struct.Struct("<IHH")
_CFFILE = struct.Struct("<IIHHHH")
_CFDATA = struct.Struct("<IHH")
_NAME_MAX = 256  # CB_MAX_FILENAME, with its terminating NUL
_PREV_CABINET, _NEXT_CABINET, _RESERVE_PRESENT = 0x0001, 0x0002, 0x0004
_CONTINUED = 0xFFFD  # iFolder values from 0xFFFD on: continued from or into another cabinet
_MSZIP_SIGNATURE = b"CK"


class Compression(enum.IntEnum):
    """How a folder's blocks are stored (CFFOLDER.typeCompress, low four bits)."""

    NONE = 0
    MSZIP = 1


_UNSUPPORTED = {2: "Quantum", 3: "LZX"}


@dataclass(frozen=True)
class CabMember:
    """One CFFILE: a member's name, declared size, folder and offset in that folder."""

    name: str
    size: int
    folder: int
    offset: int


@dataclass(frozen=True)
class CabFolder:
    """One CFFOLDER: where its first data block is, how many it declares, how they are stored."""

    start: int
    blocks: int
    compression: Compression


@dataclass(frozen=True)
class CabIndex:
    """What a cab's headers say, checked: its folders and its members in unpacking order."""

    size: int
    folders: tuple[CabFolder, ...]
    members: tuple[CabMember, ...]
    block_reserve: int

    @property
    def unpacked(self) -> int:
        """The total size of every member: what the cab unpacks to."""
        return sum(member.size for member in self.members)


class MemberSink(Protocol):
    """Receives members' bytes as they are unpacked: begin, any number of writes, end."""

    def begin(self, member: CabMember) -> None:
        """A member starts."""
        ...

    def write(self, data: memoryview) -> None:
        """The next bytes of the member that began last."""
        ...

    def end(self, member: CabMember) -> None:
        """The member is complete (exactly its declared size was written)."""
        ...


def read_index(source: BinaryIO, limit: int) -> CabIndex:
    """The checked headers of the cab in ``source``; CabError when they are wrong or the
    members declare more than ``limit`` bytes in all."""
    file_size = _seek(source, 0, os.SEEK_END)
    header = _read_at(source, 0, _CFHEADER.size)
    if header[:4] != SIGNATURE:
        raise CabError("not a cab file (no MSCF signature)")
    if len(header) < _CFHEADER.size:
        raise CabError("not a cab file (too short for a cab header)")
    (_, _, size, _, files_at, _, minor, major, n_folders, n_files, flags, _, cabinet) = (
        _CFHEADER.unpack(header)
    )
    if (major, minor) != (1, 3):
        raise CabError(f"cab format version {major}.{minor} is not supported (only 1.3)")
    if flags & (_PREV_CABINET | _NEXT_CABINET) or cabinet != 0:
        raise CabError("the cab is part of a multi-cabinet set, which is not supported")
    if size > file_size:
        raise _corrupt(f"the header says {size} bytes, the file has {file_size} (truncated)")
    if n_files == 0:
        raise _corrupt("it holds no members")
    at = _CFHEADER.size
    folder_reserve = block_reserve = 0
    if flags & _RESERVE_PRESENT:
        raw = _read_exact(source, at, _CFHEADER_RESERVE.size, "the header's reserve sizes")
        header_reserve, folder_reserve, block_reserve = _CFHEADER_RESERVE.unpack(raw)
        at += _CFHEADER_RESERVE.size + header_reserve
    folders: list[CabFolder] = []
    for number in range(n_folders):
        raw = _read_exact(source, at, _CFFOLDER.size, f"folder {number}'s header")
        start, blocks, compression = _CFFOLDER.unpack(raw)
        compression &= 0x000F
        try:
            folders.append(CabFolder(start, blocks, Compression(compression)))
        except ValueError:
            kind = _UNSUPPORTED.get(compression, f"type {compression}")
            raise CabError(f"folder {number}: {kind} compression is not supported") from None
        at += _CFFOLDER.size + folder_reserve
    members = _read_members(source, files_at, n_files, len(folders))
    index = CabIndex(size, tuple(folders), members, block_reserve)
    if index.unpacked > limit:
        raise CabError(
            f"it unpacks to {index.unpacked} bytes, more than the {limit} bytes "
            "[limits] cab_unpacked_max allows"
        )
    _check_capacity(folders, members)
    return index


def unpack(source: BinaryIO, index: CabIndex, sink: MemberSink) -> None:
    """Unpack every member of the cab in ``source`` (whose checked headers are ``index``)
    into ``sink``, block by block; CabError at the first block or member that is wrong."""
    by_folder = _by_folder(index.members)
    for number, folder in enumerate(index.folders):
        members = by_folder.get(number, [])
        total = sum(m.size for m in members)
        if total == 0:
            for member in members:
                sink.begin(member)
                sink.end(member)
            continue
        placed = _Dispatch(members, sink)
        count = 0
        for data in _blocks(source, index, number, total):
            placed.write(data)
            count += 1
        if count != folder.blocks and not (folder.blocks == MANY_BLOCKS and count > MANY_BLOCKS):
            raise _corrupt(
                f"folder {number} declares {folder.blocks} data blocks, its members fill {count}"
            )


def show(member: str) -> str:
    """A member name quoted for a message, escaped when it holds unprintable characters."""
    return f"'{member}'" if member.isprintable() else repr(member)


def checksum(data: bytes | memoryview, seed: int = 0) -> int:
    """The cab format's checksum of ``data`` (CFDATA.csum), continuing from ``seed``."""
    whole = len(data) - len(data) % 4
    # The XOR of all the 32-bit little-endian words, folded half onto half on one integer:
    # a few big-integer operations instead of a Python loop over every word.
    value = int.from_bytes(data[:whole], "little")
    words = whole // 4
    while words > 1:
        half = words // 2
        value = (value >> (32 * half)) ^ (value & ((1 << (32 * half)) - 1))
        words -= half
    value ^= seed
    tail = bytes(data[whole:])
    # The format's quirk: the last one to three bytes are taken most significant first.
    if tail:
        value ^= int.from_bytes(tail, "big")
    return value


# --- internals -------------------------------------------------------------------------------


class _Dispatch:
    """Hands unpacked folder bytes to the members they belong to, in offset order."""

    def __init__(self, members: list[CabMember], sink: MemberSink) -> None:
        self._members: Iterator[CabMember] = iter(members)
        self._sink = sink
        self._current: CabMember | None = None
        self._left = 0
        self._next()

    def _next(self) -> None:
        while True:
            if self._current is not None:
                self._sink.end(self._current)
            self._current = next(self._members, None)
            if self._current is None:
                return
            self._sink.begin(self._current)
            self._left = self._current.size
            if self._left:
                return

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            # _blocks never yields more than the members declare, so a member is open here.
            taken = min(self._left, len(view))
            self._sink.write(view[:taken])
            view = view[taken:]
            self._left -= taken
            if self._left == 0:
                self._next()


def _blocks(source: BinaryIO, index: CabIndex, number: int, total: int) -> Iterator[bytes]:
    """The unpacked data blocks of folder ``number``, up to its members' ``total`` bytes."""
    folder = index.folders[number]
    _seek(source, folder.start)
    dictionary = b""
    produced = 0
    block = 0
    while produced < total:
        if block >= folder.blocks and folder.blocks < MANY_BLOCKS:
            raise _corrupt(
                f"folder {number} ends after {produced} bytes, its members declare {total}"
            )
        where = f"block {block} of folder {number}"
        head = _read_next(source, _CFDATA.size + index.block_reserve, where)
        stored_sum, packed, size = _CFDATA.unpack_from(head)
        if not 0 < size <= BLOCK_MAX:
            raise _corrupt(f"{where} declares {size} bytes (a block holds 1 to {BLOCK_MAX})")
        payload = _read_next(source, packed, where)
        if stored_sum and checksum(head[4:8], checksum(payload)) != stored_sum:
            raise _corrupt(f"{where}: the checksum does not match its data")
        if folder.compression is Compression.MSZIP:
            data = _inflate(payload, size, dictionary, where)
            dictionary = data
        elif packed != size:
            raise _corrupt(f"{where} is stored, but declares {packed} bytes in and {size} out")
        else:
            data = payload
        if produced + size > total:
            raise _corrupt(f"folder {number} holds more than the {total} bytes its members declare")
        produced += size
        block += 1
        yield data


def _inflate(payload: bytes, size: int, dictionary: bytes, where: str) -> bytes:
    """One MSZIP block unpacked to exactly ``size`` bytes, never more."""
    if payload[:2] != _MSZIP_SIGNATURE:
        raise _corrupt(f"{where} has no MSZIP signature")
    inflater = (
        zlib.decompressobj(-zlib.MAX_WBITS, zdict=dictionary)
        if dictionary
        else zlib.decompressobj(-zlib.MAX_WBITS)
    )
    try:
        data = inflater.decompress(payload[2:], size)
        # One more byte asked for: any at all means the block holds more than it declares.
        more = inflater.decompress(inflater.unconsumed_tail, 1) if inflater.unconsumed_tail else b""
    except zlib.error as exc:
        raise _corrupt(f"{where} is not valid MSZIP data ({exc})") from None
    if more:
        raise _corrupt(f"{where} unpacks to more than the {size} bytes it declares")
    if len(data) != size:
        raise _corrupt(f"{where} unpacks to {len(data)} bytes, it declares {size}")
    return data


def _read_members(source: BinaryIO, at: int, count: int, n_folders: int) -> tuple[CabMember, ...]:
    members: list[CabMember] = []
    names: set[str] = set()
    for number in range(count):
        raw = _read_at(source, at, _CFFILE.size + _NAME_MAX)
        if len(raw) < _CFFILE.size:
            raise _corrupt(f"the file ends inside member {number}'s header")
        size, offset, folder, _, _, _ = _CFFILE.unpack_from(raw)
        end = raw.find(b"\0", _CFFILE.size)
        if end < 0:
            raise _corrupt(f"member {number}'s name is not terminated within {_NAME_MAX} bytes")
        try:
            name = raw[_CFFILE.size : end].decode("utf-8")
        except UnicodeDecodeError:
            raise _corrupt(f"member {number}'s name is not UTF-8 text") from None
        if name in names:
            raise CabError(f"member {show(name)} appears twice")
        names.add(name)
        if folder >= _CONTINUED:
            raise CabError(
                f"member {show(name)} continues in another cabinet (multi-cabinet sets are not "
                "supported)"
            )
        if folder >= n_folders:
            raise _corrupt(f"member {show(name)} is in folder {folder}, the cab has {n_folders}")
        members.append(CabMember(name, size, folder, offset))
        at += end + 1
    ordered = sorted(members, key=lambda m: (m.folder, m.offset, m.size))
    end_of = dict.fromkeys(range(n_folders), 0)
    for member in ordered:
        if member.offset != end_of[member.folder]:
            raise _corrupt(
                f"member {show(member.name)} starts at byte {member.offset} of folder "
                f"{member.folder}, the member before it ends at {end_of[member.folder]} "
                "(members must follow each other)"
            )
        end_of[member.folder] = member.offset + member.size
    return tuple(ordered)


def _by_folder(members: tuple[CabMember, ...]) -> dict[int, list[CabMember]]:
    """The members of each folder, in the order they were given."""
    grouped: dict[int, list[CabMember]] = {}
    for member in members:
        grouped.setdefault(member.folder, []).append(member)
    return grouped


def _check_capacity(folders: list[CabFolder], members: tuple[CabMember, ...]) -> None:
    """Refuse a folder whose declared blocks could not hold what its members declare."""
    by_folder = _by_folder(members)
    for number, folder in enumerate(folders):
        total = sum(m.size for m in by_folder.get(number, []))
        if folder.blocks < MANY_BLOCKS and folder.blocks * BLOCK_MAX < total:
            raise _corrupt(
                f"folder {number}'s {folder.blocks} data blocks cannot hold the {total} bytes "
                "its members declare"
            )


def _seek(source: BinaryIO, at: int, whence: int = os.SEEK_SET) -> int:
    try:
        return source.seek(at, whence)
    except OSError as exc:
        raise _unreadable(exc) from None


def _read_at(source: BinaryIO, at: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``at`` (fewer at the end of the file)."""
    _seek(source, at)
    return _read(source, size)


def _read_exact(source: BinaryIO, at: int, size: int, what: str) -> bytes:
    """Exactly ``size`` bytes at ``at``; CabError naming ``what`` the file ends inside."""
    _seek(source, at)
    return _read_next(source, size, what)


def _read_next(source: BinaryIO, size: int, what: str) -> bytes:
    data = _read(source, size)
    if len(data) != size:
        raise _corrupt(f"the file ends inside {what}")
    return data


def _read(source: BinaryIO, size: int) -> bytes:
    try:
        return source.read(size)
    except OSError as exc:
        raise _unreadable(exc) from None


def _unreadable(exc: OSError) -> CabError:
    # A read that fails is the cab's problem, not the writer's: say so as a CabError.
    return CabError(f"cannot be read: {exc.strerror or exc}")


def _corrupt(problem: str) -> CabError:
    return CabError(f"corrupt cab: {problem}")
