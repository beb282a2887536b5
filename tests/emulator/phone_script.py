"""A scripted driver for the phone core, and a vendor that signs real catalogs, for tests.

`Script` plays the driver by hand: it keeps the phone's time, feeds events, and runs the
real firmware checks on in-memory files when the core asks it to verify. `Vendor` makes an
ECDSA P-256 key and self-signed certificate and signs catalogs in the format of
docs/firmware-format.md, independently of the emulator's parser.
"""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from emulator.core import Phone
from emulator.errors import FirmwareError
from emulator.events import (
    Action,
    CatalogVerified,
    ConnectionFailed,
    Credentials,
    DownloadFinished,
    Event,
    ImageVerified,
    PowerOn,
    Resolve,
    Resolved,
    ResponseReceived,
    SendRequest,
    StartDownload,
    Timer,
    TimerFired,
    VerificationFailed,
    VerifyCatalog,
    VerifyImage,
)
from emulator.firmware import CatalogEntry, check_image, verify_catalog
from emulator.lease import Lease
from emulator.models import get_model
from emulator.settings import PhoneSettings
from emulator.states import PhoneState

T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
"""Phone time at the start of every script: 2026-01-01 00:00:00 UTC."""
STEP = 1.0
"""Seconds each network answer takes in a script."""

LEASE = Lease(
    domain="contoso.test",
    sip_server="pool01.contoso.test",
    dns=("127.10.0.2", 10053),
    https_port=10443,
    sip_domain="contoso.test",
)
INTERNAL_URL = "https://pool01.contoso.test:10443/RequestHandler/ucdevice.upx"
EXTERNAL_URL = "https://webext.contoso.test:10443/RequestHandlerExt/ucdevice.upx"
DISCOVERY_URL = "https://ucupdates-r2.contoso.test:10443/RequestHandler/ucdevice.upx"
FRONT_ENDS = ("127.10.0.11", "127.10.0.12")
EDGE = ("127.20.0.10",)
ALICE = Credentials("alice", "CONTOSO", nt_hash="fc525c9683e8fe067095ba2ddc971889")
FACTORY = "4.0.7577.4366"
NEW = "4.0.7577.4372"

A = TypeVar("A", bound=Action)
_IO = (Resolve, SendRequest, StartDownload, VerifyCatalog, VerifyImage)


class Vendor:
    """A phone vendor's signing key and certificate."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} firmware signing")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)

    def catalog(
        self,
        files: dict[str, bytes],
        *,
        model: str = "CX600",
        version: str = NEW,
        vendor: str | None = None,
        revision: str = "A",
        locale: str = "ENU",
    ) -> bytes:
        """A signed catalog covering ``files``."""
        lines = [
            "DEVICE-UPDATE-CATALOG 1",
            f"vendor: {vendor or self.name}",
            f"model: {model}",
            f"revision: {revision}",
            f"locale: {locale}",
            f"version: {version}",
        ]
        lines += [
            f"file: {name} {len(data)} {hashlib.sha256(data).hexdigest()}"
            for name, data in files.items()
        ]
        body = ("\n".join(lines) + "\n").encode()
        signature = self.key.sign(body, ec.ECDSA(hashes.SHA256()))
        return body + b"signature: " + base64.b64encode(signature) + b"\n"


def image(version: str = NEW, size: int = 4096) -> bytes:
    """A deterministic synthetic image."""
    seed = hashlib.sha256(version.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class Firmware:
    """The files a service offers for one version: catalog and image."""

    version: str
    catalog: bytes
    image: bytes

    @property
    def files(self) -> dict[str, bytes]:
        """Module name to content."""
        return {"CPE.cat": self.catalog, "CPE.nbt": self.image}


def firmware(vendor: Vendor, version: str = NEW, **catalog_args: str) -> Firmware:
    """A correctly signed catalog and its image."""
    data = image(version)
    return Firmware(
        version, vendor.catalog({"CPE.nbt": data}, version=version, **catalog_args), data
    )


def offer_xml(fw: Firmware, *, internal: bool = True, external: bool = True) -> bytes:
    """The DeviceUpdateResponse offering ``fw``."""
    layout = f"UCPhone/Polycom/CX600/A/ENU/{fw.version}/CPE"
    parts = []
    for module, data in fw.files.items():
        urls = ""
        if internal:
            urls += (
                "<BaseURL>https://pool01.contoso.test:10443/DeviceUpdateFiles_Int/"
                f"{layout}/{module}</BaseURL>"
            )
        if external:
            urls += (
                "<ExternalBaseURL>https://webext.contoso.test:10443/DeviceUpdateFiles_Ext/"
                f"{layout}/{module}</ExternalBaseURL>"
            )
        parts.append(
            f'<Download module="{module}" version="{fw.version}" size="{len(data)}" '
            f'sha256="{hashlib.sha256(data).hexdigest()}">{urls}</Download>'
        )
    body = "".join(parts)
    return f'<DeviceUpdateResponse downloads="{len(parts)}">{body}</DeviceUpdateResponse>'.encode()


NO_UPDATE = b'<DeviceUpdateResponse downloads="0"/>'


def provisioning_xml(
    *,
    internal: str | None = INTERNAL_URL,
    external: str | None = EXTERNAL_URL,
    enabled: bool = True,
    interval: int | None = None,
    user: str = "alice@contoso.test",
) -> bytes:
    """An in-band provisioning document."""
    props = []
    if internal:
        props.append(f'<property name="updatesServerInternalUrl">{internal}</property>')
    if external:
        props.append(f'<property name="updatesServerExternalUrl">{external}</property>')
    props.append(f'<property name="EnableDeviceUpdate">{str(enabled).lower()}</property>')
    if interval is not None:
        props.append(f'<property name="deviceUpdateCheckInterval">{interval}</property>')
    props.append(f'<property name="userUri">{user}</property>')
    return (
        '<provisionGroup name="ServerConfiguration"><propertyEntryList>'
        + "".join(props)
        + "</propertyEntryList></provisionGroup>"
    ).encode()


@dataclass
class Script:
    """Plays the driver of one phone by hand, at exact phone times."""

    phone: Phone
    now: float = T0
    cert_pem: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    history: list[tuple[float, Action]] = field(default_factory=list)
    pending: Action | None = None
    """The I/O the phone asked for last and still waits on (lookup, request, check)."""

    @classmethod
    def new(
        cls,
        *,
        model: str = "CX600",
        index: int = 1,
        seed: int = 7,
        settings: PhoneSettings | None = None,
        vendor: Vendor | None = None,
    ) -> Script:
        """A script with a fresh phone, powered off."""
        phone = Phone(get_model(model).identity(index), rng=random.Random(seed), settings=settings)
        return cls(phone, cert_pem=vendor.cert_pem if vendor else b"")

    # --- Feeding events -------------------------------------------------------------------

    def do(self, event: Event) -> list[Action]:
        """Feed one event; keep and return its actions."""
        self.actions = self.phone.handle(event)
        self.history += [(self.now, action) for action in self.actions]
        for action in self.actions:
            if isinstance(action, _IO):
                self.pending = action
        return self.actions

    def state(self) -> PhoneState:
        """What the phone is doing (a call, so checks after events are never narrowed away)."""
        return self.phone.state

    def later(self, seconds: float = STEP) -> float:
        """Move the phone's time on."""
        self.now += seconds
        return self.now

    def fire(self, timer: Timer) -> list[Action]:
        """Fire an armed timer at its exact time."""
        self.now = self.phone.timers[timer]
        return self.do(TimerFired(self.now, timer))

    def power_on(self, lease: Lease = LEASE) -> list[Action]:
        """Plug the phone in."""
        return self.do(PowerOn(self.now, lease))

    def boot(self, lease: Lease = LEASE) -> list[Action]:
        """Plug the phone in and let it boot; it starts its power-on check."""
        self.power_on(lease)
        return self.fire(Timer.BOOT)

    def resolve(self, *addresses: str, kept: str | None = None) -> list[Action]:
        """Answer the pending DNS lookup (``kept``: the address of a connection still open)."""
        assert isinstance(self.pending, Resolve), self.pending
        return self.do(Resolved(self.later(), self.pending.host, addresses, kept))

    def respond(
        self,
        status: int,
        body: bytes = b"",
        *,
        diagnostics: str | None = None,
        retry_after: float | None = None,
    ) -> list[Action]:
        """Answer the pending request."""
        return self.do(ResponseReceived(self.later(), status, body, diagnostics, retry_after))

    def refuse(self, reason: str = "connection refused") -> list[Action]:
        """Fail the pending connection."""
        return self.do(ConnectionFailed(self.later(), reason))

    def serve_download(self) -> list[Action]:
        """Complete the pending download with the file the script holds for it."""
        download = self.pending
        assert isinstance(download, StartDownload), download
        data = self.files[download.module]
        return self.do(DownloadFinished(self.later(), len(data), f'"{download.module}-etag"'))

    def verify(self) -> list[Action]:
        """Run the real firmware check the core asked for, on the script's files."""
        action = self.pending
        try:
            if isinstance(action, VerifyCatalog):
                catalog = verify_catalog(
                    self.files[action.module],
                    self.cert_pem,
                    vendor=action.vendor,
                    model=action.model,
                    revision=action.revision,
                    locale=action.locale,
                    version=action.version,
                )
                return self.do(CatalogVerified(self.later(), catalog.files))
            assert isinstance(action, VerifyImage), action
            entry = CatalogEntry(action.module, action.size, action.sha256)
            check_image(self.files[action.module], entry)
            return self.do(ImageVerified(self.later()))
        except FirmwareError as exc:
            return self.do(VerificationFailed(self.later(), str(exc)))

    # --- Whole passages -------------------------------------------------------------------

    def check_with(self, body: bytes, addresses: tuple[str, ...] = FRONT_ENDS) -> list[Action]:
        """Answer the pending check's DNS lookup and request with ``body``."""
        self.resolve(*addresses)
        return self.respond(200, body)

    def download_all(self, fw: Firmware) -> list[Action]:
        """Serve every file of ``fw`` from the first front end."""
        self.files = dict(fw.files)
        while isinstance(self.pending, Resolve) and self.phone.state is PhoneState.DOWNLOADING:
            self.resolve(FRONT_ENDS[0])
            self.serve_download()
        return self.actions

    def install(self, fw: Firmware) -> list[Action]:
        """From an offer of ``fw``: download, verify both steps, and finish flashing."""
        self.download_all(fw)
        self.verify()
        self.verify()
        return self.fire(Timer.FLASH)

    # --- Reading what happened ------------------------------------------------------------

    def last(self, kind: type[A]) -> A:
        """The last action of ``kind`` among the latest actions."""
        for action in reversed(self.actions):
            if isinstance(action, kind):
                return action
        raise AssertionError(f"no {kind.__name__} in {self.actions}")

    def all(self, kind: type[A]) -> list[A]:
        """Every action of ``kind`` the phone ever asked for."""
        return [action for _, action in self.history if isinstance(action, kind)]

    def log_text(self) -> str:
        """The phone's log."""
        return self.phone.log.render()
