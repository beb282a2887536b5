"""The lease: what DHCP and the phone image give a phone before it talks to anything.

A lab writes it as ``<state-dir>/lease.json`` (docs/wire-protocol.md); this module reads it
into a `Lease` and says plainly what is missing or wrong. It is the only thing a phone is
told about the lab: never which side of the firewall it is on. A lab that keeps its own
clock (``lab up --start/--scale``) puts it in the lease too, and phones follow it, so a
phone's log and the front end's audit log tell the same time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from emulator.errors import LeaseError
from emulator.netns import Namespaces, parse_namespaces

DISCOVERY_LABEL = "ucupdates-r2"
UPDATE_CHECK_PATH = "/RequestHandler/ucdevice.upx"
SIGN_IN_PATH = "/Provisioning/signin"


@dataclass(frozen=True)
class LabTime:
    """The clock of the lab that wrote a lease: lab time ``start`` (epoch seconds) at wall
    time ``at``, running ``scale`` lab seconds per wall second from then."""

    start: float
    at: float
    scale: float

    def at_wall(self, wall: float) -> float:
        """Lab time at wall time ``wall`` (``time.time()``)."""
        return self.start + (wall - self.at) * self.scale


@dataclass(frozen=True)
class Lease:
    """DHCP options (DNS domain, DNS server, SIP server) and what the phone image trusts."""

    domain: str
    sip_server: str
    dns: tuple[str, int]
    https_port: int
    sip_domain: str = ""
    segments: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    ca_cert: Path | None = None
    vendor_certs: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))
    clock: LabTime | None = None
    """The lab's clock, which phones follow; None when the lab keeps the wall clock's time
    or publishes none."""
    netns: Namespaces | None = None
    """The network namespaces of the segments when the lab runs in its own network
    (`lab up --netns`): a phone's sockets are made in its segment's; None on loopback."""

    @property
    def discovery_host(self) -> str:
        """The name a never-signed-in phone looks up: ``ucupdates-r2.<domain>``."""
        return f"{DISCOVERY_LABEL}.{self.domain}"

    @property
    def discovery_url(self) -> str:
        """The update-check URL built from the lease when no provisioning is stored."""
        return self.url(self.discovery_host, UPDATE_CHECK_PATH)

    def url(self, host: str, path: str) -> str:
        """An HTTPS URL on the lease's port (every URL a phone builds itself uses it)."""
        return f"https://{host}:{self.https_port}{path}"


def parse_lease(data: str | bytes | Mapping[str, Any]) -> Lease:
    """Read a lease from its JSON text or the decoded object; LeaseError says what is wrong."""
    if isinstance(data, str | bytes):
        try:
            decoded = json.loads(data)
        except ValueError as exc:
            raise LeaseError(f"the lease is not valid JSON: {exc}") from None
    else:
        decoded = data
    if not isinstance(decoded, Mapping):
        raise LeaseError("the lease must be a JSON object")
    domain = _name(decoded, "domain")
    dns = decoded.get("dns")
    if not (isinstance(dns, list | tuple) and len(dns) == 2 and isinstance(dns[0], str)):
        raise LeaseError("lease key 'dns' must be [address, port]")
    segments = decoded.get("segments", {})
    vendors = decoded.get("vendor_certs", {})
    if not isinstance(segments, Mapping) or not all(isinstance(v, str) for v in segments.values()):
        raise LeaseError("lease key 'segments' must map segment names to address ranges")
    if not isinstance(vendors, Mapping) or not all(isinstance(v, str) for v in vendors.values()):
        raise LeaseError("lease key 'vendor_certs' must map vendor names to certificate paths")
    ca_cert = decoded.get("ca_cert")
    if ca_cert is not None and not isinstance(ca_cert, str):
        raise LeaseError("lease key 'ca_cert' must be a path")
    return Lease(
        domain=domain,
        sip_server=_name(decoded, "sip_server"),
        dns=(dns[0], _port(dns[1], "dns")),
        https_port=_port(decoded.get("https_port"), "https_port"),
        sip_domain=str(decoded.get("sip_domain") or domain),
        segments=MappingProxyType(dict(segments)),
        ca_cert=Path(ca_cert) if ca_cert else None,
        vendor_certs=MappingProxyType({k: Path(v) for k, v in vendors.items()}),
        clock=_clock(decoded.get("clock")),
        netns=parse_namespaces(decoded.get("netns"), segments),
    )


def _clock(value: object) -> LabTime | None:
    if value is None:
        return None
    problem = "lease key 'clock' must be {start: ISO time, at: seconds, scale: number > 0}"
    if not isinstance(value, Mapping):
        raise LeaseError(problem)
    start, at, scale = value.get("start"), value.get("at"), value.get("scale")
    if not isinstance(start, str) or isinstance(at, bool) or isinstance(scale, bool):
        raise LeaseError(problem)
    if not isinstance(at, int | float) or not isinstance(scale, int | float):
        raise LeaseError(problem)
    try:
        moment = datetime.fromisoformat(start)
    except ValueError:
        raise LeaseError(f"{problem}; {start!r} is no ISO time") from None
    if moment.tzinfo is None or not (math.isfinite(scale) and scale > 0) or not math.isfinite(at):
        raise LeaseError(problem)
    return LabTime(start=moment.timestamp(), at=float(at), scale=float(scale))


def load_lease(path: Path) -> Lease:
    """Read the lease file a lab published; LeaseError when it is missing or invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LeaseError(f"cannot read the lease {path}: {exc.strerror}") from None
    try:
        return parse_lease(text)
    except LeaseError as exc:
        raise LeaseError(f"{path}: {exc}") from None


def _name(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise LeaseError(f"lease key {key!r} must be a DNS name, not {value!r}")
    return value.rstrip(".").lower()


def _port(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise LeaseError(f"lease key {key!r} must hold a port between 1 and 65535, not {value!r}")
    return value
