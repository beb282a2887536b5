"""The phone log a support engineer reads: timestamped lines in plain words.

Times are the phone's timeline (virtual time in a run), written as UTC dates. Every failure
line gives its reason as the phone saw it: the DNS name and its answer, the TLS error with
the name, the HTTP status with the service's own reason. The log is bounded (oldest lines
go first) and renders as the body of a CELog file for upload to the service.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from emulator.clock import to_datetime
from emulator.models import DeviceIdentity

MAX_LOG_FILE_SIZE = 1_024_000
"""The service's default ``MaxLogFileSize``: the largest log file it stores, in bytes."""


class LogLevel(enum.Enum):
    """How bad a log line is."""

    INFO = "INFO"
    WARNING = "WARN"
    ERROR = "ERROR"


def format_time(t: float) -> str:
    """A phone-timeline time as the log writes it (``2026-01-01T00:05:00.000Z``)."""
    # isoformat truncates to the millisecond as strftime's %f cut short does, in half the
    # time (a fleet's results write a dozen of these per phone); "+00:00" becomes "Z".
    return to_datetime(t).isoformat(timespec="milliseconds")[:-6] + "Z"


def format_duration(seconds: float) -> str:
    """A duration in the unit a person would use (``24 h``, ``5 min``, ``90 s``)."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


@dataclass(frozen=True)
class LogEntry:
    """One log line: when, how bad, which part of the phone, and what happened."""

    time: float
    level: LogLevel
    topic: str
    message: str

    def render(self) -> str:
        """The line as the log file holds it."""
        return f"{format_time(self.time)} {self.level.value:<5} {self.topic}: {self.message}"


class PhoneLog:
    """The phone's log: a bounded list of entries, newest last."""

    def __init__(self, limit: int = 10_000) -> None:
        self._entries: deque[LogEntry] = deque(maxlen=limit)

    def add(self, time: float, level: LogLevel, topic: str, message: str) -> LogEntry:
        """Append a line and return it."""
        entry = LogEntry(time, level, topic, message)
        self._entries.append(entry)
        return entry

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> tuple[LogEntry, ...]:
        """Every line kept, oldest first."""
        return tuple(self._entries)

    def matching(self, text: str, level: LogLevel | None = None) -> list[LogEntry]:
        """The lines whose message contains ``text`` (and of ``level``, when given)."""
        return [
            e for e in self._entries if text in e.message and (level is None or e.level is level)
        ]

    def render(self) -> str:
        """The whole log as text, one line per entry."""
        return "".join(entry.render() + "\n" for entry in self._entries)


def celog_file_name(identity: DeviceIdentity, t: float) -> str:
    """The name a phone gives its CELog file when it uploads it (``<MAC>_<time>.clg``)."""
    stamp = to_datetime(t).strftime("%Y%m%d%H%M%S")
    return f"{identity.mac.replace('-', '')}_{stamp}.clg"


def render_celog(
    log: PhoneLog, identity: DeviceIdentity, t: float, *, max_bytes: int = MAX_LOG_FILE_SIZE
) -> str:
    """The CELog file body: a header naming the phone, then the newest lines that fit."""
    header = (
        "CELog device log\n"
        f"Device: {identity.display_name} ({identity.device_type}, revision "
        f"{identity.revision}, locale {identity.locale})\n"
        f"MAC address: {identity.mac}\n"
        f"Serial number: {identity.serial}\n"
        f"Written: {format_time(t)}\n"
        "\n"
    )
    budget = max_bytes - len(header.encode("utf-8"))
    kept: list[str] = []
    # Newest lines matter most to whoever reads an upload, so older ones are dropped first,
    # with room kept for the line that says how many.
    note_room = 80
    for entry in reversed(log.entries):
        line = entry.render() + "\n"
        size = len(line.encode("utf-8"))
        if size > budget - note_room:
            break
        kept.append(line)
        budget -= size
    left_out = len(log) - len(kept)
    note = f"({left_out} older lines left out to fit {max_bytes} bytes)\n" if left_out else ""
    return header + note + "".join(reversed(kept))
