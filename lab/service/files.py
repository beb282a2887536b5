"""Image downloads from one front end's file store: safe paths, strong ETags, conditional
requests, Range and If-Range.

Rules of this module:
- Only files inside the store are ever served. A request path is checked segment by segment
  (no empty, ``.``, ``..`` or hidden segments, no backslashes or NULs, whatever encoding
  carried them) and then resolved with symlinks followed; a result outside the store's
  real root, or anything that is not a regular file, is "not here" (404). The real path
  of a name is kept (thousands of phones fetch the same few files) as long as it still
  names a regular file, not a symlink; and the file actually opened is checked to lie
  inside the store (its path as the kernel reports it for the open descriptor), so a
  directory swapped for a symlink after the path was kept is refused too.
- The ETag is strong and derived from the content (SHA-256), so it is the same on every
  front end holding the same image and a phone can resume a download on another server.
  It is computed once per file version (device, inode, size, mtime) and cached.
- Every file answer (200, 206, 304, 412, 416) carries the ETag and ``Last-Modified`` (the
  file's mtime, to the second, as an HTTP-date).
- Conditional requests follow RFC 9110 section 13.2.2, in its order: ``If-Match`` (412 when
  no listed ETag is this one by strong comparison; ``*`` matches, the file exists), else
  ``If-Unmodified-Since`` (412 when the file changed after it); then ``If-None-Match`` (304
  when a listed ETag is this one by weak comparison, or ``*``), else ``If-Modified-Since``
  (304 when the file has not changed since); only then Range and If-Range. A 304 has no
  body. aiohttp parses the headers; a date it cannot read is ignored, as the RFC says.
- ``Range: bytes=...`` (one range) is honoured unless ``If-Range`` is present and does not
  match the current ETag exactly; then the whole file is sent with 200, never a mix. An
  unsatisfiable range gets 416 with ``Content-Range: bytes */<size>``. Positions are ASCII
  digits only; one longer than MAX_POSITION_DIGITS (past the end of any file) is read as
  BEYOND_ANY_FILE rather than converted, so no header can make the parser fail. Any Range
  that is not one well-formed byte range is ignored (the whole file, 200).
- Bytes are read from the page cache without blocking where the system can say what is
  there (``RWF_NOWAIT``), in a worker thread otherwise (a thread hop costs the loop more
  than copying a cached chunk), and written through aiohttp, which waits for the client
  (flow control), so a slow reader holds a transfer open without the server buffering
  the file.
- A small file (up to CONTENT_CACHE_FILE) read whole from the page cache is kept in memory
  for the next requests of the same file version, as its ETag is (within
  CONTENT_CACHE_BYTES in all, the least recently sent dropped first): thousands of phones
  fetch the same image, and each read would copy it again. Opening the file and checking
  where it lies still happen for every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import formatdate
from enum import Enum
from pathlib import Path

from aiohttp import ETag, web

from lab.service.problems import Diagnostic, Problem

CHUNK_SIZE = 1024 * 1024
TLS_WRITE_SIZE = 256 * 1024
"""How much of a chunk is handed to the TLS transport at once."""
ETAG_CACHE_SIZE = 4096
CONTENT_CACHE_FILE = 4 * 1024 * 1024
"""The largest file whose content is kept in memory between requests."""
CONTENT_CACHE_BYTES = 64 * 1024 * 1024
"""How much file content a front end keeps in memory in all."""
PATH_CACHE_SIZE = 4096
_FD_PATHS = Path("/proc/self/fd")
_FORBIDDEN_CHARACTERS = ("\\", "\x00")
MAX_POSITION_DIGITS = 18
"""The most significant digits a Range position is converted from (10**18 bytes is more
than any file store holds)."""
BEYOND_ANY_FILE: int = 10**MAX_POSITION_DIGITS
"""What a longer position is read as: past the end of every file."""
# One byte range, ASCII only (str.isdigit() would take "²" and int() would then fail).
_BYTE_RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)-([0-9]*)[ \t]*", re.ASCII | re.I)
_ANY = "*"


class Precondition(Enum):
    """What a request's conditional headers make of a file answer (RFC 9110 section 13)."""

    PROCEED = 200
    NOT_MODIFIED = 304
    FAILED = 412


class ImageFiles:
    """One front end's file store (lab.filestore) as the service reads and serves it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._etags: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()
        self._contents: OrderedDict[tuple[int, int, int, int], bytes] = OrderedDict()
        self._content_bytes = 0
        self._paths: OrderedDict[str, Path] = OrderedDict()
        self._root: tuple[tuple[int, int], Path] | None = None
        # Where the kernel says an open descriptor's file is: the last word on what was
        # opened. Without it every name is resolved afresh and nothing is kept.
        self._fd_paths = _FD_PATHS.is_dir()

    def resolve(self, relative: str) -> Path:
        """The real path of ``relative`` inside the store; Problem (400/404) otherwise."""
        real = self._paths.get(relative) if self._fd_paths else None
        if real is not None:
            # Still a regular file, not a symlink; where it lies is checked once it is open.
            try:
                kept = stat.S_ISREG(os.lstat(real).st_mode)
            except OSError:
                kept = False
            if kept:
                return real
            del self._paths[relative]
        real = self._resolve(relative)
        if self._fd_paths:
            self._paths[relative] = real
            while len(self._paths) > PATH_CACHE_SIZE:
                self._paths.popitem(last=False)
        return real

    def _real_root(self) -> Path:
        """The store's real root, resolved again whenever the root itself changes."""
        st = os.stat(self.root)
        identity = (st.st_dev, st.st_ino)
        if self._root is None or self._root[0] != identity:
            self._root = (identity, self.root.resolve(strict=True))
        return self._root[1]

    def _resolve(self, relative: str) -> Path:
        if any(ch in relative for ch in _FORBIDDEN_CHARACTERS) or "%" in relative:
            # A percent sign left after decoding means a double-encoded path: refuse it
            # rather than guess which decoding the client meant.
            raise Problem(Diagnostic.BAD_PATH, "the file path holds characters no image has")
        segments = relative.split("/")
        if any(s in ("", ".", "..") or s.startswith(".") for s in segments):
            raise Problem(Diagnostic.BAD_PATH, "the file path has empty, dot or hidden segments")
        try:
            root = self._real_root()
            real = (root / relative).resolve(strict=True)
        except (OSError, RuntimeError):
            raise Problem(
                Diagnostic.FILE_NOT_FOUND, f"this server has no file {relative}"
            ) from None
        if not real.is_relative_to(root) or not real.is_file():
            raise Problem(Diagnostic.FILE_NOT_FOUND, f"this server has no file {relative}")
        return real

    def _inside(self, fd: int) -> bool:
        """Whether the file open as ``fd`` lies inside the store (the kernel's word for it)."""
        if not self._fd_paths:
            return True  # resolve() checked it just before, as no path is kept
        try:
            opened = os.readlink(f"{_FD_PATHS}/{fd}")
            inside = os.path.join(self._real_root(), "")  # with its trailing separator
        except OSError:
            return False
        return opened.startswith(inside)

    async def etag(self, fd: int, st: os.stat_result) -> str:
        """The strong ETag of the open file ``fd`` whose stat is ``st``."""
        key = _version(st)
        cached = self._etags.get(key)
        if cached is None:
            cached = await asyncio.to_thread(_content_etag, fd, st.st_size)
            self._etags[key] = cached
            while len(self._etags) > ETAG_CACHE_SIZE:
                self._etags.popitem(last=False)
        return cached

    def content(self, fd: int, st: os.stat_result) -> memoryview | None:
        """The whole content of the small open file ``fd`` (stat ``st``), kept in memory for
        that file version; None for a larger file, or one the page cache does not hold."""
        key = _version(st)
        kept = self._contents.get(key)
        if kept is not None:
            self._contents.move_to_end(key)
            return memoryview(kept)
        if st.st_size > CONTENT_CACHE_FILE:
            return None
        read = read_cached(fd, st.st_size, 0)
        if read is None or len(read) != st.st_size:
            return None  # not all in the page cache (a thread reads it), or changed meanwhile
        kept = bytes(read)
        self._contents[key] = kept
        self._content_bytes += len(kept)
        while self._content_bytes > CONTENT_CACHE_BYTES:
            _, dropped = self._contents.popitem(last=False)
            self._content_bytes -= len(dropped)
        return memoryview(kept)

    async def send(
        self,
        request: web.BaseRequest,
        path: Path,
        *,
        progress: Callable[[int], None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """Answer ``request`` with the file at ``path`` (from resolve), honouring Range;
        ``headers`` are added to the answer's own."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            raise Problem(
                Diagnostic.FILE_NOT_FOUND, f"this server has no file {path.name}"
            ) from None
        pending: asyncio.Future[bytes] | None = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not self._inside(fd):
                raise Problem(Diagnostic.FILE_NOT_FOUND, f"this server has no file {path.name}")
            etag = await self.etag(fd, st)
            size = st.st_size
            modified = int(st.st_mtime)  # HTTP-dates have whole seconds
            last_modified = formatdate(modified, usegmt=True)
            validators = {**(headers or {}), "ETag": etag, "Last-Modified": last_modified}
            precondition = evaluate_preconditions(
                request, etag, datetime.fromtimestamp(modified, UTC)
            )
            if precondition is Precondition.FAILED:
                raise Problem(
                    Diagnostic.PRECONDITION_FAILED,
                    f"the file is not the version the request's conditions name"
                    f" (ETag {etag}, Last-Modified {last_modified})",
                    headers=validators,
                )
            if precondition is Precondition.NOT_MODIFIED:
                response = web.StreamResponse(status=304, headers=validators)
                await response.prepare(request)
                await response.write_eof()
                return response
            start, end = 0, size
            status = 200
            answer = {
                **validators,
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            try:
                wanted = parse_range(request.headers.get("Range"), size)
            except Problem as unsatisfiable:
                unsatisfiable.headers.update(validators)
                raise
            if wanted is not None and if_range_holds(
                request.headers.get("If-Range"), etag, last_modified
            ):
                start, end = wanted
                status = 206
                answer["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            response = web.StreamResponse(status=status, headers=answer)
            response.content_length = end - start
            await response.prepare(request)
            if request.method == "HEAD":
                await response.write_eof()
                return response
            loop = asyncio.get_running_loop()
            whole = self.content(fd, st)
            offset = start
            while offset < end:
                size = min(CHUNK_SIZE, end - offset)
                chunk: bytes | memoryview | None = (
                    whole[offset : offset + size]
                    if whole is not None
                    else read_cached(fd, size, offset)
                )
                if chunk is None:
                    pending = loop.run_in_executor(None, os.pread, fd, size, offset)
                    chunk = await pending
                    pending = None
                if not chunk:
                    # The file shrank under us: the promised length cannot be kept.
                    raise ConnectionResetError(f"{path} shrank while being sent")
                try:
                    # TLS encrypts a chunk in one piece: in quarters, half the work (the
                    # encrypted output is gathered in smaller buffers).
                    view = memoryview(chunk)
                    for part in range(0, len(view), TLS_WRITE_SIZE):
                        await response.write(view[part : part + TLS_WRITE_SIZE])
                except ConnectionResetError:
                    # The phone went away, or immediate maintenance cut the connection: a
                    # transfer ending early is the phone's to resume, not a server error.
                    return response
                offset += len(chunk)
                if progress is not None:
                    progress(len(chunk))
            await response.write_eof()
            return response
        finally:
            if pending is not None and not pending.done():
                # A worker thread may still read from fd; close it when that read is done.
                pending.add_done_callback(lambda _: os.close(fd))
            else:
                os.close(fd)


def _version(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one version of a file from another: device, inode, size, mtime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _content_etag(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, CHUNK_SIZE, offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return f'"{digest.hexdigest()[:32]}"'


_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def read_cached(fd: int, size: int, offset: int) -> memoryview | None:
    """Up to ``size`` bytes of ``fd`` at ``offset`` that are in the page cache, read without
    waiting for a disk; None when none are (or the system cannot tell): read them in a
    thread. Empty at the end of the file."""
    if _NOWAIT is None:
        return None
    buffer = bytearray(size)
    try:
        got = os.preadv(fd, [buffer], offset, _NOWAIT)
    except OSError:
        return None  # not cached (EAGAIN), or not supported here; a thread will know
    return memoryview(buffer)[:got]


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range ``header`` asks for as [start, end); None to send the whole file.

    Malformed or multi-range headers are ignored (RFC 9110 allows it); a range that
    starts at or after the end of the file, or an empty suffix, raises a 416 Problem.
    """
    if header is None:
        return None
    match = _BYTE_RANGE.fullmatch(header)
    if match is None:
        return None
    first, last = match.groups()
    if first == "":
        if last == "":
            return None  # "bytes=-" names no range at all
        suffix = _position(last)
        if suffix == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size
    start = _position(first)
    if last == "":
        end = size
    else:
        if _position(last) < start:
            return None
        end = min(_position(last) + 1, size)
    if start >= size:
        raise _unsatisfiable(size)
    return start, end


def _position(digits: str) -> int:
    """A byte position written in ASCII digits, BEYOND_ANY_FILE when it is that far."""
    significant = digits.lstrip("0")
    if len(significant) > MAX_POSITION_DIGITS:
        return BEYOND_ANY_FILE
    return int(significant or "0")


def evaluate_preconditions(request: web.BaseRequest, etag: str, modified: datetime) -> Precondition:
    """What the conditional headers of ``request`` make of the file whose strong ``etag``
    and last modification (whole seconds) are given, in RFC 9110 section 13.2.2's order."""
    if_match = request.if_match
    if if_match is not None:
        if not _matches(request, "If-Match", if_match, etag, weak=False):
            return Precondition.FAILED
    else:
        unmodified_since = _http_date(lambda: request.if_unmodified_since)
        if unmodified_since is not None and modified > unmodified_since:
            return Precondition.FAILED
    read = request.method in ("GET", "HEAD")
    if_none_match = request.if_none_match
    if if_none_match is not None:
        if _matches(request, "If-None-Match", if_none_match, etag, weak=True):
            return Precondition.NOT_MODIFIED if read else Precondition.FAILED
    elif read:
        modified_since = _http_date(lambda: request.if_modified_since)
        if modified_since is not None and modified <= modified_since:
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


def _matches(
    request: web.BaseRequest, name: str, listed: tuple[ETag, ...], etag: str, *, weak: bool
) -> bool:
    """Whether ``listed`` (a header's ETags) names ``etag``: by weak comparison (opaque
    values alone) or strong (neither weak); a lone ``*`` names any file that exists."""
    if request.headers.get(name, "").strip() == _ANY:
        return True  # "*" unquoted; aiohttp gives '"*"' the same value
    value = etag.strip('"')
    return any(tag.value == value and (weak or not tag.is_weak) for tag in listed)


def _http_date(parsed: Callable[[], datetime | None]) -> datetime | None:
    """A conditional header's date as aiohttp parses it (``parsed`` reads it); None when
    absent or no date this server can hold (a year of thirty digits): the RFC says to
    ignore such a header."""
    try:
        return parsed()
    except (OverflowError, ValueError):
        return None


def if_range_holds(header: str | None, etag: str, last_modified: str) -> bool:
    """True when a Range may be honoured: no If-Range, or one naming this exact version."""
    if header is None:
        return True
    value = header.strip()
    if value.startswith(('"', "W/")):
        # Only a strong, identical ETag proves the client holds the same bytes.
        return value == etag
    return value == last_modified


def _unsatisfiable(size: int) -> Problem:
    return Problem(
        Diagnostic.RANGE_NOT_SATISFIABLE,
        f"the requested range lies outside the file ({size} bytes)",
        headers={"Content-Range": f"bytes */{size}"},
    )
