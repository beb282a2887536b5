"""The request handler audit log: one CSV file per server per day, one line per request.

As Lync's ``RequestHandlerAuditLog_<server>_<date>.log``, every request a phone makes is
written with who asked, what it has, what it was given and why. Lines are flushed as they
are written (a crashed service loses none), files roll over at midnight UTC, and every
line is also published as an ``audit`` event for the live stream.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from lab.events import EventBus


@dataclass(frozen=True)
class AuditRecord:
    """One request as the audit log records it (field order is the CSV column order)."""

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


COLUMNS = tuple(f.name for f in fields(AuditRecord))


def audit_file_name(server: str, day: datetime) -> str:
    """``RequestHandlerAuditLog_<server>_<YYYYMMDD>.log``."""
    return f"RequestHandlerAuditLog_{server}_{day:%Y%m%d}.log"


def now_iso() -> str:
    """The current UTC time as the audit log writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends audit records for one server to its per-day CSV file."""

    def __init__(self, server: str, directory: Path, events: EventBus | None = None) -> None:
        self.server = server
        self.directory = directory
        self.events = events
        self._day: str | None = None
        self._file: TextIO | None = None
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer, lineterminator="\n")

    def path_for(self, day: datetime) -> Path:
        """The file that holds ``day``'s records."""
        return self.directory / audit_file_name(self.server, day)

    def write(self, record: AuditRecord) -> None:
        """Append ``record`` (the file is opened, or rolled over, as needed) and publish it."""
        day = record.time[:10]
        if day != self._day or self._file is None:
            self._open(datetime.fromisoformat(record.time.replace("Z", "+00:00")))
            self._day = day
        assert self._file is not None
        self._buffer.seek(0)
        self._buffer.truncate()
        self._csv.writerow(_row(record))
        self._file.write(self._buffer.getvalue())
        self._file.flush()
        if self.events is not None:
            # A shallow copy: every field is a str or an int (asdict's deep copy cost more
            # than writing the line).
            self.events.publish("audit", **vars(record))

    def _open(self, day: datetime) -> None:
        self.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(day)
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", encoding="utf-8", newline="")
        if new:
            self._file.write(",".join(COLUMNS) + "\n")

    def close(self) -> None:
        """Close the current file (a later write reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _row(record: AuditRecord) -> list[str]:
    return [str(getattr(record, column)) for column in COLUMNS]


def read_audit(path: Path) -> list[dict[str, str]]:
    """Every record of an audit file, as dictionaries keyed by column."""
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
