"""The DNS server over real UDP and TCP sockets on loopback, with dnspython and dig as clients.

Clients bind their own source address: 127.10.0.50 is inside the default lab's firewall,
127.20.0.50 outside. The server binds the config's DNS address on a free port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import random
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.errors import DNSError
from lab.events import Event
from lab.net.config import FrontEnd, LabConfig, Pool, default_config
from lab.net.dns import DNSServer
from lab.net.dns.faults import FaultTable
from lab.net.dns.responder import Answer, Malformed, Responder
from lab.net.dns.zones import View, build_views
from lab.net.firewall import FirewallPolicy
from lab.net.guard import ConnectionBudget

INSIDE = "127.10.0.50"
OUTSIDE = "127.20.0.50"
DOMAIN = "contoso.test"
UCUPDATES = f"ucupdates-r2.{DOMAIN}"
FRONT_ENDS = ["127.10.0.11", "127.10.0.12"]  # pool01, the discovery pool
SE01 = "127.10.0.21"  # the Standard Edition server: the pool se01.contoso.test
EDGE = "127.20.0.10"
TIMEOUT = 5.0


@pytest.fixture
def config() -> LabConfig:
    return default_config().with_ports(dns=0)


@pytest.fixture
def firewall(config: LabConfig) -> FirewallPolicy:
    return FirewallPolicy(config.inside, config.outside)


@pytest.fixture
async def server(config: LabConfig, firewall: FirewallPolicy) -> AsyncIterator[DNSServer]:
    async with DNSServer(config, firewall) as server:
        yield server


def with_front_ends(config: LabConfig, count: int) -> LabConfig:
    """The lab with ``count`` front ends instead of two in its discovery pool (the pool
    ``ucupdates-r2`` names); the other pools stay as they are."""
    inside = list(ipaddress.IPv4Network("127.10.1.0/24").hosts()) + list(
        ipaddress.IPv4Network("127.10.2.0/24").hosts()
    )
    name = config.ucupdates_pool
    front_ends = tuple(
        FrontEnd(f"fe{i:03}", f"fe{i:03}.{DOMAIN}", inside[i], name) for i in range(count)
    )
    pools = tuple(Pool(name, front_ends) if pool.fqdn == name else pool for pool in config.pools)
    return dataclasses.replace(config, pools=pools)


async def ask(
    server: DNSServer,
    name: str,
    rdtype: str = "A",
    *,
    source: str = INSIDE,
    tcp: bool = False,
    use_edns: int | None = None,
    payload: int | None = None,
    want_dnssec: bool = False,
) -> dns.message.Message:
    """One query from ``source`` with dnspython (EDNS only when asked for)."""
    query = dns.message.make_query(
        name, rdtype, use_edns=use_edns, payload=payload, want_dnssec=want_dnssec
    )
    host, port = server.address
    if tcp:
        return await dns.asyncquery.tcp(query, host, TIMEOUT, port, source)
    return await dns.asyncquery.udp(query, host, TIMEOUT, port, source)


def addresses(response: dns.message.Message) -> list[str]:
    """The A records of the answer, in the order they were sent."""
    return [rd.address for rrset in response.answer for rd in rrset]


def authority_types(response: dns.message.Message) -> list[str]:
    return [dns.rdatatype.to_text(rrset.rdtype) for rrset in response.authority]


class RawClient:
    """A bare UDP socket with a source address, for byte-level and ordering checks."""

    def __init__(self, server: DNSServer, source: str) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server.address)

    def send_query(self, name: str, rdtype: str = "A", qid: int = 1) -> None:
        self.send(dns.message.make_query(name, rdtype, id=qid).to_wire())

    async def receive(self) -> dns.message.Message:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65535), TIMEOUT)
        return dns.message.from_wire(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_client(server: DNSServer) -> Iterator[Callable[[str], RawClient]]:
    clients: list[RawClient] = []

    def make(source: str) -> RawClient:
        clients.append(RawClient(server, source))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


# -- views ---------------------------------------------------------------------------------


@pytest.mark.parametrize("send", [dns.query.udp, dns.query.tcp], ids=["udp", "tcp"])
async def test_inside_gets_the_front_ends_outside_the_edge(
    server: DNSServer, send: Callable[..., dns.message.Message]
) -> None:
    host, port = server.address

    async def blocking_client(source: str) -> dns.message.Message:
        # dnspython's blocking API, in a thread: a client with no share in the server's loop.
        query = dns.message.make_query(UCUPDATES, "A")
        return await asyncio.to_thread(send, query, host, TIMEOUT, port, source)

    inside = await blocking_client(INSIDE)
    assert inside.rcode() == dns.rcode.NOERROR
    assert sorted(addresses(inside)) == FRONT_ENDS
    assert inside.flags & dns.flags.AA
    assert not inside.flags & dns.flags.RA

    outside = await blocking_client(OUTSIDE)
    assert addresses(outside) == [EDGE]


async def test_the_pool_is_not_published_outside(server: DNSServer) -> None:
    assert sorted(addresses(await ask(server, "pool01.contoso.test"))) == FRONT_ENDS
    outside = await ask(server, "pool01.contoso.test", source=OUTSIDE)
    assert outside.rcode() == dns.rcode.NXDOMAIN
    assert addresses(await ask(server, "webext.contoso.test", source=OUTSIDE)) == [EDGE]


async def test_each_pool_answers_with_its_own_front_ends(server: DNSServer) -> None:
    assert addresses(await ask(server, "se01.contoso.test")) == [SE01]
    assert addresses(await ask(server, "se01.contoso.test", tcp=True)) == [SE01]
    firsts = [addresses(await ask(server, "pool01.contoso.test"))[0] for _ in range(3)]
    assert firsts == [FRONT_ENDS[0], FRONT_ENDS[1], FRONT_ENDS[0]]
    # ucupdates-r2 names the discovery pool only: never the Standard Edition server.
    for _ in range(3):
        assert sorted(addresses(await ask(server, UCUPDATES))) == FRONT_ENDS
    outside = await ask(server, "se01.contoso.test", source=OUTSIDE)
    assert outside.rcode() == dns.rcode.NXDOMAIN


async def test_srv_records_inside(server: DNSServer) -> None:
    sip = await ask(server, "_sipinternaltls._tcp.contoso.test", "SRV")
    assert [rd.to_text() for rrset in sip.answer for rd in rrset] == [
        "0 0 5061 pool01.contoso.test."
    ]
    ntp = await ask(server, "_ntp._udp.contoso.test", "SRV")
    assert [rd.to_text() for rrset in ntp.answer for rd in rrset] == ["0 0 123 ntp.contoso.test."]
    assert addresses(await ask(server, "ntp.contoso.test")) == ["127.10.0.2"]


async def test_each_answer_starts_at_the_next_front_end(server: DNSServer) -> None:
    firsts = [
        addresses(await ask(server, UCUPDATES, tcp=tcp))[0]
        for tcp in (False, False, True, False, True)
    ]
    # One rotation per name and view, shared by UDP and TCP.
    assert firsts == [FRONT_ENDS[0], FRONT_ENDS[1], FRONT_ENDS[0], FRONT_ENDS[1], FRONT_ENDS[0]]
    assert addresses(await ask(server, UCUPDATES)) == [FRONT_ENDS[1], FRONT_ENDS[0]]


async def test_unknown_name_is_nxdomain_with_the_soa(server: DNSServer) -> None:
    response = await ask(server, "nothing-here.contoso.test")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.answer == []
    assert authority_types(response) == ["SOA"]
    assert response.authority[0].name.to_text() == "contoso.test."
    assert response.flags & dns.flags.AA


async def test_wrong_type_is_nodata_with_the_soa(server: DNSServer) -> None:
    response = await ask(server, UCUPDATES, "AAAA")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []
    assert authority_types(response) == ["SOA"]


@pytest.mark.parametrize(
    ("name", "rdtype", "rdclass"),
    [
        ("www.example.com", "A", "IN"),
        ("notcontoso.test", "A", "IN"),
        ("contoso.test", "AXFR", "IN"),
        ("version.bind", "TXT", "CH"),
    ],
)
async def test_outside_every_zone_is_refused(
    server: DNSServer, name: str, rdtype: str, rdclass: str
) -> None:
    query = dns.message.make_query(name, rdtype, rdclass)
    host, port = server.address
    response = await dns.asyncquery.udp(query, host, TIMEOUT, port, INSIDE)
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.flags & dns.flags.AA


async def test_a_firewall_change_applies_to_the_next_query(
    server: DNSServer, firewall: FirewallPolicy
) -> None:
    assert sorted(addresses(await ask(server, UCUPDATES, source=INSIDE))) == FRONT_ENDS
    firewall.set_zone(INSIDE, "outside")
    assert addresses(await ask(server, UCUPDATES, source=INSIDE)) == [EDGE]
    assert addresses(await ask(server, UCUPDATES, source=INSIDE, tcp=True)) == [EDGE]
    # Its neighbour did not move.
    assert sorted(addresses(await ask(server, UCUPDATES, source="127.10.0.51"))) == FRONT_ENDS

    firewall.set_zone(OUTSIDE, "inside")
    assert sorted(addresses(await ask(server, UCUPDATES, source=OUTSIDE))) == FRONT_ENDS
    firewall.clear()
    assert sorted(addresses(await ask(server, UCUPDATES, source=INSIDE))) == FRONT_ENDS
    assert server.stats()["views"] == {"internal": 4, "external": 2}


# -- EDNS0 and truncation ------------------------------------------------------------------


@pytest.fixture
async def big_server(config: LabConfig, firewall: FirewallPolicy) -> AsyncIterator[DNSServer]:
    """A lab with 60 front ends: the ucupdates-r2 answer (1003 bytes) exceeds 512."""
    async with DNSServer(with_front_ends(config, 60), firewall) as server:
        yield server


@pytest.mark.parametrize(
    ("payload", "truncated"),
    [(None, True), (512, True), (256, True), (1232, False), (4096, False)],
)
async def test_udp_answer_fits_the_payload_size_or_is_truncated(
    big_server: DNSServer, payload: int | None, truncated: bool
) -> None:
    edns = None if payload is None else 0
    response = await ask(big_server, UCUPDATES, use_edns=edns, payload=payload)
    assert bool(response.flags & dns.flags.TC) is truncated
    assert len(response.answer and response.answer[0]) == (0 if truncated else 60)
    if payload is None:
        assert response.edns == -1
    else:
        assert (response.edns, response.payload) == (0, 4096)
    assert big_server.stats()["truncated"] == int(truncated)


async def test_tcp_carries_the_full_answer(big_server: DNSServer) -> None:
    udp = await ask(big_server, UCUPDATES)
    assert udp.flags & dns.flags.TC
    tcp = await ask(big_server, UCUPDATES, tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert len(addresses(tcp)) == 60
    # The truncated UDP answer did not use up a rotation.
    assert addresses(tcp)[0] == "127.10.1.1"
    assert addresses(await ask(big_server, UCUPDATES, tcp=True))[0] == "127.10.1.2"


async def test_payload_size_is_capped_at_4096(config: LabConfig, firewall: FirewallPolicy) -> None:
    # 300 front ends make a 4843-byte answer: too big for UDP whatever the client offers.
    async with DNSServer(with_front_ends(config, 300), firewall) as server:
        response = await ask(server, UCUPDATES, use_edns=0, payload=65000)
    assert response.flags & dns.flags.TC
    assert response.answer == []


async def test_edns_version_above_zero_is_badvers(server: DNSServer) -> None:
    response = await ask(server, UCUPDATES, use_edns=1)
    assert response.rcode() == dns.rcode.BADVERS
    assert response.edns == 0
    assert server.stats()["rcodes"] == {"BADVERS": 1}


async def test_do_bit_is_echoed(server: DNSServer) -> None:
    response = await ask(server, UCUPDATES, want_dnssec=True)
    assert response.ednsflags & dns.flags.DO


# -- malformed packets ---------------------------------------------------------------------

QUERY = dns.message.make_query(UCUPDATES, "A", id=0x1234).to_wire()


def header(flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, an, ns, ar)


def _random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(12, 300))


def _truncated_header(rng: random.Random) -> bytes:
    return QUERY[: rng.randrange(0, 12)]


def _response(rng: random.Random) -> bytes:
    return QUERY[:2] + bytes([QUERY[2] | 0x80]) + QUERY[3:]


def _other_opcode(rng: random.Random) -> bytes:
    opcode = rng.choice([1, 2, 4, 5, 15])
    return QUERY[:2] + bytes([QUERY[2] | opcode << 3]) + QUERY[3:]


def _question_count(rng: random.Random) -> bytes:
    return header(qd=rng.choice([0, 2, 65535])) + QUERY[12:]


def _broken_question(rng: random.Random) -> bytes:
    body = rng.choice(
        [
            b"\x3fabc",  # label longer than the packet
            b"\xc0\x40\x00\x01\x00\x01",  # pointer forwards
            b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
            b"\x03\xff\xfe\xfd\x00\x00\x01\x00\x01",  # label that is not text
            b"\x03abc\x00",  # no type and class
            b"",  # no question at all
        ]
    )
    return header() + body


def _garbage_records(rng: random.Random) -> bytes:
    # A good question followed by an answer record cut short.
    return header(an=1) + QUERY[12:] + b"\xc0\x0c\x00\x01\x00\x01\x00\x00"


def _two_opts(rng: random.Random) -> bytes:
    opt = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"
    return header(ar=2) + QUERY[12:] + opt + opt


MAKERS = [
    _random_bytes,
    _truncated_header,
    _response,
    _other_opcode,
    _question_count,
    _broken_question,
    _garbage_records,
    _two_opts,
]


def malformed_packets(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [MAKERS[i % len(MAKERS)](rng) for i in range(count)]


async def test_a_flood_of_malformed_packets_neither_crashes_nor_stalls(
    server: DNSServer, raw_client: Callable[[str], RawClient]
) -> None:
    flood = raw_client(OUTSIDE)
    packets = malformed_packets(10_000, seed=53)
    batch = 50  # small enough for the server's socket buffer between checks
    for start in range(0, len(packets), batch):
        for packet in packets[start : start + batch]:
            flood.send(packet)
        # A real query right behind each batch is still answered.
        assert sorted(addresses(await ask(server, UCUPDATES))) == FRONT_ENDS

    stats = server.stats()
    assert stats["malformed"] == 10_000
    assert stats["queries_total"] == 200
    reasons = stats["malformed_reasons"]
    per_maker = 10_000 // len(MAKERS)
    assert reasons["short"] >= per_maker
    assert reasons["response"] >= per_maker
    assert reasons["opcode"] >= per_maker
    assert reasons["question_count"] >= per_maker
    assert reasons["unparseable"] >= 2 * per_maker
    assert reasons["edns"] == per_maker
    assert stats["errors"] == 0
    assert stats["dropped"] == reasons["short"] + reasons["response"]
    assert len(server.query_log) == 200  # malformed packets are counted, not logged


async def test_malformed_packets_get_formerr_or_notimp(
    server: DNSServer, raw_client: Callable[[str], RawClient]
) -> None:
    client = raw_client(INSIDE)
    client.send(_other_opcode(random.Random(1)))
    notimp = await client.receive()
    assert notimp.rcode() == dns.rcode.NOTIMP
    assert notimp.id == 0x1234
    client.send(_two_opts(random.Random(1)))
    formerr = await client.receive()
    assert formerr.rcode() == dns.rcode.FORMERR
    client.send(_response(random.Random(1)))  # dropped: no reply to a reply
    client.send_query(UCUPDATES, qid=7)
    assert (await client.receive()).id == 7


def query_for(labels: list[bytes], qid: int = 0x4242) -> bytes:
    """A query for the name made of ``labels``, built by hand (dnspython refuses bad names)."""
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)


ZONE_LABELS = [b"contoso", b"test"]
LONGEST_NAME = [b"a" * 63] * 3 + [b"b" * 48, *ZONE_LABELS]  # 255 bytes on the wire
IMPOSSIBLE_NAMES = {
    "label_too_long": [b"a" * 64, *ZONE_LABELS],
    "name_too_long": [b"a" * 63] * 3 + [b"b" * 49, *ZONE_LABELS],  # 256 bytes
}


@pytest.mark.parametrize("reason", sorted(IMPOSSIBLE_NAMES))
def test_a_name_no_dns_name_can_be_gets_formerr(reason: str) -> None:
    responder = Responder(build_views(default_config()), FaultTable(default_config().zones))
    result = responder.respond(View.INTERNAL, query_for(IMPOSSIBLE_NAMES[reason]), False)
    assert isinstance(result, Malformed)
    assert result.reason == reason
    assert result.reply is not None
    reply = dns.message.from_wire(result.reply)
    assert (reply.id, reply.rcode(), bool(reply.flags & dns.flags.QR)) == (
        0x4242,
        dns.rcode.FORMERR,
        True,
    )


def test_the_longest_names_dns_allows_are_still_answered() -> None:
    responder = Responder(build_views(default_config()), FaultTable(default_config().zones))
    result = responder.respond(View.INTERNAL, query_for(LONGEST_NAME), False)
    assert isinstance(result, Answer)
    assert result.outcome.rcode == "NXDOMAIN"


async def test_impossible_names_get_formerr_over_udp_and_tcp_and_are_logged_as_counts(
    server: DNSServer, raw_client: Callable[[str], RawClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = raw_client(OUTSIDE)
    for qid in range(50):
        client.send(query_for(IMPOSSIBLE_NAMES["label_too_long"], qid))
        reply = await client.receive()
        assert (reply.id, reply.rcode()) == (qid, dns.rcode.FORMERR)
    reader, writer = await asyncio.open_connection(*server.address, local_addr=(INSIDE, 0))
    writer.write(frame(query_for(IMPOSSIBLE_NAMES["name_too_long"], 0xBEEF)))
    reply = await read_frame(reader)
    assert (reply.id, reply.rcode()) == (0xBEEF, dns.rcode.FORMERR)
    writer.close()

    stats = server.stats()
    assert stats["malformed_reasons"] == {"label_too_long": 50, "name_too_long": 1}
    assert stats["errors"] == 0
    assert stats["fault_log"] == {
        "DNS: malformed packet (label_too_long)": 50,
        "DNS: malformed packet (name_too_long)": 1,
    }
    # One line per kind within the interval (the counts come with the next one), no trace.
    assert [r.getMessage().split(":")[1] for r in caplog.records] == [
        " malformed packet (label_too_long)",
        " malformed packet (name_too_long)",
    ]
    assert not any(r.exc_info for r in caplog.records)


async def test_a_failure_to_answer_costs_one_query_a_servfail_and_no_traceback(
    server: DNSServer,
    raw_client: Callable[[str], RawClient],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(view: View, data: bytes, tcp: bool) -> Answer | Malformed:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server._responder, "respond", broken)
    client = raw_client(INSIDE)
    client.send_query(UCUPDATES, qid=77)
    reply = await client.receive()
    assert (reply.id, reply.rcode()) == (77, dns.rcode.SERVFAIL)
    client.send(b"\x00\x01")  # no header: nothing to reply to
    client.send_query(UCUPDATES, qid=78)  # answered after the short one was dealt with
    assert (await client.receive()).id == 78
    monkeypatch.undo()
    client.send_query(UCUPDATES, qid=79)
    assert (await client.receive()).rcode() == dns.rcode.NOERROR
    stats = server.stats()
    assert (stats["errors"], stats["dropped"]) == (3, 1)
    assert stats["fault_log"] == {"DNS: failed to answer a packet": 3}
    # One line (the next ones are counted until the interval has passed), no trace.
    [record] = caplog.records
    assert record.getMessage().endswith("RuntimeError: a bug")
    assert record.exc_info is None


FUZZED = Responder(build_views(default_config()), FaultTable(default_config().zones))


@settings(max_examples=400, deadline=None, database=None)
@given(data=st.binary(max_size=600), tcp=st.booleans())
def test_any_bytes_get_an_answer_or_are_refused_as_malformed(data: bytes, tcp: bool) -> None:
    result = FUZZED.respond(View.EXTERNAL, data, tcp)
    assert isinstance(result, Answer | Malformed)
    if isinstance(result, Malformed) and result.reply is not None:
        assert result.reply[:2] == data[:2]
        assert result.reply[2] & 0x80


def test_a_cached_answer_only_changes_the_id() -> None:
    responder = Responder(build_views(default_config()), FaultTable(default_config().zones))
    first = dns.message.make_query("fe01.contoso.test", "A", id=1).to_wire()
    second = dns.message.make_query("fe01.contoso.test", "A", id=2).to_wire()
    one = responder.respond(View.INTERNAL, first, False)
    two = responder.respond(View.INTERNAL, second, False)
    assert isinstance(one, Answer)
    assert one is two
    a, b = one.response(first), one.response(second)
    assert a is not None
    assert b is not None
    assert (a[:2], b[:2]) == (b"\x00\x01", b"\x00\x02")
    assert a[2:] == b[2:]
    assert responder.stats() == {"hits": 1, "misses": 1, "size": 1}


# -- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [INSIDE, OUTSIDE])
async def test_remove_fault_makes_the_name_nxdomain_until_cleared(
    server: DNSServer, source: str
) -> None:
    assert addresses(await ask(server, UCUPDATES, source=source))
    server.faults.set(UCUPDATES, "remove")
    for tcp in (False, True):
        removed = await ask(server, UCUPDATES, source=source, tcp=tcp)
        assert removed.rcode() == dns.rcode.NXDOMAIN
        assert authority_types(removed) == ["SOA"]
    assert (await ask(server, UCUPDATES, "TXT", source=source)).rcode() == dns.rcode.NXDOMAIN
    server.faults.clear(UCUPDATES)
    assert addresses(await ask(server, UCUPDATES, source=source))


async def test_servfail_fault(server: DNSServer) -> None:
    server.faults.set("fe01.contoso.test", "servfail")
    assert (await ask(server, "fe01.contoso.test")).rcode() == dns.rcode.SERVFAIL
    assert (await ask(server, "fe01.contoso.test", tcp=True)).rcode() == dns.rcode.SERVFAIL
    assert addresses(await ask(server, "fe02.contoso.test")) == ["127.10.0.12"]
    server.faults.clear_all()
    assert addresses(await ask(server, "fe01.contoso.test")) == ["127.10.0.11"]


async def test_drop_fault_sends_nothing(
    server: DNSServer, raw_client: Callable[[str], RawClient]
) -> None:
    server.faults.set(UCUPDATES, "drop")
    client = raw_client(INSIDE)
    client.send_query(UCUPDATES, qid=1)
    client.send_query("fe01.contoso.test", qid=2)
    # Had the first query been answered, its answer would have come first.
    assert (await client.receive()).id == 2
    server.faults.clear(UCUPDATES)
    client.send_query(UCUPDATES, qid=3)
    answer = await client.receive()
    assert answer.id == 3
    assert sorted(addresses(answer)) == FRONT_ENDS
    stats = server.stats()
    assert stats["dropped"] == 1
    assert stats["faults"] == {"drop": 1}


@pytest.mark.looptime
async def test_delay_fault_answers_later_without_holding_up_others(server: DNSServer) -> None:
    server.faults.set(UCUPDATES, "delay", 3.0)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def timed(name: str, tcp: bool) -> tuple[list[str], float]:
        response = await ask(server, name, tcp=tcp)
        return addresses(response), loop.time() - start

    results = await asyncio.gather(
        timed(UCUPDATES, False), timed(UCUPDATES, True), timed("fe01.contoso.test", False)
    )
    (udp, udp_at), (tcp, tcp_at), (other, other_at) = results
    assert sorted(udp) == sorted(tcp) == FRONT_ENDS
    assert udp_at == pytest.approx(3.0, abs=0.01)
    assert tcp_at == pytest.approx(3.0, abs=0.01)
    assert other == ["127.10.0.11"]
    assert other_at == pytest.approx(0.0, abs=0.01)
    assert server.stats()["faults"] == {"delay": 2}


@pytest.mark.looptime
async def test_stop_cancels_delayed_answers(
    server: DNSServer, raw_client: Callable[[str], RawClient]
) -> None:
    server.faults.set(UCUPDATES, "delay", 600)
    client = raw_client(INSIDE)
    client.send_query(UCUPDATES)
    client.send_query("fe01.contoso.test", qid=2)
    assert (await client.receive()).id == 2
    start = asyncio.get_running_loop().time()
    await server.stop()
    assert asyncio.get_running_loop().time() - start < 1


async def test_fault_changes_are_published(server: DNSServer, firewall: FirewallPolicy) -> None:
    seen: list[Event] = []
    firewall.events.subscribe(seen.append)
    server.faults.set(UCUPDATES, "drop")
    server.faults.clear(UCUPDATES)
    assert [(e.kind, e.data["action"]) for e in seen] == [
        ("dns.faults.changed", "set"),
        ("dns.faults.changed", "clear"),
    ]


async def test_bad_fault_is_refused(server: DNSServer) -> None:
    with pytest.raises(DNSError, match="not in a lab zone"):
        server.faults.set("www.example.com", "drop")
    with pytest.raises(DNSError, match="unknown DNS fault kind"):
        server.faults.set(UCUPDATES, "slow")
    with pytest.raises(DNSError, match="finite number >= 0"):
        server.faults.set(UCUPDATES, "delay", -0.5)


# -- TCP -----------------------------------------------------------------------------------


def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


async def read_frame(reader: asyncio.StreamReader) -> dns.message.Message:
    size = int.from_bytes(await reader.readexactly(2), "big")
    return dns.message.from_wire(await reader.readexactly(size))


@pytest.mark.looptime
async def test_tcp_connection_serves_several_queries_then_closes_when_idle(
    config: LabConfig, firewall: FirewallPolicy
) -> None:
    loop = asyncio.get_running_loop()
    async with DNSServer(config, firewall, tcp_idle_timeout=7) as server:
        reader, writer = await asyncio.open_connection(*server.address, local_addr=(INSIDE, 0))
        first = dns.message.make_query(UCUPDATES, "A", id=1).to_wire()
        last = dns.message.make_query("fe02.contoso.test", "A", id=3).to_wire()
        # All in one write, a garbage frame and a NOTIFY in between.
        writer.write(frame(first) + frame(b"hello") + frame(_other_opcode(random.Random(0))))
        writer.write(frame(last))
        await writer.drain()
        answers = [await read_frame(reader) for _ in range(3)]
        assert [a.id for a in answers] == [1, 0x1234, 3]
        assert sorted(addresses(answers[0])) == FRONT_ENDS
        assert answers[1].rcode() == dns.rcode.NOTIMP
        assert addresses(answers[2]) == ["127.10.0.12"]

        idle_from = loop.time()
        # The server hangs up (the bound only matters if it never does: fake time is cheap).
        assert await asyncio.wait_for(reader.read(), 100) == b""
        assert loop.time() - idle_from == pytest.approx(7.0, abs=0.01)
        writer.close()
        stats = server.stats()
    assert stats["queries"]["tcp"] == 2
    assert stats["tcp_connections"] == 1
    assert stats["tcp_idle_closed"] == 1
    assert stats["malformed_reasons"] == {"short": 1, "opcode": 1}


async def test_tcp_half_close_still_gets_the_answer(server: DNSServer) -> None:
    reader, writer = await asyncio.open_connection(*server.address, local_addr=(OUTSIDE, 0))
    writer.write(frame(dns.message.make_query(UCUPDATES, "A", id=9).to_wire()))
    writer.write_eof()
    answer = await read_frame(reader)
    assert (answer.id, addresses(answer)) == (9, [EDGE])
    assert await reader.read() == b""
    writer.close()


def with_limits(config: LabConfig, **limits: Any) -> LabConfig:
    """The lab with some ``[limits]`` changed."""
    return dataclasses.replace(config, limits=dataclasses.replace(config.limits, **limits))


async def answered_over_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether a query on this connection gets its answer."""
    writer.write(frame(dns.message.make_query(UCUPDATES, "A", id=5).to_wire()))
    return (await read_frame(reader)).id == 5


def test_tcp_limits_come_from_the_config_and_a_shared_budget_is_used(
    config: LabConfig, firewall: FirewallPolicy
) -> None:
    limited = with_limits(
        config, connections_per_address=7, dns_tcp_idle_timeout=3.0, dns_tcp_message_timeout=2.0
    )
    own = DNSServer(limited, firewall)
    assert (own.budget.per_address, own.tcp_idle_timeout, own.tcp_message_timeout) == (7, 3, 2)
    assert own.stats()["tcp_limits"] == {
        "per_address_cap": 7,
        "idle_timeout": 3.0,
        "message_timeout": 2.0,
    }
    shared = ConnectionBudget(per_address=3, total=10)
    assert DNSServer(limited, firewall, budget=shared).budget is shared


@pytest.mark.looptime
async def test_tcp_connections_over_the_per_address_cap_are_closed_and_slots_come_back(
    config: LabConfig, firewall: FirewallPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    budget = ConnectionBudget(per_address=2, total=100)
    async with DNSServer(config, firewall, tcp_idle_timeout=5, budget=budget) as server:
        held = [
            await asyncio.open_connection(*server.address, local_addr=(OUTSIDE, 0))
            for _ in range(2)
        ]
        for reader, writer in held:
            assert await answered_over_tcp(reader, writer)
        over_reader, over_writer = await asyncio.open_connection(
            *server.address, local_addr=(OUTSIDE, 0)
        )
        assert await asyncio.wait_for(over_reader.read(), 100) == b""  # closed at once
        over_writer.close()
        # Another address is not held back by the first one's connections.
        inside = await asyncio.open_connection(*server.address, local_addr=(INSIDE, 0))
        assert await answered_over_tcp(*inside)
        stats = server.stats()
        assert (stats["tcp_open"], stats["tcp_addresses"], stats["tcp_busiest_address"]) == (
            3,
            2,
            2,
        )
        assert (stats["tcp_refused"], budget.held(OUTSIDE), budget.open) == (1, 2, 3)

        # When the server closes them (idle), their slots come back for new connections.
        for reader, writer in [*held, inside]:
            assert await asyncio.wait_for(reader.read(), 100) == b""
            writer.close()
        assert budget.open == 0
        again = await asyncio.open_connection(*server.address, local_addr=(OUTSIDE, 0))
        assert await answered_over_tcp(*again)
        assert budget.held(OUTSIDE) == 1
        again[1].close()
    assert budget.open == 0  # the server's stop gave back the last one
    refused = [r for r in caplog.records if r.getMessage().startswith("DNS: TCP connection")]
    assert [r.getMessage() for r in refused] == [
        f"DNS: TCP connection refused: from {OUTSIDE}: over the per-address connection cap"
    ]
    assert not any(r.exc_info for r in caplog.records)


async def test_tcp_connections_over_the_total_cap_are_closed_and_say_so(
    config: LabConfig, firewall: FirewallPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    budget = ConnectionBudget(per_address=5, total=1)
    async with DNSServer(config, firewall, budget=budget) as server:
        first = await asyncio.open_connection(*server.address, local_addr=(INSIDE, 0))
        assert await answered_over_tcp(*first)
        reader, writer = await asyncio.open_connection(*server.address, local_addr=(OUTSIDE, 0))
        assert await reader.read() == b""
        writer.close()
        first[1].close()
        assert server.stats()["tcp_refused"] == 1
    assert budget.refused.total == 1
    assert caplog.messages == [
        f"DNS: TCP connection refused: from {OUTSIDE}: over the total connection cap"
    ]


@pytest.mark.looptime
async def test_a_message_must_be_whole_by_its_deadline_however_it_trickles(
    config: LabConfig, firewall: FirewallPolicy
) -> None:
    loop = asyncio.get_running_loop()
    server = DNSServer(config, firewall, tcp_idle_timeout=30, tcp_message_timeout=3)
    async with server:
        # A message in pieces, whole within the deadline, is answered.
        reader, writer = await asyncio.open_connection(*server.address, local_addr=(INSIDE, 0))
        query = frame(dns.message.make_query(UCUPDATES, "A", id=8).to_wire())
        writer.write(query[:1])
        await asyncio.sleep(2)
        writer.write(query[1:])
        assert (await read_frame(reader)).id == 8
        # Between messages only the idle timeout applies, counted from the last message.
        answered_at = loop.time()
        assert await asyncio.wait_for(reader.read(), 100) == b""
        assert loop.time() - answered_at == pytest.approx(30.0, abs=0.01)
        writer.close()

        # One byte a second of a message that never ends: cut 3 s after its first byte.
        reader, writer = await asyncio.open_connection(*server.address, local_addr=(OUTSIDE, 0))

        async def trickle() -> None:
            writer.write(b"\x01\x00")  # 256 bytes follow, some day
            while not writer.is_closing():
                await asyncio.sleep(1)
                writer.write(b"x")

        started = loop.time()
        trickling = asyncio.create_task(trickle())
        assert await asyncio.wait_for(reader.read(), 100) == b""
        assert loop.time() - started == pytest.approx(3.0, abs=0.01)
        writer.close()
        await trickling
        stats = server.stats()
    assert (stats["tcp_message_timeouts"], stats["tcp_idle_closed"]) == (1, 1)
    assert stats["fault_log"] == {"DNS: TCP message not whole in time": 1}


@pytest.mark.looptime
async def test_stray_bytes_do_not_keep_an_idle_connection_open(
    config: LabConfig, firewall: FirewallPolicy
) -> None:
    loop = asyncio.get_running_loop()
    server = DNSServer(config, firewall, tcp_idle_timeout=5, tcp_message_timeout=100)
    async with server:
        reader, writer = await asyncio.open_connection(*server.address, local_addr=(OUTSIDE, 0))
        assert await answered_over_tcp(reader, writer)
        answered_at = loop.time()
        await asyncio.sleep(4)
        writer.write(b"\x00")  # the start of a message, not a message
        assert await asyncio.wait_for(reader.read(), 100) == b""
        assert loop.time() - answered_at == pytest.approx(5.0, abs=0.01)
        writer.close()
        assert server.stats()["tcp_idle_closed"] == 1


# -- query log and counters ----------------------------------------------------------------


async def test_query_log_and_counters_reflect_what_happened(
    config: LabConfig, firewall: FirewallPolicy, tmp_path: Path
) -> None:
    path = tmp_path / "dns-queries.jsonl"
    async with DNSServer(config, firewall, query_log_path=path) as server:
        client = RawClient(server, INSIDE)
        try:
            client.send_query(UCUPDATES, qid=1)
            await client.receive()
            client.send_query("nothing.contoso.test", "AAAA", qid=2)
            await client.receive()
            client.send(b"\x00")
            client.send_query("www.example.com", qid=3)
            await client.receive()
        finally:
            client.close()
        await ask(server, UCUPDATES, source=OUTSIDE, tcp=True)
        server.faults.set("fe01.contoso.test", "servfail")
        await ask(server, "fe01.contoso.test", source=OUTSIDE)
        entries = server.query_log.recent()
        stats = server.stats()

    assert [
        (e["client"], e["transport"], e["qname"], e["qtype"], e["view"], e["rcode"], e["answers"])
        for e in entries
    ] == [
        (INSIDE, "udp", UCUPDATES, "A", "internal", "NOERROR", 2),
        (INSIDE, "udp", "nothing.contoso.test", "AAAA", "internal", "NXDOMAIN", 0),
        (INSIDE, "udp", "www.example.com", "A", "internal", "REFUSED", 0),
        (OUTSIDE, "tcp", UCUPDATES, "A", "external", "NOERROR", 1),
        (OUTSIDE, "udp", "fe01.contoso.test", "A", "external", "SERVFAIL", 0),
    ]
    assert {e["port"] for e in entries[:3]} == {client.port}
    assert [e["fault"] for e in entries] == [None, None, None, None, "servfail"]
    assert not any(e["truncated"] for e in entries)
    assert entries[0]["time"] <= entries[-1]["time"]
    assert [json.loads(line) for line in path.read_text().splitlines()] == entries

    assert stats["queries"] == {"udp": 4, "tcp": 1}
    assert stats["rcodes"] == {"NOERROR": 2, "NXDOMAIN": 1, "REFUSED": 1, "SERVFAIL": 1}
    assert stats["views"] == {"internal": 3, "external": 2}
    assert stats["faults"] == {"servfail": 1}
    assert stats["malformed"] == 1
    assert stats["dropped"] == 1
    assert stats["faults_active"] == {"fe01.contoso.test": {"kind": "servfail", "delay": 0}}
    json.dumps(stats)


# -- lifecycle and binding -----------------------------------------------------------------


async def test_address_is_what_was_bound(config: LabConfig, firewall: FirewallPolicy) -> None:
    seen: list[Event] = []
    firewall.events.subscribe(seen.append)
    server = DNSServer(config, firewall, host="127.0.0.1")
    with pytest.raises(DNSError, match="has not been started"):
        _ = server.address
    async with server:
        host, port = server.address
        assert host == "127.0.0.1"
        assert port > 0
        assert (await ask(server, UCUPDATES, source="127.0.0.1")).rcode() == dns.rcode.NOERROR
        with pytest.raises(DNSError, match="already running"):
            await server.start()
    await server.stop()  # stopping twice is harmless
    assert [e.kind for e in seen] == ["dns.started", "dns.stopped"]
    assert seen[0].data == {"host": "127.0.0.1", "port": port}


async def test_port_in_use_is_reported(server: DNSServer, config: LabConfig) -> None:
    host, port = server.address
    second = DNSServer(config, server.firewall, port=port)
    with pytest.raises(DNSError, match=rf"{host}:{port} \(udp\): the address is already in use"):
        await second.start()


async def test_tcp_port_in_use_is_reported_and_udp_released(
    config: LabConfig, firewall: FirewallPolicy
) -> None:
    host = str(config.dns_address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = DNSServer(config, firewall, port=port)
        with pytest.raises(DNSError, match=rf":{port} \(tcp\): the address is already in use"):
            await server.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, port))  # the UDP half was let go


async def test_unwritable_query_log_stops_the_start(
    config: LabConfig, firewall: FirewallPolicy, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    server = DNSServer(config, firewall, query_log_path=tmp_path / "file" / "dns.jsonl")
    with pytest.raises(DNSError, match="cannot open the DNS query log"):
        await server.start()
    with pytest.raises(DNSError, match="has not been started"):
        _ = server.address


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind port 53")
async def test_privileged_port_says_what_to_do(config: LabConfig, firewall: FirewallPolicy) -> None:
    server = DNSServer(config, firewall, port=53)
    with pytest.raises(DNSError, match=r"permission denied.*ports\.mode"):
        await server.start()


async def test_address_not_on_this_machine(config: LabConfig, firewall: FirewallPolicy) -> None:
    server = DNSServer(config, firewall, host="192.0.2.1")
    with pytest.raises(DNSError, match=r"192\.0\.2\.1 is not an address of this machine"):
        await server.start()


def test_serves_and_reports_bind_errors_on_uvloop(config: LabConfig) -> None:
    # The lab may run on uvloop, whose transports and bind errors differ from asyncio's.
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        firewall = FirewallPolicy(config.inside, config.outside)
        async with DNSServer(config, firewall) as server:
            assert addresses(await ask(server, UCUPDATES, source=OUTSIDE)) == [EDGE]
            tcp = await ask(server, UCUPDATES, source=INSIDE, tcp=True)
            assert sorted(addresses(tcp)) == FRONT_ENDS
            host, port = server.address
            with pytest.raises(DNSError, match=rf"{host}:{port} \(udp\): the address is already"):
                await DNSServer(config, firewall, port=port).start()

    uvloop.run(scenario())


# -- dig -----------------------------------------------------------------------------------

DIG = shutil.which("dig") or ("/usr/bin/dig" if os.path.exists("/usr/bin/dig") else None)
needs_dig = pytest.mark.skipif(DIG is None, reason="dig is not installed")


async def dig(server: DNSServer, source: str, *args: str) -> str:
    assert DIG is not None
    host, port = server.address
    process = await asyncio.create_subprocess_exec(
        DIG,
        "-b",
        source,
        f"@{host}",
        "-p",
        str(port),
        "+tries=1",
        "+time=5",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.dig
@needs_dig
@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
async def test_dig_sees_the_split_horizon(server: DNSServer, transport: str) -> None:
    inside = await dig(server, INSIDE, UCUPDATES, "A", "+short", transport)
    assert sorted(inside.split()) == FRONT_ENDS
    outside = await dig(server, OUTSIDE, UCUPDATES, "A", "+short", transport)
    assert outside.split() == [EDGE]


@pytest.mark.dig
@needs_dig
async def test_dig_sees_nxdomain_nodata_and_refused(server: DNSServer) -> None:
    missing = await dig(server, INSIDE, "nothing.contoso.test", "A")
    assert "status: NXDOMAIN" in missing
    assert "flags: qr aa rd;" in missing
    assert "AUTHORITY SECTION:\ncontoso.test." in missing
    nodata = await dig(server, OUTSIDE, UCUPDATES, "AAAA")
    assert "status: NOERROR" in nodata
    assert "ANSWER: 0, AUTHORITY: 1" in nodata
    refused = await dig(server, INSIDE, "www.example.com", "A")
    assert "status: REFUSED" in refused
