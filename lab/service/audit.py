"""The request handler audit log: one CSV file per server per day, one line per request.

As Lync's ``RequestHandlerAuditLog_<server>_<date>.log``, every request a phone makes is
written with who asked, what it has, what it was given and why. Each line goes to the file
with its own ``write`` system call on an unbuffered descriptor (nothing is held in the
process, so a crashed service loses none), files roll over at midnight UTC, and every line
is also published as an ``audit`` event for the live stream (with the record's own values).

Rules of this module:
- One request is always one line, whatever a peer puts in a URL or a body field. Every
  field is written percent-encoded where it holds a character that could break or fake a
  line: control characters (C0, DEL, C1), the Unicode line and paragraph separators, and
  ``%`` itself, each as the ``%XX`` of its UTF-8 bytes (a CR LF is written ``%0D%0A``, a NUL
  ``%00``, a percent sign ``%25``). Nothing else changes, so ordinary values read as they
  are and ``urllib.parse.unquote`` (what ``read_audit`` does) gives back the original text.
  Commas and quotes are left to CSV quoting, as before.
- A field is written with at most ``field_max`` characters (``[limits] audit_field_max``,
  never less than ``FIELD_MAX_FLOOR``): a longer one keeps its beginning and ends with the
  marker ``...[+N]``, N being how many encoded characters were left out. The cap applies
  after encoding and never splits a ``%XX``, so one request cannot write more than about
  ``field_max`` characters per column however long its installed-modules list is.
- A record is built by keyword (``AuditRecord`` takes no positional arguments), so a
  column added or moved is one change here, checked by mypy; the CSV column order is the
  field order. Its time is the service clock's (``audit_time``), never a clock of its own.
- ``clean_up`` deletes this server's files whose day ended more than LogCleanUpInterval
  ago (lab.service.logs runs it with the device logs' clean-up), never the day's file.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

from lab.events import EventBus
from lab.net.config import Limits


@dataclass(frozen=True, slots=True, kw_only=True)
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
    # Which of the rule's versions was served: "approved", "pending", or "" for none.
    served_from: str = ""
    reason: str = ""
    last_signed_in_user: str = ""
    # Who NTLM signed in on the connection (external site); last_signed_in_user is what
    # the phone's body claims.
    authenticated_user: str = ""

    def values(self) -> tuple[str | int, ...]:
        """The fields in column order."""
        return tuple(getattr(self, name) for name in COLUMNS)

    def as_dict(self) -> dict[str, str | int]:
        """The fields by column name (what the ``audit`` event carries)."""
        return {name: getattr(self, name) for name in COLUMNS}


COLUMNS = tuple(f.name for f in fields(AuditRecord))
_SEPARATORS = len(COLUMNS) - 1
FIELD_MAX = Limits().audit_field_max
"""The default cap on one field, in characters (``[limits] audit_field_max``)."""
FIELD_MAX_FLOOR = 64
"""The smallest cap a log applies: a time, an address and the marker always fit whole."""

# What a field may not hold as it is: characters that end, fake or hide a line, and the
# escape character itself.
_ENCODED = re.compile("[%\x00-\x1f\x7f-\x9f\u2028\u2029]")
_PARTIAL_ESCAPE = re.compile(r"%[0-9A-F]?\Z")
# Bytes a line may hold as they are: printable ASCII but the escape character.
_PLAIN_BYTES = bytes(byte for byte in range(0x20, 0x7F) if byte != ord("%"))


def audit_file_name(server: str, day: datetime) -> str:
    """``RequestHandlerAuditLog_<server>_<YYYYMMDD>.log``."""
    return f"RequestHandlerAuditLog_{server}_{day:%Y%m%d}.log"


def audit_time(moment: datetime) -> str:
    """``moment`` as the audit log writes a time: UTC to the millisecond, ``...123Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends audit records for one server to its per-day CSV file."""

    def __init__(
        self,
        server: str,
        directory: Path,
        events: EventBus | None = None,
        *,
        field_max: int = FIELD_MAX,
    ) -> None:
        self.server = server
        self.directory = directory
        self.events = events
        self.field_max = max(field_max, FIELD_MAX_FLOOR)
        self._day: str | None = None
        self._fd: int | None = None
        self._name = re.compile(
            rf"RequestHandlerAuditLog_{re.escape(server)}_(?P<day>[0-9]{{8}})\.log"
        )

    def path_for(self, day: datetime) -> Path:
        """The file that holds ``day``'s records."""
        return self.directory / audit_file_name(self.server, day)

    def write(self, record: AuditRecord) -> None:
        """Append ``record`` (the file is opened, or rolled over, as needed) and publish it."""
        when = record.time
        fd = self._fd
        if fd is None or when[:10] != self._day:
            fd = self._open(datetime.fromisoformat(when.replace("Z", "+00:00")))
            self._day = when[:10]
        _write_all(fd, csv_line(record, self.field_max).encode())
        if self.events is not None and self.events.listened("audit"):
            self.events.publish("audit", **record.as_dict())

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

    def clean_up(self, now: datetime, keep_for: timedelta) -> list[Path]:
        """Delete this server's audit files whose day ended more than ``keep_for`` before
        ``now`` (never the file being written); returns the files deleted. Blocking."""
        if not self.directory.is_dir():
            return []
        cutoff = now.astimezone(UTC) - keep_for
        deleted = []
        for path in sorted(self.directory.iterdir()):
            match = self._name.fullmatch(path.name)
            if match is None:
                continue  # not one of this log's files: never ours to delete
            try:
                day = datetime.strptime(match["day"], "%Y%m%d").replace(tzinfo=UTC)
            except ValueError:
                continue
            if f"{day:%Y-%m-%d}" == self._day or day + timedelta(days=1) > cutoff:
                continue
            path.unlink(missing_ok=True)
            deleted.append(path)
        return deleted

    def close(self) -> None:
        """Close the current file (a later write reopens it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def csv_line(record: AuditRecord, field_max: int = FIELD_MAX) -> str:
    """``record`` as one CSV line: every field encoded and capped (see the module rules),
    then written as ``csv.writer`` (minimal quoting) writes it."""
    values = [str(value) for value in record.values()]
    line = ",".join(values)
    # Nearly every line is short printable ASCII: one pass over its bytes tells (a line
    # within the cap has no field over it); any other goes field by field.
    if len(line) > field_max or line.encode().translate(None, _PLAIN_BYTES):
        values = [audit_field(value, field_max) for value in values]
        line = ",".join(values)
    # Encoded fields hold no line break: quoting is for commas and quotes alone.
    if line.count(",") == _SEPARATORS and '"' not in line:
        return line + "\n"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def audit_field(value: str, field_max: int = FIELD_MAX) -> str:
    """``value`` as the audit log writes it: percent-encoded where the module rules say,
    and cut to ``field_max`` characters with the ``...[+N]`` marker when longer."""
    if _ENCODED.search(value) is not None:
        value = _ENCODED.sub(_percent, value)
    if len(value) <= field_max:
        return value
    # The marker is sized for the most that can be left out (everything), so what is kept
    # and the real, never longer, marker stay within the cap.
    keep = max(field_max - len(f"...[+{len(value)}]"), 0)
    # Never half a %XX: the kept text must decode as it was written.
    partial = _PARTIAL_ESCAPE.search(value, 0, keep)
    if partial is not None:
        keep = partial.start()
    return f"{value[:keep]}...[+{len(value) - keep}]"


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match[0].encode())


def _write_all(fd: int, data: bytes) -> None:
    # A regular file takes the whole line in one call; a short write (a full disk) goes on.
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def read_audit(path: Path) -> list[dict[str, str]]:
    """Every record of an audit file, as dictionaries keyed by column, each field decoded
    back to the text the service recorded (a cut field keeps its marker)."""
    with path.open(encoding="utf-8", newline="") as handle:
        return [
            {key: unquote(value) if "%" in value else value for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]
