"""The lab's DNS data: what each view holds and how a name is looked up in it.

Everything about *which* records exist lives here; nothing here touches a socket, a
clock or a fault. Rules:

- Two views are built once from the LabConfig: the internal view (answered to inside
  addresses) and the external view (outside addresses). Both hold SOA and NS at every
  zone apex and ``ns.<zone>`` = the DNS server's address.
- Internal: ``ucupdates-r2.<zone>`` = every front end of the discovery pool (rotated), each
  pool's FQDN = its front ends (rotated), each front end's FQDN, the edge and external web
  FQDNs = the edge, the SIP SRV record (at the discovery pool) and the NTP SRV record.
  External: ``ucupdates-r2.<zone>``, the edge and external web FQDNs = the edge; the pool
  and the front ends are never published outside.
- A name is kept in the most specific lab zone that contains it; a configured name outside
  every zone cannot be answered and is left out. Names are lower-case FQDNs without the
  final dot. The parents of a name, up to its zone apex, exist as empty non-terminals
  (NODATA, not NXDOMAIN), as in any real zone.
- Lookup gives an answer, NODATA or NXDOMAIN (both with the zone's SOA in authority), or
  REFUSED for a name outside every zone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dnslib import NS, QTYPE, RCODE, SOA, SRV, A

from lab.net.config import LabConfig
from lab.net.firewall import Zone

TTL = 60
# refresh, retry, expire, minimum; the minimum is also the negative-answer TTL (RFC 2308).
SOA_TIMERS = (3600, 600, 86400, TTL)
SOA_SERIAL = 1

SIP_SRV = "_sipinternaltls._tcp"
SIP_PORT = 5061
NTP_SRV = "_ntp._udp"
NTP_PORT = 123


class View(StrEnum):
    """Which set of records a query is answered from (split horizon, like views in BIND)."""

    INTERNAL = "internal"
    EXTERNAL = "external"

    @classmethod
    def of(cls, zone: Zone) -> View:
        """The view the firewall zone of a client's address gets."""
        return cls.INTERNAL if zone is Zone.INSIDE else cls.EXTERNAL


def normalize(name: str) -> str:
    """``name`` as the keys here spell it: lower case, no final dot."""
    return name.lower().rstrip(".")


def zone_of(name: str, zones: Iterable[str]) -> str | None:
    """The most specific of ``zones`` that contains ``name``, or None."""
    best: str | None = None
    for zone in zones:
        if (name == zone or name.endswith("." + zone)) and (best is None or len(zone) > len(best)):
            best = zone
    return best


@dataclass(frozen=True)
class RRSet:
    """All records of one name and type; ``rotate`` cycles their order answer by answer."""

    name: str
    rtype: int
    rdatas: tuple[Any, ...]
    ttl: int = TTL
    rotate: bool = False

    @property
    def type_name(self) -> str:
        """The type as a mnemonic (``A``, ``SRV``...)."""
        return str(QTYPE[self.rtype])

    @property
    def rotations(self) -> int:
        """How many different orders answers cycle through."""
        return len(self.rdatas) if self.rotate else 1

    def rotated(self, start: int) -> tuple[Any, ...]:
        """The records beginning at ``start`` (modulo their number)."""
        start %= len(self.rdatas)
        return self.rdatas[start:] + self.rdatas[:start]


@dataclass(frozen=True)
class Lookup:
    """The result of looking a name up in one view, before any fault or packing."""

    rcode: int
    zone: str | None
    answer: tuple[RRSet, ...] = ()
    authority: tuple[RRSet, ...] = ()

    @property
    def rotating(self) -> RRSet | None:
        """The answer's RRset when it is a single one whose order rotates."""
        if len(self.answer) == 1 and self.answer[0].rotate:
            return self.answer[0]
        return None


class ViewRecords:
    """The records of one view across every lab zone, with lookup."""

    def __init__(self, view: View, zones: Iterable[str]) -> None:
        self.view = view
        self.zones = tuple(zones)
        self._rrsets: dict[str, dict[int, RRSet]] = {}
        self._soa: dict[str, RRSet] = {}

    def add(self, name: str, rtype: int, rdatas: Iterable[Any], *, rotate: bool = False) -> bool:
        """Add records (merged with any of the same name and type); False if outside the zones."""
        name = normalize(name)
        zone = zone_of(name, self.zones)
        if zone is None:
            return False
        types = self._rrsets.setdefault(name, {})
        old = types.get(rtype)
        merged = list(old.rdatas) if old else []
        merged.extend(rd for rd in rdatas if rd not in merged)
        types[rtype] = RRSet(name, rtype, tuple(merged), rotate=rotate or bool(old and old.rotate))
        if rtype == QTYPE.SOA:
            self._soa[zone] = types[rtype]
        # Parents up to the apex exist without records (empty non-terminals).
        while name != zone:
            name = name.partition(".")[2]
            self._rrsets.setdefault(name, {})
        return True

    def zone_of(self, name: str) -> str | None:
        """The zone of this view that holds ``name``."""
        return zone_of(normalize(name), self.zones)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize(name) in self._rrsets

    def names(self) -> list[str]:
        """Every name with at least one record."""
        return sorted(name for name, types in self._rrsets.items() if types)

    def rrsets(self) -> Iterator[RRSet]:
        """Every RRset of the view, by name then type."""
        for name in sorted(self._rrsets):
            types = self._rrsets[name]
            for rtype in sorted(types):
                yield types[rtype]

    def get(self, name: str, rtype: int) -> RRSet | None:
        """The RRset of ``name`` and ``rtype``, if any."""
        return self._rrsets.get(normalize(name), {}).get(rtype)

    def lookup(self, name: str, qtype: int) -> Lookup:
        """Answer, NODATA or NXDOMAIN (with the SOA), or REFUSED outside every zone."""
        name = normalize(name)
        zone = zone_of(name, self.zones)
        if zone is None:
            return Lookup(RCODE.REFUSED, None)
        types = self._rrsets.get(name)
        if types is None:
            return self.missing(name)
        if qtype == QTYPE.ANY:
            answer = tuple(types[t] for t in sorted(types))
        else:
            answer = (types[qtype],) if qtype in types else ()
        if not answer:
            return Lookup(RCODE.NOERROR, zone, authority=self._negative_soa(zone))
        return Lookup(RCODE.NOERROR, zone, answer=answer)

    def missing(self, name: str) -> Lookup:
        """NXDOMAIN for ``name`` as if it did not exist (REFUSED outside every zone)."""
        zone = zone_of(normalize(name), self.zones)
        if zone is None:
            return Lookup(RCODE.REFUSED, None)
        return Lookup(RCODE.NXDOMAIN, zone, authority=self._negative_soa(zone))

    def _negative_soa(self, zone: str) -> tuple[RRSet, ...]:
        soa = self._soa.get(zone)
        return (soa,) if soa else ()


def build_views(config: LabConfig) -> dict[View, ViewRecords]:
    """Both views of the lab described by ``config``."""
    internal = ViewRecords(View.INTERNAL, config.zones)
    external = ViewRecords(View.EXTERNAL, config.zones)
    dns = str(config.dns_address)
    edge = A(str(config.edge.address))
    discovery = [A(str(fe.address)) for fe in config.discovery_pool.front_ends]

    for records in (internal, external):
        for zone in config.zones:
            ns = f"ns.{zone}"
            soa = SOA(ns, f"hostmaster.{zone}", (SOA_SERIAL, *SOA_TIMERS))
            records.add(zone, QTYPE.SOA, [soa])
            records.add(zone, QTYPE.NS, [NS(ns)])
            records.add(ns, QTYPE.A, [A(dns)])
        records.add(config.edge.fqdn, QTYPE.A, [edge])
        records.add(config.edge.external_web, QTYPE.A, [edge])

    for name in config.ucupdates_names:
        internal.add(name, QTYPE.A, discovery, rotate=True)
        external.add(name, QTYPE.A, [edge])
    for pool in config.pools:
        members = [A(str(fe.address)) for fe in pool.front_ends]
        internal.add(pool.fqdn, QTYPE.A, members, rotate=len(members) > 1)
        for fe in pool.front_ends:
            internal.add(fe.fqdn, QTYPE.A, [A(str(fe.address))])
    sip_server = config.discovery_pool.fqdn
    internal.add(f"{SIP_SRV}.{config.sip_domain}", QTYPE.SRV, [SRV(0, 0, SIP_PORT, sip_server)])
    ntp = f"ntp.{config.dhcp_domain}"
    internal.add(f"{NTP_SRV}.{config.dhcp_domain}", QTYPE.SRV, [SRV(0, 0, NTP_PORT, ntp)])
    internal.add(ntp, QTYPE.A, [A(dns)])
    return {View.INTERNAL: internal, View.EXTERNAL: external}
