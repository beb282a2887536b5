"""What goes into the phone core (events) and what comes out of it (actions).

Every event carries ``now``: the time on the phone's timeline when it happened. The core
never asks for the time. An I/O result event (Resolved, ResponseReceived, DownloadFinished,
...) always answers the last I/O action the core emitted: the core has at most one request
out at a time. Actions are instructions for a driver; none of them expects a return value,
only a later event.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from emulator.errors import CertificateProblem, CredentialsError, FirmwareProblem
from emulator.firmware import CatalogEntry
from emulator.lease import Lease
from emulator.slots import SlotName

_NT_HASH = re.compile(r"[0-9a-fA-F]{32}")
_EMPTY_LM_HASH = "aad3b435b51404eeaad3b435b51404ee"


class Timer(enum.Enum):
    """The timers a phone keeps; a driver arms one per StartTimer and fires TimerFired."""

    CHECK = "periodic update check"
    RETRY = "retry after back-off"
    REBOOT = "restart after the idle wait"
    FLASH = "flashing"
    BOOT = "boot"


class Purpose(enum.Enum):
    """Why the phone is talking to the service."""

    CHECK = "update check"
    SIGN_IN = "sign-in"
    DOWNLOAD = "download"


@dataclass(frozen=True)
class Credentials:
    """What a user types on the phone to sign in: account and password, or its NT hash."""

    username: str
    domain: str
    password: str | None = field(default=None, repr=False)
    nt_hash: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.password is None) == (self.nt_hash is None):
            raise CredentialsError("credentials need either a password or an NT hash, not both")
        if self.nt_hash is not None and not _NT_HASH.fullmatch(self.nt_hash):
            raise CredentialsError("an NT hash is 32 hexadecimal digits")

    @property
    def account(self) -> str:
        """``DOMAIN\\user``, as NTLM names the account."""
        return f"{self.domain}\\{self.username}"

    @property
    def ntlm_secret(self) -> str:
        """The secret in the form an NTLM client takes: the password, or ``LM:NT`` hashes."""
        if self.password is not None:
            return self.password
        return f"{_EMPTY_LM_HASH}:{self.nt_hash}"


# --- Events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Something that happened to the phone at ``now`` (seconds on its timeline)."""

    now: float


@dataclass(frozen=True)
class PowerOn(Event):
    """The phone is plugged in and gets a DHCP lease."""

    lease: Lease


@dataclass(frozen=True)
class PowerLost(Event):
    """Power is cut: everything volatile is lost, a slot being flashed is left corrupt."""


@dataclass(frozen=True)
class TimerFired(Event):
    """A timer the core armed with StartTimer reached its time."""

    timer: Timer


@dataclass(frozen=True)
class Resolved(Event):
    """The DNS answer for the name of the last Resolve: its addresses, maybe none."""

    host: str
    addresses: tuple[str, ...]
    kept: str | None = None
    """The address of a kept-alive connection the phone still holds to that host and port,
    if any: a request goes on it before any new connection is opened."""


@dataclass(frozen=True)
class ResolutionFailed(Event):
    """The DNS lookup of the last Resolve failed (NXDOMAIN, SERVFAIL, no answer...)."""

    host: str
    reason: str
    answer: str | None = None
    """What the DNS server said (NXDOMAIN, SERVFAIL, ...), when it said something."""


@dataclass(frozen=True)
class ConnectionFailed(Event):
    """The last request could not reach its address (refused, timed out, TLS error...)."""

    reason: str
    certificate: CertificateProblem | None = None
    """Which check the server's certificate failed, when that is why."""


@dataclass(frozen=True)
class ResponseReceived(Event):
    """An HTTP answer to the last request (for a download: only an answer that is not 200/206)."""

    status: int
    body: bytes = b""
    diagnostics: str | None = None
    """The raw ``X-Ms-Diagnostics`` header, if any."""
    retry_after: float | None = None
    """Seconds from ``Retry-After``, if any."""


@dataclass(frozen=True)
class DownloadFinished(Event):
    """The last download completed: the file now holds ``size`` bytes, served with ``etag``."""

    size: int
    etag: str | None = None


@dataclass(frozen=True)
class DownloadInterrupted(Event):
    """The last download was cut after the file reached ``offset`` bytes."""

    offset: int
    etag: str | None
    reason: str


@dataclass(frozen=True)
class CatalogVerified(Event):
    """The catalog of the last VerifyCatalog passed every check; these are its files."""

    files: tuple[CatalogEntry, ...]


@dataclass(frozen=True)
class ImageVerified(Event):
    """The image of the last VerifyImage has the catalog's size and SHA-256."""


@dataclass(frozen=True)
class VerificationFailed(Event):
    """The last VerifyCatalog or VerifyImage failed, for this reason."""

    reason: str
    problem: FirmwareProblem = FirmwareProblem.DOES_NOT_VERIFY
    """Which kind of check failed (the FirmwareError's ``problem``)."""


@dataclass(frozen=True)
class BootFailed(Event):
    """The image being booted did not start (the driver's report; for example a fault)."""

    reason: str


@dataclass(frozen=True)
class SignIn(Event):
    """A user types credentials on the phone to sign in."""

    credentials: Credentials


@dataclass(frozen=True)
class SignOut(Event):
    """The signed-in user signs out on the phone; the phone keeps its in-band provisioning."""


@dataclass(frozen=True)
class CallStarted(Event):
    """A call starts on the phone."""


@dataclass(frozen=True)
class CallEnded(Event):
    """A call on the phone ends."""


@dataclass(frozen=True)
class UserActivity(Event):
    """Someone uses the phone (keys, handset, screen)."""


@dataclass(frozen=True)
class ClockOffsetChanged(Event):
    """The phone's own clock is now ``offset`` seconds away from true time (a wrong clock)."""

    offset: float


# --- Actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """Something the core asks its driver to do."""


@dataclass(frozen=True)
class Resolve(Action):
    """Look up the A records of ``host`` (to reach it on ``port``); answer Resolved or
    ResolutionFailed."""

    host: str
    port: int


@dataclass(frozen=True)
class Target:
    """Where a request goes: the URL, its host name and port, and the address to connect to.

    TLS (SNI and certificate name) and the Host header use ``host``; the certificate's
    validity is checked against the phone's clock: true time + ``clock_offset``.
    """

    url: str
    host: str
    port: int
    address: str
    clock_offset: float = 0.0


@dataclass(frozen=True)
class SendRequest(Action):
    """Send one HTTPS request; answer ResponseReceived or ConnectionFailed.

    Credentials, when given, answer an NTLM challenge (``WWW-Authenticate: NTLM``).
    """

    purpose: Purpose
    target: Target
    method: str
    body: bytes
    content_type: str | None
    credentials: Credentials | None


@dataclass(frozen=True)
class StartDownload(Action):
    """GET ``target`` into the phone's copy of ``module``, from byte ``offset``.

    Offset 0 starts the file afresh; otherwise ask ``Range: bytes=<offset>-`` with
    ``If-Range: <etag>`` and append on 206, restart on 200. Answer DownloadFinished,
    DownloadInterrupted, ResponseReceived (any other status) or ConnectionFailed.
    """

    module: str
    target: Target
    offset: int
    etag: str | None
    credentials: Credentials | None


@dataclass(frozen=True)
class DiscardDownloads(Action):
    """Delete the phone's copies of these modules (a failed check, or installed)."""

    modules: tuple[str, ...]


@dataclass(frozen=True)
class VerifyCatalog(Action):
    """Run firmware.verify_catalog on the downloaded ``module`` with the vendor's certificate.

    Answer CatalogVerified with its files, or VerificationFailed with the error's message.
    """

    module: str
    vendor: str
    model: str
    revision: str
    locale: str
    version: str


@dataclass(frozen=True)
class VerifyImage(Action):
    """Run firmware.check_image_file on the downloaded ``module`` against size and SHA-256.

    Answer ImageVerified, or VerificationFailed with the error's message.
    """

    module: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Flash(Action):
    """Write the verified ``module`` into image slot ``slot``; it is done when Timer.FLASH fires."""

    slot: SlotName
    module: str
    version: str


@dataclass(frozen=True)
class Boot(Action):
    """The phone (re)starts from ``slot``: drop every connection; it is up when Timer.BOOT fires."""

    slot: SlotName
    version: str


@dataclass(frozen=True)
class StartTimer(Action):
    """Arm ``timer`` for phone time ``at``, replacing it if it is already armed."""

    timer: Timer
    at: float


@dataclass(frozen=True)
class CancelTimer(Action):
    """Disarm ``timer``."""

    timer: Timer
