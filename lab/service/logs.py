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
- ``[limits] device_logs_per_front_end`` caps the front end's logs in all, whatever the
  MACs they name: after the device's own limit, the front end's oldest logs (by the stamp
  in their names) are deleted until the total is within it, again never the log just
  stored; a log counts as at least LOG_BLOCK bytes (a file-system block), so many tiny
  logs cannot hold the disk's inodes either. A log larger than the total itself is refused
  with 413 as one over MaxLogFileSize is. Folders left empty are removed. The total is kept
  in memory from one scan of the folder, made at the first upload.
- ``LogCleanUpInterval`` is how long a log is kept: ``clean_up(now, keep_for)`` deletes the
  logs stamped earlier than ``now - keep_for`` (and temporary files no upload is writing).
  ``LogCleanUp`` runs it, with the audit logs' own clean-up, once a day at
  ``LogCleanUpTimeOfDay`` (UTC; midnight when it is not set), as ``next_clean_up`` says.
- Every upload that names a valid device is published as a ``device.log`` event with its
  outcome: ``status`` 200 (stored), the refusal's status (413, 415, 400), or 0 when the
  upload was cut before the whole log arrived; ``deleted`` names the device's logs its
  own limit deleted, ``evicted`` (``<MAC>/<name>``) the logs the front end's total did.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import StreamReader

from lab.clock import utc_now
from lab.errors import IdentityError, LabError
from lab.events import EventBus
from lab.lifecycle import BackgroundTask
from lab.models import normalise_mac
from lab.net.config import Limits
from lab.service.audit import AuditLog
from lab.service.problems import Diagnostic, Problem
from lab.store.devconfig import DeviceUpdateConfig
from lab.store.filestore import SERVERS_DIR

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
LOG_BLOCK = 4096
"""What a log counts toward the front end's total at least: one file-system block."""
FRONT_END_TOTAL = Limits().device_logs_per_front_end
"""The default total of one front end's logs (``[limits] device_logs_per_front_end``)."""

log = logging.getLogger(__name__)

T = TypeVar("T")


def log_store_path(state_dir: Path, server: str) -> Path:
    """``<state>/servers/<server>/DeviceLogs``: one front end's device logs."""
    return state_dir / SERVERS_DIR / server / LOGS_DIR


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
    """A log written to its device's folder, and the older logs the limits deleted: the
    device's own (``deleted``, names) and other logs of the front end (``evicted``,
    ``<MAC>/<name>``)."""

    upload: LogUpload
    path: Path
    size: int
    deleted: tuple[str, ...] = ()
    evicted: tuple[str, ...] = ()


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


def _too_large(limit: int, what: str = "MaxLogFileSize") -> Problem:
    # The rest of the body is never read, so the connection cannot be reused.
    return Problem(
        Diagnostic.BODY_TOO_LARGE,
        f"the log is larger than {what} ({limit} bytes)",
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
        now: Callable[[], datetime] = utc_now,
        total: int = FRONT_END_TOTAL,
    ) -> None:
        if total < 1:
            raise ValueError(f"the device logs' total must be at least 1 byte, not {total}")
        self.root = root
        self.server = server
        self.events = events
        self.total = total
        self._now = now
        self._last = datetime.min.replace(tzinfo=UTC)
        self._writing: set[str] = set()
        # Every stored log, oldest first, and what it counts toward the total. Changed on
        # the event loop only; the disk work it decides runs in worker threads.
        self._held: OrderedDict[Path, int] | None = None
        self._held_bytes = 0
        self._scanning = asyncio.Lock()

    def folder(self, mac: str) -> Path:
        """The folder of the device with ``mac`` (normalised, so never a path of its own)."""
        return self.root / normalise_mac(mac)

    @property
    def held_bytes(self) -> int:
        """What the logs count toward the total now (0 before the first upload's scan)."""
        return self._held_bytes

    async def receive(
        self,
        upload: LogUpload,
        body: StreamReader,
        content_length: int | None,
        config: DeviceUpdateConfig,
    ) -> StoredLog:
        """Check ``upload`` against ``config``, store its body and apply both limits."""
        limit, what = config.max_log_file_size, "MaxLogFileSize"
        if self.total < limit:
            limit, what = self.total, "what this front end keeps of device logs in all"
        try:
            check_accepted(upload, config)
            path, size = await self._write(upload, body, content_length, limit, what)
            deleted = await _on_disk(
                self._trim, path, config.max_log_cache_limit, frozenset(self._writing)
            )
            held = await self._held_logs()
            for name in deleted:
                self._forget(held, path.parent / name)
            if path not in held:
                held[path] = max(size, LOG_BLOCK)
                self._held_bytes += held[path]
            evicted = self._over_total(held, keep=path)
            if evicted:
                await _on_disk(_delete_logs, evicted)
        except Problem as problem:
            self._publish(upload, problem.diagnostic.status, problem.reason)
            raise
        except BaseException:
            self._publish(upload, 0, "the upload was cut before the whole log arrived")
            raise
        stored = StoredLog(
            upload=upload,
            path=path,
            size=size,
            deleted=deleted,
            evicted=tuple(f"{p.parent.name}/{p.name}" for p in evicted),
        )
        self._publish(upload, 200, f"stored {path.name}", stored)
        return stored

    async def clean_up(self, now: datetime, keep_for: timedelta) -> tuple[Path, ...]:
        """Delete the logs stamped before ``now - keep_for`` (LogCleanUpInterval), and
        temporary files no upload is writing; returns what was deleted."""
        cutoff = now.astimezone(UTC) - keep_for
        held = await self._held_logs()
        deleted = await _on_disk(_clean_up, self.root, cutoff, frozenset(self._writing))
        for path in deleted:
            self._forget(held, path)
        return deleted

    async def _held_logs(self) -> OrderedDict[Path, int]:
        """The logs on disk, oldest first (scanned once, then kept up to date)."""
        if self._held is None:
            async with self._scanning:
                if self._held is None:
                    held = await _on_disk(_scan, self.root)
                    self._held_bytes = sum(held.values())
                    self._held = held
        return self._held

    def _forget(self, held: OrderedDict[Path, int], path: Path) -> None:
        self._held_bytes -= held.pop(path, 0)

    def _over_total(self, held: OrderedDict[Path, int], keep: Path) -> list[Path]:
        """The oldest logs but ``keep`` that must go for the rest to fit in the total,
        forgotten already (deleting them is the caller's)."""
        evicted: list[Path] = []
        for path, charge in held.items():
            if self._held_bytes <= self.total:
                break
            if path != keep:
                evicted.append(path)
                self._held_bytes -= charge
        for path in evicted:
            del held[path]
        return evicted

    async def _write(
        self,
        upload: LogUpload,
        body: StreamReader,
        content_length: int | None,
        limit: int,
        what: str,
    ) -> tuple[Path, int]:
        if content_length is not None and content_length > limit:
            raise _too_large(limit, what)
        folder = self.folder(upload.mac)
        temp = folder / f".{uuid.uuid4().hex}{TEMP_SUFFIX}"
        # Known before it exists, so a trim running meanwhile never takes it for a leftover.
        self._writing.add(temp.name)
        fd: int | None = None
        placed = False
        try:
            fd = await _on_disk(_create_temp, temp)
            size = 0
            batch = bytearray()
            while chunk := await body.readany():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit, what)
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
            if _is_temp(path):
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
            evicted=list(stored.evicted) if stored else [],
        )


# -- the daily clean-up ------------------------------------------------------------------


def next_clean_up(now: datetime, config: DeviceUpdateConfig) -> datetime:
    """The first moment after ``now`` at LogCleanUpTimeOfDay (UTC; midnight when unset)."""
    hours, minutes = map(int, (config.log_cleanup_time_of_day or "00:00").split(":"))
    now = now.astimezone(UTC)
    due = datetime.combine(now.date(), time(hours, minutes), tzinfo=UTC)
    return due if due > now else due + timedelta(days=1)


@dataclass(frozen=True)
class CleanUpReport:
    """What one clean-up deleted: device logs and audit files."""

    at: datetime
    device_logs: tuple[Path, ...]
    audit_logs: tuple[Path, ...]


class LogCleanUp(BackgroundTask):
    """The daily clean-up of a lab's device logs and audit logs (LogCleanUpInterval, at
    LogCleanUpTimeOfDay), read from the device-update configuration at every run.

    ``start`` (or ``async with``) begins the daily runs; ``run_once`` cleans up at once.
    """

    task_name = "log clean-up"

    def __init__(
        self,
        stores: Sequence[DeviceLogStore],
        audits: Sequence[AuditLog],
        config: Callable[[], DeviceUpdateConfig],
        *,
        now: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        events: EventBus | None = None,
    ) -> None:
        self.stores = stores
        self.audits = audits
        self.config = config
        self.events = events
        self._now = now
        # How the runs wait for their time (a test's clock passes it at once).
        self._sleep = sleep

    async def run_once(self) -> CleanUpReport:
        """Delete every log older than LogCleanUpInterval now."""
        now = self._now()
        keep_for = timedelta(seconds=self.config().log_cleanup_interval)
        device_logs: list[Path] = []
        for store in self.stores:
            device_logs += await store.clean_up(now, keep_for)
        audit_logs: list[Path] = []
        for audit in self.audits:
            audit_logs += await asyncio.to_thread(audit.clean_up, now, keep_for)
        report = CleanUpReport(now, tuple(device_logs), tuple(audit_logs))
        if self.events is not None:
            self.events.publish(
                "logs.cleaned_up",
                device_logs=len(report.device_logs),
                audit_logs=len(report.audit_logs),
                keep_for=int(keep_for.total_seconds()),
            )
        return report

    async def run(self) -> None:
        """Clean up daily at the configured time of day, until stopped."""
        done = self._now()  # the last run's moment (or the start's): never run for it twice
        while True:
            now = self._now()
            # Ahead of the clock should it lag behind the loop's: one run per day.
            due = next_clean_up(max(now, done), self._schedule())
            await self._sleep((due - now).total_seconds())
            done = due
            try:
                await self.run_once()
            except (LabError, OSError) as exc:
                # The store or the disk failed now: the next day's run tries again.
                log.warning("log clean-up skipped: %s", exc)

    def _schedule(self) -> DeviceUpdateConfig:
        try:
            return self.config()
        except LabError as exc:
            log.warning("log clean-up at midnight: the configuration cannot be read: %s", exc)
            return DeviceUpdateConfig()


def _is_log(path: Path) -> bool:
    return not path.name.startswith(".") and path.is_file()


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def _scan(root: Path) -> OrderedDict[Path, int]:
    """Every log under ``root``, oldest first by the stamp of its name, with its charge."""
    found: list[tuple[str, Path, int]] = []
    for folder in _folders(root):
        for path in folder.iterdir():
            with contextlib.suppress(OSError):  # gone meanwhile
                if _is_log(path):
                    found.append((path.name, path, max(path.stat().st_size, LOG_BLOCK)))
    found.sort()
    return OrderedDict((path, charge) for _, path, charge in found)


def _folders(root: Path) -> Iterable[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    except FileNotFoundError:
        return []


def _stamped(path: Path) -> datetime:
    """When a log was stored: the stamp its name starts with, or its mtime without one."""
    stamp, _, _ = path.name.partition("_")
    try:
        return datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def _clean_up(root: Path, cutoff: datetime, writing: frozenset[str]) -> tuple[Path, ...]:
    deleted: list[Path] = []
    for folder in _folders(root):
        for path in folder.iterdir():
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile
                if _is_temp(path):
                    old = path.name not in writing and _stamped(path) < cutoff
                else:
                    old = _is_log(path) and _stamped(path) < cutoff
                if old:
                    path.unlink()
                    deleted.append(path)
        _remove_if_empty(folder)
    return tuple(deleted)


def _delete_logs(paths: Iterable[Path]) -> None:
    folders = set()
    for path in paths:
        path.unlink(missing_ok=True)
        folders.add(path.parent)
    for folder in folders:
        _remove_if_empty(folder)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise


def _create_temp(temp: Path) -> int:
    """Create and open ``temp``, and its folder with it; a clean-up may remove an empty
    folder between the two, so the folder is made again then."""
    while True:
        temp.parent.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileNotFoundError:
            continue


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
