"""The request handler audit log: one CSV file per server per day, one line per request.

As Lync's ``RequestHandlerAuditLog_<server>_<date>.log``, every request a phone makes is
written with who asked, what it has, what it was given and why. Each line goes to the file
with its own ``write`` system call on an unbuffered descriptor (nothing is held in the
process, so a crashed service loses none), files roll over at midnight UTC, and every line
is also published as an ``audit`` event for the live stream.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from lab.events import EventBus


class AuditRecord(NamedTuple):
    """One request as the audit log records it (field order is the CSV column order).

    A named tuple: one is made for every request, and a tuple is built several times faster
    than a frozen dataclass.
    """

    time: str
    server: str
    client_address: str
    site: str
    path: str
    status: int
    device_type: str = ""
    mac: str = ""
    serial: str = ""
    vendor: str = ""
    model: str = ""
    revision: str = ""
    locale: str = ""
    installed_modules: str = ""
    modules_returned: str = ""
    decision: str = ""
    reason: str = ""
    last_signed_in_user: str = ""


COLUMNS = AuditRecord._fields
_SEPARATORS = len(COLUMNS) - 1
TAIL_MEMO = 4096
"""How many line endings (everything after the time) an audit log remembers."""

AuditRepeat = Callable[[], None]
"""Writes a record again at the current time (``now_iso``), as the log would write that
record: what AuditLog.write hands back for a record whose line it remembers."""


def audit_file_name(server: str, day: datetime) -> str:
    """``RequestHandlerAuditLog_<server>_<YYYYMMDD>.log``."""
    return f"RequestHandlerAuditLog_{server}_{day:%Y%m%d}.log"


def now_iso() -> str:
    """The current UTC time as the audit log writes it (``2026-11-22T10:00:00.123Z``)."""
    # Every request asks: the text is made once per millisecond, the date and time of day
    # once per second.
    global _milli, _milli_text, _second, _second_text
    milli = int(time.time() * 1000)
    if milli != _milli:
        second = milli // 1000
        if second != _second:
            _second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            _second = second
        _milli_text = f"{_second_text}.{milli - second * 1000:03d}Z"
        _milli = milli
    return _milli_text


_milli = _second = -1
_milli_text = _second_text = ""


class AuditLog:
    """Appends audit records for one server to its per-day CSV file."""

    def __init__(self, server: str, directory: Path, events: EventBus | None = None) -> None:
        self.server = server
        self.directory = directory
        self.events = events
        self._day: str | None = None
        self._fd: int | None = None
        self._repeats: dict[tuple[str | int, ...], _Repeat] = {}

    def path_for(self, day: datetime) -> Path:
        """The file that holds ``day``'s records."""
        return self.directory / audit_file_name(self.server, day)

    def write(self, record: AuditRecord) -> AuditRepeat | None:
        """Append ``record`` (the file is opened, or rolled over, as needed) and publish it.

        Returns what writes the same record again, at the time it is called, in fewer steps
        (a phone repeating its check), when the line is one the log remembers.
        """
        when = record.time
        fd = self._fd
        if fd is None or when[:10] != self._day:
            fd = self._open(datetime.fromisoformat(when.replace("Z", "+00:00")))
            self._day = when[:10]
        # A phone's checks repeat everything but the time: the rest of the line is made
        # once per phone, server and answer (bounded, see TAIL_MEMO). Every check writes
        # a line, so this is kept to a few operations.
        rest = record[1:]
        repeat = self._repeats.get(rest)
        if repeat is None or _needs_quoting(when):
            data, repeat = self._line(record, rest)
        else:
            data = when.encode() + repeat.tail
        _write_all(fd, data)
        if self.events is not None and self.events.listened("audit"):
            self.events.publish("audit", **record._asdict())
        return repeat

    def _line(
        self, record: AuditRecord, rest: tuple[str | int, ...]
    ) -> tuple[bytes, _Repeat | None]:
        """``csv_line(record)``, encoded, and its repeat; its rest after the time is remembered."""
        line = csv_line(record)
        when = record.time
        if _needs_quoting(when):
            return line.encode(), None
        if len(self._repeats) >= TAIL_MEMO:
            self._repeats.clear()
        repeat = self._repeats[rest] = _Repeat(self, record, line[len(when) :].encode())
        return line.encode(), repeat

    def _open(self, day: datetime) -> int:
        self.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(day)
        # O_APPEND: every line lands whole at the end, whoever else appends to the file.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if os.fstat(fd).st_size == 0:
                _write_all(fd, (",".join(COLUMNS) + "\n").encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return fd

    def close(self) -> None:
        """Close the current file (a later write reopens it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Repeat:
    """A remembered line of one log: its record, and the encoded rest after the time."""

    __slots__ = ("log", "record", "tail")

    def __init__(self, log: AuditLog, record: AuditRecord, tail: bytes) -> None:
        self.log = log
        self.record = record
        self.tail = tail

    def __call__(self) -> None:
        """Write the record again at the current time: the time and the remembered rest, in
        one ``write`` (now_iso's text needs no quoting); the long way (AuditLog.write) on a
        new day, or when someone listens for audit events."""
        when = now_iso()
        log = self.log
        fd = log._fd
        events = log.events
        if fd is None or when[:10] != log._day or (events is not None and events.listened("audit")):
            log.write(self.record._replace(time=when))
            return
        _write_all(fd, when.encode() + self.tail)


def csv_line(record: AuditRecord) -> str:
    """``record`` as one CSV line, as ``csv.writer`` (minimal quoting) writes it."""
    values = [str(value) for value in record]
    line = ",".join(values)
    # Nearly every line needs no quoting: one scan of the joined line tells.
    if line.count(",") == _SEPARATORS and '"' not in line and "\n" not in line and "\r" not in line:
        return line + "\n"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _needs_quoting(text: str) -> bool:
    return "," in text or '"' in text or "\n" in text or "\r" in text


def _write_all(fd: int, data: bytes) -> None:
    # A regular file takes the whole line in one call; a short write (a full disk) goes on.
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def read_audit(path: Path) -> list[dict[str, str]]:
    """Every record of an audit file, as dictionaries keyed by column."""
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
