"""Device log upload: ``POST /RequestHandler/ucdevicelog.upx?type=CELog&file=<name>&mac=<MAC>``.

Rules of this module (docs/wire-protocol.md, "Device logs"):

- The query names the log type, the file and the phone. A MAC address that does not parse,
  or a file name that is not one plain name (path parts, separators, hidden or odd
  characters), is refused with 400 before anything is read; a type or an extension the
  device-update configuration does not accept (``ValidLogFileTypes``,
  ``ValidLogFileExtensions``) with 415; an empty body with 400.
- ``MaxLogFileSize``: a Content-Length over it is refused with 413 before the body is read;
  a body without one (chunked) is counted as it streams and refused the moment it passes
  the limit. The body goes to disk as it arrives, so memory holds at most one write batch
  and never more than the limit.
- A log is stored as ``<state>/servers/<fe>/DeviceLogs/<MAC>/<timestamp>_<file>``: written
  to a hidden temporary file in that folder, synced, then renamed, so a cut or refused
  upload leaves nothing and nobody sees half a log. Timestamps (UTC, microseconds) are
  unique in a store and sort in upload order.
- ``MaxLogCacheLimit`` caps each device's folder: after a log is stored, the oldest logs of
  that device are deleted until the folder holds no more than the limit. The log just
  stored is never deleted, so one log larger than the limit stays, alone. Temporary files
  no upload of this process is writing (left by a killed process) are deleted then too.
- Every upload that names a valid device is published as a ``device.log`` event with its
  outcome: ``status`` 200 (stored), the refusal's status (413, 415, 400), or 0 when the
  upload was cut before the whole log arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import StreamReader

from lab.devconfig import DeviceUpdateConfig
from lab.errors import IdentityError
from lab.events import EventBus
from lab.filestore import SERVERS_DIR
from lab.models import normalise_mac
from lab.service.problems import Diagnostic, Problem

LOG_PATH = "/RequestHandler/ucdevicelog.upx"
EXTERNAL_LOG_PATH = "/RequestHandlerExt/ucdevicelog.upx"
LOGS_DIR = "DeviceLogs"
# Bytes gathered before one write to disk (a thread hop per write, not per TCP segment).
WRITE_BATCH = 256 * 1024
TEMP_SUFFIX = ".part"
STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
MAX_NAME = 128
_PLAIN_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._+-]{{0,{MAX_NAME - 1}}}$")
_PATH_PARTS = ("/", "\\", ":", "\x00")
_TICK = timedelta(microseconds=1)

T = TypeVar("T")


def log_store_path(state_dir: Path, server: str) -> Path:
    """``<state>/servers/<server>/DeviceLogs``: one front end's device logs."""
    return state_dir / SERVERS_DIR / server / LOGS_DIR


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LogUpload:
    """What an upload's query names: the log type, the file name and the phone's MAC."""

    log_type: str
    file_name: str
    mac: str

    @property
    def summary(self) -> str:
        """A few words for the audit log."""
        return f"{self.log_type} log {self.file_name}"


@dataclass(frozen=True)
class StoredLog:
    """A log written to its device's folder, and the older logs the cache limit deleted."""

    upload: LogUpload
    path: Path
    size: int
    deleted: tuple[str, ...] = ()


def parse_log_upload(query: Mapping[str, str]) -> LogUpload:
    """The upload a query names; Problem (400) when a parameter is missing or unsafe."""
    values = {}
    for name in ("type", "file", "mac"):
        value = query.get(name, "").strip()
        if not value:
            raise Problem(
                Diagnostic.MALFORMED_REQUEST,
                f"the log upload lacks its {name!r} parameter (type, file and mac are needed)",
            )
        values[name] = value
    try:
        mac = normalise_mac(values["mac"])
    except IdentityError as exc:
        raise Problem(Diagnostic.MALFORMED_REQUEST, str(exc)) from None
    name = values["file"]
    if any(part in name for part in _PATH_PARTS) or name in (".", ".."):
        raise Problem(
            Diagnostic.BAD_PATH, f"the file name {name!r} has path parts; give a bare file name"
        )
    if not _PLAIN_NAME.match(name):
        raise Problem(
            Diagnostic.BAD_PATH,
            f"the file name {name!r} is not a plain file name (letters, digits and . _ + -,"
            f" not starting with a dot, at most {MAX_NAME} characters)",
        )
    return LogUpload(values["type"], name, mac)


def check_accepted(upload: LogUpload, config: DeviceUpdateConfig) -> None:
    """Problem (415) when the configuration does not accept the upload's type or extension."""
    if not config.accepts_log_type(upload.log_type):
        accepted = ", ".join(config.valid_log_file_types)
        raise Problem(
            Diagnostic.LOG_TYPE_NOT_ACCEPTED,
            f"log type {upload.log_type!r} is not accepted (ValidLogFileTypes: {accepted})",
        )
    if not config.accepts_log_file(upload.file_name):
        accepted = " ".join(config.valid_log_file_extensions)
        raise Problem(
            Diagnostic.LOG_EXTENSION_NOT_ACCEPTED,
            f"the extension of {upload.file_name!r} is not accepted"
            f" (ValidLogFileExtensions: {accepted})",
        )


def _too_large(limit: int) -> Problem:
    # The rest of the body is never read, so the connection cannot be reused.
    return Problem(
        Diagnostic.BODY_TOO_LARGE,
        f"the log is larger than MaxLogFileSize ({limit} bytes)",
        close=True,
    )


class DeviceLogStore:
    """One front end's device logs, one folder per MAC address (see the module rules)."""

    def __init__(
        self,
        root: Path,
        *,
        server: str,
        events: EventBus | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.root = root
        self.server = server
        self.events = events
        self._now = now
        self._last = datetime.min.replace(tzinfo=UTC)
        self._writing: set[str] = set()

    def folder(self, mac: str) -> Path:
        """The folder of the device with ``mac`` (normalised, so never a path of its own)."""
        return self.root / normalise_mac(mac)

    async def receive(
        self,
        upload: LogUpload,
        body: StreamReader,
        content_length: int | None,
        config: DeviceUpdateConfig,
    ) -> StoredLog:
        """Check ``upload`` against ``config``, store its body and apply the cache limit."""
        try:
            check_accepted(upload, config)
            path, size = await self._write(upload, body, content_length, config.max_log_file_size)
            deleted = await _on_disk(
                self._trim, path, config.max_log_cache_limit, frozenset(self._writing)
            )
        except Problem as problem:
            self._publish(upload, problem.diagnostic.status, problem.reason)
            raise
        except BaseException:
            self._publish(upload, 0, "the upload was cut before the whole log arrived")
            raise
        stored = StoredLog(upload, path, size, deleted)
        self._publish(upload, 200, f"stored {path.name}", stored)
        return stored

    async def _write(
        self, upload: LogUpload, body: StreamReader, content_length: int | None, limit: int
    ) -> tuple[Path, int]:
        if content_length is not None and content_length > limit:
            raise _too_large(limit)
        folder = self.folder(upload.mac)
        await _on_disk(folder.mkdir, parents=True, exist_ok=True)
        temp = folder / f".{uuid.uuid4().hex}{TEMP_SUFFIX}"
        # Known before it exists, so a trim running meanwhile never takes it for a leftover.
        self._writing.add(temp.name)
        fd: int | None = None
        placed = False
        try:
            fd = await _on_disk(os.open, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            size = 0
            batch = bytearray()
            while chunk := await body.readany():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                batch += chunk
                if len(batch) >= WRITE_BATCH:
                    await _on_disk(_write_all, fd, bytes(batch))
                    batch.clear()
            if size == 0:
                raise Problem(
                    Diagnostic.MALFORMED_REQUEST, "the upload carries no log (empty body)"
                )
            target = self._next_name(folder, upload.file_name)
            # _place closes the descriptor, whatever happens: closing it here again could
            # close a number another thread has been given meanwhile.
            last, fd = fd, None
            await _on_disk(_place, last, bytes(batch), temp, target)
            placed = True
        finally:
            self._writing.discard(temp.name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if not placed:
                with contextlib.suppress(OSError):
                    temp.unlink()
        return target, size

    def _next_name(self, folder: Path, file_name: str) -> Path:
        # Strictly increasing stamps keep names unique and in upload order even when the
        # clock stands still (a test clock) or steps back.
        stamp = max(self._now().astimezone(UTC), self._last + _TICK)
        while (target := folder / f"{stamp.strftime(STAMP_FORMAT)}_{file_name}").exists():
            stamp += _TICK
        self._last = stamp
        return target

    @staticmethod
    def _trim(kept: Path, limit: int, writing: frozenset[str]) -> tuple[str, ...]:
        deleted: list[str] = []
        sizes: dict[Path, int] = {}
        for path in kept.parent.iterdir():
            if path.name.endswith(TEMP_SUFFIX) and path.name.startswith("."):
                if path.name not in writing:
                    path.unlink(missing_ok=True)
            elif _is_log(path):
                sizes[path] = path.stat().st_size
        total = sum(sizes.values())
        for path in sorted(sizes):
            if total <= limit:
                break
            if path == kept:
                continue
            path.unlink(missing_ok=True)
            total -= sizes[path]
            deleted.append(path.name)
        return tuple(deleted)

    def _publish(
        self, upload: LogUpload, status: int, reason: str, stored: StoredLog | None = None
    ) -> None:
        if self.events is None:
            return
        self.events.publish(
            "device.log",
            server=self.server,
            mac=upload.mac,
            type=upload.log_type,
            file=upload.file_name,
            status=status,
            reason=reason,
            stored=stored.path.name if stored else None,
            size=stored.size if stored else None,
            deleted=list(stored.deleted) if stored else [],
        )


def _is_log(path: Path) -> bool:
    return not path.name.startswith(".") and path.is_file()


async def _on_disk(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a file operation in a worker thread; a failure of the disk is this server's (500)."""
    try:
        return await asyncio.to_thread(partial(func, *args, **kwargs))
    except OSError as exc:
        raise Problem(
            Diagnostic.INTERNAL_ERROR,
            f"this server cannot store device logs now: {exc.strerror or exc}",
            close=True,
        ) from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _place(fd: int, rest: bytes, temp: Path, target: Path) -> None:
    """Write the last bytes, sync, close, and rename into place (atomically)."""
    try:
        _write_all(fd, rest)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, target)
    # The rename itself must survive a crash too.
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
