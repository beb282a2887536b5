"""The phone log: timestamped lines in plain words for people, typed codes for programs.

Every line has two faces. Its message is for a support engineer: times are the phone's
timeline (virtual time in a run), written as UTC dates, and every failure line gives its
reason as the phone saw it (the DNS name and its answer, the TLS error with the name, the
HTTP status with the service's own reason). Its code (`LogCode`) and facts (`LogFacts`)
are for programs: scenarios, the demo and tests judge what a phone did by those alone and
never read the message, so its words can change freely. The log is bounded (oldest lines
go first) and renders as the body of a CELog file for upload to the service.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from emulator.clock import to_datetime
from emulator.codec import Diagnostics
from emulator.errors import CertificateProblem, FirmwareProblem
from emulator.events import Purpose
from emulator.models import DeviceIdentity
from emulator.slots import SlotName

if TYPE_CHECKING:
    # Only a type here: emulator.routes writes to the log, so importing it at run time
    # would be a cycle.
    from emulator.routes import RouteKind

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


class LogCode(enum.StrEnum):
    """What kind of thing a log line reports, one code per kind, named as the domain does."""

    NOTE = "note"
    """A line written by hand (a test, a copy of another log): nothing to judge by."""
    # Power, boot and restart.
    POWER_ON = "power-on"
    BACKUP_DAMAGED = "backup-damaged"
    """The slot that is not running holds a damaged or failed image: no backup."""
    NO_IMAGE_STARTS = "no-image-starts"
    STARTING = "starting"
    RUNNING = "running"
    UPDATED = "updated"
    """A restart into a new image completed: ``version`` runs, ``previous`` is the backup."""
    BOOT_FAILED = "boot-failed"
    RETURNING_TO_BACKUP = "returning-to-backup"
    POWER_LOST = "power-lost"
    POWER_CUT_INSTALLING = "power-cut-installing"
    """Power was lost while an image was written: that slot is damaged."""
    RESTARTING = "restarting"
    """No call or use for the idle wait: the phone restarts into ``version``."""
    # Calls, use and the clock.
    CALL_STARTED = "call-started"
    CALL_ENDED = "call-ended"
    RESTART_HELD = "restart-held"
    """A call started while an update waited to restart."""
    RESTART_MOVED = "restart-moved"
    """The phone was used: the restart now waits until ``at``."""
    CLOCK_CHANGED = "clock-changed"
    # Sign-in.
    SIGN_IN_WAITING = "sign-in-waiting"
    SIGNING_IN = "signing-in"
    SIGNED_IN = "signed-in"
    SIGN_IN_FAILED = "sign-in-failed"
    SIGNED_OUT = "signed-out"
    """The user signed out (or a sign-in waiting to start was dropped)."""
    UPDATES_DISABLED = "updates-disabled"
    """In-band provisioning turned device update off."""
    # Update checks.
    CHECKING = "checking"
    CHECK_POSTPONED = "check-postponed"
    UP_TO_DATE = "up-to-date"
    """The service has nothing for the phone, or offers the version it runs."""
    OFFERED = "offered"
    """The service offers an update from ``previous`` to ``version``; a download follows."""
    BACKUP_OFFERED = "backup-offered"
    """The service offers the backup image: the phone switches to it without a download."""
    NOT_REINSTALLED = "not-reinstalled"
    """The service offers a version that did not start on this phone before."""
    OFFER_INCOMPLETE = "offer-incomplete"
    # Downloads, verification, install.
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    DOWNLOAD_CUT = "download-cut"
    """A download was cut at ``offset``; it resumes from there."""
    CATALOG_VERIFIED = "catalog-verified"
    IMAGE_VERIFIED = "image-verified"
    UPDATE_REFUSED = "update-refused"
    """The update failed a firmware check (``firmware`` says which); the phone keeps its own."""
    INSTALLING = "installing"
    INSTALLED = "installed"
    # Reaching the service: DNS, connections, answers, retries.
    RESOLVED = "resolved"
    NO_ADDRESS = "no-address"
    DNS_FAILED = "dns-failed"
    CONNECTION_FAILED = "connection-failed"
    """No connection to ``host`` at ``address``; ``certificate`` says why TLS refused one."""
    UNAVAILABLE = "unavailable"
    """A server answered 503 (maintenance, a busy store): the next address is tried."""
    SERVER_FAILED = "server-failed"
    """A server answered another 5xx, or 404 for a download: the next address is tried."""
    MALFORMED_ANSWER = "malformed-answer"
    DENIED = "denied"
    """The service denied the exchange (401/403): no retry until the next scheduled one."""
    REQUEST_REFUSED = "request-refused"
    """The service refused the exchange with another 4xx status."""
    FALLING_BACK = "falling-back"
    """A route could not be reached: the phone tries the next URL (internal to external)."""
    NO_URL = "no-url"
    RETRY_SCHEDULED = "retry-scheduled"
    RETRYING = "retrying"
    GAVE_UP = "gave-up"
    # Log upload.
    LOG_UPLOADING = "log-uploading"
    LOG_UPLOADED = "log-uploaded"
    LOG_UPLOAD_FAILED = "log-upload-failed"
    """An upload to one address failed; another is tried."""
    LOG_NOT_UPLOADED = "log-not-uploaded"


class CheckTrigger(enum.StrEnum):
    """Why the phone checks for updates."""

    POWER_ON = "power-on"
    SIGN_IN = "sign-in"
    """A user signed in: the phone checks with what in-band provisioning gave it."""
    PERIODIC = "periodic"
    """The check interval (24 hours unless provisioning says otherwise) passed."""
    RETRY = "retry"
    DUE = "due"
    """The periodic check fell due during another activity and ran once it ended."""


@dataclass(frozen=True, kw_only=True)
class LogFacts:
    """What a program needs to know about a log line; each code sets the facts it concerns."""

    version: str | None = None
    """The version the line is about: offered, installed, refused, running, restarting into."""
    previous: str | None = None
    """The version it replaces (an offer, a completed update)."""
    slot: SlotName | None = None
    purpose: Purpose | None = None
    """The exchange the line is about: update check, sign-in or download."""
    route: RouteKind | None = None
    """How the phone found the URL: DNS discovery, or in-band provisioning's internal or
    external (published through the edge) URL."""
    trigger: CheckTrigger | None = None
    interval: float | None = None
    """The check interval in seconds, for checks and sign-ins."""
    url: str | None = None
    host: str | None = None
    address: str | None = None
    status: int | None = None
    """The HTTP status the service answered."""
    diagnostics: Diagnostics | None = None
    """The service's ``X-Ms-Diagnostics`` code and reason, when it gave them."""
    retry_after: float | None = None
    dns_answer: str | None = None
    """What the DNS server said when a lookup failed (NXDOMAIN, SERVFAIL, ...)."""
    certificate: CertificateProblem | None = None
    firmware: FirmwareProblem | None = None
    module: str | None = None
    size: int | None = None
    offset: int | None = None
    """Where a download resumes, or was cut."""
    user: str | None = None
    at: float | None = None
    """When something the line announces happens (a restart, a retry)."""
    clock_offset: float | None = None


NO_FACTS = LogFacts()
_FACT_NAMES = tuple(f.name for f in fields(LogFacts))


@dataclass(frozen=True, kw_only=True)
class LogEntry:
    """One log line: when, how bad, which part of the phone, what happened in words, and
    the same as a code and facts."""

    time: float
    level: LogLevel
    topic: str
    message: str
    code: LogCode = LogCode.NOTE
    facts: LogFacts = NO_FACTS

    def render(self) -> str:
        """The line as the log file holds it."""
        return f"{format_time(self.time)} {self.level.value:<5} {self.topic}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        """The line for a program reading JSON: its time, level, topic, code and the facts
        it sets (enums as their values), and the line as the log file holds it."""
        facts: dict[str, Any] = {}
        for name in _FACT_NAMES:
            value = getattr(self.facts, name)
            if value is None:
                continue
            if isinstance(value, enum.Enum):
                value = value.value
            elif is_dataclass(value) and not isinstance(value, type):
                value = asdict(value)
            facts[name] = value
        return {
            "time": format_time(self.time),
            "level": self.level.value,
            "topic": self.topic,
            "code": self.code.value,
            "facts": facts,
            "line": self.render(),
        }


class PhoneLog:
    """The phone's log: a bounded list of entries, newest last."""

    def __init__(self, limit: int = 10_000) -> None:
        self._entries: deque[LogEntry] = deque(maxlen=limit)

    def add(
        self,
        time: float,
        level: LogLevel,
        topic: str,
        message: str,
        *,
        code: LogCode = LogCode.NOTE,
        facts: LogFacts = NO_FACTS,
    ) -> LogEntry:
        """Append a line and return it."""
        entry = LogEntry(
            time=time, level=level, topic=topic, message=message, code=code, facts=facts
        )
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

    def coded(self, *codes: LogCode) -> list[LogEntry]:
        """The lines of any of ``codes``, oldest first."""
        return [e for e in self._entries if e.code in codes]

    def matching(self, text: str, level: LogLevel | None = None) -> list[LogEntry]:
        """The lines whose message contains ``text`` (and of ``level``, when given).

        For a person searching the log; a program judging a phone uses `coded`.
        """
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
