"""Turns the bytes of a query into the bytes of its answer, with a cache in front.

The server asks ``Responder.respond(view, data, tcp)`` for every packet. The cache is
keyed on (view, transport, the query bytes after the ID): identical queries (same name,
type, flags and EDNS options) get the same packed answer with only the ID patched in.
A cached answer holds every rotation of a rotating RRset, packed in advance, and a
rotor shared by every query of that RRset in that view, so "each answer starts at the
next address" holds across clients and transports. Only cache misses go through dnslib.
Fault changes clear the cache (the server wires FaultTable's change hook to
``invalidate``); the view is part of the key, so firewall changes need no invalidation.

How packets are treated, in the order they are checked:

==============================  ===========================================================
shorter than a header           dropped (nothing to reply to)
QR=1 (a response)               dropped (replying to responses invites reflection loops)
opcode other than QUERY         NOTIMP, header only
QDCOUNT other than 1            FORMERR, header only
unparseable, or several OPTs    FORMERR, header only
a label over 63 bytes           FORMERR, header only (no such name can exist, RFC 1035)
a name over 255 bytes           FORMERR, header only
EDNS version above 0            BADVERS (RFC 6891)
class other than IN, AXFR/IXFR  REFUSED
name outside every zone         REFUSED (AA=0: not authoritative for it)
fault on the name               remove: NXDOMAIN; servfail: SERVFAIL; delay; drop: nothing
otherwise                       answer, NODATA or NXDOMAIN (SOA in authority), AA=1
==============================  ===========================================================

Malformed packets are never cached (garbage would crowd out real queries). Over UDP the
answer must fit 512 bytes, or the client's EDNS payload size (at least 512, at most 4096);
when it does not, TC=1 is set and the answer and authority sections are left empty (a
partial RRset would mislead), so the client retries over TCP, where up to 65535 bytes fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dnslib import CLASS, EDNS0, QTYPE, RCODE, RR, DNSHeader, DNSLabel, DNSRecord

from lab.net.dns.faults import FaultKind, FaultTable
from lab.net.dns.querylog import Outcome
from lab.net.dns.zones import Lookup, RRSet, View, ViewRecords

HEADER_SIZE = 12
MAX_LABEL = 63  # bytes (RFC 1035 2.3.4)
MAX_NAME = 255  # bytes on the wire: each label with its length byte, and the root's zero
UDP_PAYLOAD = 512  # without EDNS (RFC 1035)
MAX_UDP_PAYLOAD = 4096  # what we honour and advertise with EDNS
MAX_TCP_MESSAGE = 65535
BADVERS = 16  # extended rcode: 4 bits in the header, the rest in OPT
DEFAULT_CACHE_SIZE = 10_000

_QR = 0x80
_OPCODE = 0x78
_RD = 0x01


@dataclass(frozen=True)
class Malformed:
    """A packet that is not a query we answer: why, and the header-only reply if any."""

    reason: str
    reply: bytes | None = None


class Rotor:
    """The rotation of one rotating RRset: which order the next answer uses."""

    __slots__ = ("_next", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._next = 0

    def advance(self) -> int:
        """The rotation to send now; the following call gives the next one."""
        current = self._next
        self._next = (current + 1) % self.size
        return current


class Answer:
    """The cached result of one form of query: packed response(s), fault and log outcome."""

    __slots__ = ("delay", "outcome", "responses", "rotor")

    def __init__(
        self,
        responses: tuple[bytes, ...],
        outcome: Outcome,
        rotor: Rotor | None = None,
        delay: float = 0.0,
    ) -> None:
        self.responses = responses
        self.outcome = outcome
        self.rotor = rotor
        self.delay = delay

    def response(self, query: bytes) -> bytes | None:
        """The next response with ``query``'s ID, or None when nothing is to be sent."""
        if not self.responses:
            return None
        packed = self.responses[self.rotor.advance() if self.rotor else 0]
        return query[:2] + packed[2:]


class Responder:
    """Answers queries from the views, applying faults, through a response cache."""

    def __init__(
        self,
        views: Mapping[View, ViewRecords],
        faults: FaultTable,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.views = views
        self.faults = faults
        self.cache_size = cache_size
        self.hits = 0
        self.misses = 0
        self._cache: dict[tuple[View, bool, bytes], Answer] = {}
        self._rotors: dict[tuple[View, str, int], Rotor] = {}

    def respond(self, view: View, data: bytes, tcp: bool) -> Answer | Malformed:
        """What to do with the packet ``data`` from a client of ``view``."""
        key = (view, tcp, data[2:])
        answer = self._cache.get(key)
        if answer is not None:
            self.hits += 1
            return answer
        self.misses += 1
        result = self._resolve(view, data, tcp)
        if isinstance(result, Answer):
            if len(self._cache) >= self.cache_size:
                # Crude but cheap: a flood of distinct names only costs us re-packing.
                self._cache.clear()
            self._cache[key] = result
        return result

    def invalidate(self) -> None:
        """Forget every cached answer (faults changed)."""
        self._cache.clear()

    def stats(self) -> dict[str, int]:
        """Cache counters."""
        return {"hits": self.hits, "misses": self.misses, "size": len(self._cache)}

    def _resolve(self, view: View, data: bytes, tcp: bool) -> Answer | Malformed:
        if len(data) < HEADER_SIZE:
            return Malformed("short")
        if data[2] & _QR:
            return Malformed("response")
        if data[2] & _OPCODE:
            return Malformed("opcode", error_reply(data, RCODE.NOTIMP))
        if data[4:6] != b"\x00\x01":
            return Malformed("question_count", error_reply(data, RCODE.FORMERR))
        try:
            request = DNSRecord.parse(data)
        except Exception:  # dnslib raises assorted errors on garbage; all mean FORMERR
            return Malformed("unparseable", error_reply(data, RCODE.FORMERR))
        # dnslib reads such names but cannot write them back, so they never reach _answer.
        name_fault = _name_fault(request.questions[0].qname)
        if name_fault is not None:
            return Malformed(name_fault, error_reply(data, RCODE.FORMERR))
        opts = [rr for rr in request.ar if rr.rtype == QTYPE.OPT]
        if len(opts) > 1:
            return Malformed("edns", error_reply(data, RCODE.FORMERR))
        return self._answer(view, request, opts[0] if opts else None, tcp)

    def _answer(self, view: View, request: Any, opt: Any, tcp: bool) -> Answer:
        question = request.questions[0]
        qname = b".".join(question.qname.label).lower().decode("utf-8", "replace")
        badvers = opt is not None and opt.edns_ver > 0
        fault = None if badvers or question.qclass != CLASS.IN else self.faults.get(qname)
        kind = fault.kind if fault is not None else None
        if badvers:
            lookup = Lookup(BADVERS, None)
        else:
            lookup = self._lookup(self.views[view], qname, question.qclass, question.qtype, kind)

        limit = MAX_TCP_MESSAGE if tcp else UDP_PAYLOAD
        reply_opt = None
        if opt is not None:
            if not tcp:
                limit = min(max(opt.edns_len, UDP_PAYLOAD), MAX_UDP_PAYLOAD)
            reply_opt = EDNS0(
                udp_len=MAX_UDP_PAYLOAD,
                ext_rcode=lookup.rcode >> 4,
                flags="do" if opt.edns_do else "",
            )

        def outcome(rcode: str | None, answers: int, truncated: bool) -> Outcome:
            return Outcome(
                qname=qname,
                qtype=str(QTYPE[question.qtype]),
                view=view.value,
                rcode=rcode,
                answers=answers,
                fault=kind.value if kind is not None else None,
                truncated=truncated,
            )

        if kind is FaultKind.DROP:
            return Answer((), outcome(None, 0, False))
        packed, count, truncated = _pack(request, lookup, 0, reply_opt, limit)
        responses = [packed]
        rotor = None
        rotating = lookup.rotating
        if rotating is not None and not truncated and rotating.rotations > 1:
            # Every order is packed now, so a cache hit never needs dnslib.
            responses += [
                _pack(request, lookup, start, reply_opt, limit)[0]
                for start in range(1, rotating.rotations)
            ]
            rotor = self._rotors.setdefault(
                (view, rotating.name, rotating.rtype), Rotor(rotating.rotations)
            )
        delay = fault.delay if fault is not None and kind is FaultKind.DELAY else 0.0
        return Answer(
            tuple(responses), outcome(rcode_name(lookup.rcode), count, truncated), rotor, delay
        )

    @staticmethod
    def _lookup(
        records: ViewRecords, qname: str, qclass: int, qtype: int, fault: FaultKind | None
    ) -> Lookup:
        if qclass != CLASS.IN or qtype in (QTYPE.AXFR, QTYPE.IXFR):
            return Lookup(RCODE.REFUSED, None)
        if fault is FaultKind.REMOVE:
            return records.missing(qname)
        if fault is FaultKind.SERVFAIL:
            return Lookup(RCODE.SERVFAIL, records.zone_of(qname))
        return records.lookup(qname, qtype)


def rcode_name(rcode: int) -> str:
    """The mnemonic of an (extended) rcode."""
    return "BADVERS" if rcode == BADVERS else str(RCODE[rcode])


def _pack(
    request: Any, lookup: Lookup, start: int, opt: Any, limit: int
) -> tuple[bytes, int, bool]:
    """Pack the reply to ``request`` (answer rotated to ``start``): bytes, answers, truncated."""
    question = request.questions[0]
    authoritative = lookup.rcode in (RCODE.NOERROR, RCODE.NXDOMAIN)
    header = DNSHeader(
        id=request.header.id,
        qr=1,
        aa=int(authoritative),
        ra=0,
        rd=request.header.rd,
        cd=request.header.cd,
        rcode=lookup.rcode & 0xF,
    )
    reply = DNSRecord(header, questions=[question])
    for rrset in lookup.answer:
        rdatas = rrset.rotated(start) if rrset.rotate else rrset.rdatas
        # The owner is the question's own name: same case as asked, compressed to it.
        reply.add_answer(*_rrs(question.qname, rrset, rdatas))
    for rrset in lookup.authority:
        reply.add_auth(*_rrs(DNSLabel(rrset.name), rrset, rrset.rdatas))
    if opt is not None:
        reply.add_ar(opt)
    packed: bytes = reply.pack()
    if len(packed) <= limit:
        return packed, len(reply.rr), False
    reply.rr, reply.auth = [], []
    reply.header.tc = 1
    return reply.pack(), 0, True


def _rrs(owner: Any, rrset: RRSet, rdatas: tuple[Any, ...]) -> list[Any]:
    return [RR(owner, rrset.rtype, ttl=rrset.ttl, rdata=rd) for rd in rdatas]


def _name_fault(name: DNSLabel) -> str | None:
    """Why ``name`` cannot be a DNS name (the Malformed reason), or None when it can."""
    labels = name.label
    if any(len(label) > MAX_LABEL for label in labels):
        return "label_too_long"
    if sum(len(label) + 1 for label in labels) + 1 > MAX_NAME:
        return "name_too_long"
    return None


def error_reply(query: bytes, rcode: int) -> bytes:
    """A header-only reply to a bad query: same ID, opcode and RD, QR=1, no sections."""
    flags = _QR | (query[2] & (_OPCODE | _RD))
    return query[:2] + bytes((flags, rcode)) + bytes(8)


def failure_reply(query: bytes) -> bytes | None:
    """SERVFAIL for a query the server failed on; None when there is nothing to reply to."""
    if len(query) < HEADER_SIZE or query[2] & _QR:
        return None
    return error_reply(query, RCODE.SERVFAIL)
