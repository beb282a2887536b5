"""The phone's DNS client against the real lab DNS server over UDP and TCP on loopback.

Phones ask from 127.10.0.50 (inside: the front ends' addresses) or 127.20.0.50 (outside:
the edge); the server's query log shows which address and transport every query came from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import AsyncIterator

import dnslib
import pytest
from net_helpers import INSIDE_PHONE, OUTSIDE_PHONE, UCUPDATES

from emulator.errors import ResolutionError
from emulator.lease import parse_lease
from emulator.net import DNSResolver, Resolver
from lab.net.config import FrontEnd, LabConfig, Pool, default_config
from lab.net.dns import DNSServer
from lab.net.firewall import FirewallPolicy

FRONT_ENDS = ["127.10.0.11", "127.10.0.12"]
EDGE = "127.20.0.10"


@pytest.fixture
def config() -> LabConfig:
    return default_config().with_ports(dns=0)


async def start_dns(config: LabConfig) -> DNSServer:
    server = DNSServer(config, FirewallPolicy(config.inside, config.outside))
    await server.start()
    return server


@pytest.fixture
async def dns(config: LabConfig) -> AsyncIterator[DNSServer]:
    server = await start_dns(config)
    yield server
    await server.stop()


def resolver(
    server: DNSServer, source: str, *, timeout: float = 2.0, tries: int = 2
) -> DNSResolver:
    return DNSResolver(server.address, source, timeout=timeout, tries=tries)


def where(server: DNSServer) -> str:
    return f"{server.address[0]}:{server.address[1]}"


async def test_inside_phone_gets_the_front_ends_from_its_own_address(dns: DNSServer) -> None:
    addresses = await resolver(dns, INSIDE_PHONE).resolve(UCUPDATES)

    assert sorted(addresses) == FRONT_ENDS
    last = dns.query_log.recent(1)[0]
    assert (last["client"], last["transport"], last["view"]) == (INSIDE_PHONE, "udp", "internal")


async def test_outside_phone_gets_the_edge(dns: DNSServer) -> None:
    assert await resolver(dns, OUTSIDE_PHONE).resolve(UCUPDATES) == [EDGE]
    assert dns.query_log.recent(1)[0]["client"] == OUTSIDE_PHONE


async def test_resolver_from_the_lease_uses_its_dns_server(dns: DNSServer) -> None:
    host, port = dns.address
    lease = parse_lease(
        {
            "domain": "contoso.test",
            "sip_server": "pool01.contoso.test",
            "dns": [host, port],
            "https_port": 10443,
        }
    )
    phone: Resolver = DNSResolver.from_lease(lease, OUTSIDE_PHONE)

    assert await phone.resolve(f"{UCUPDATES}.") == [EDGE]


async def test_srv_records_come_back_as_text(dns: DNSServer) -> None:
    records = await resolver(dns, INSIDE_PHONE).resolve("_sipinternaltls._tcp.contoso.test", "SRV")

    assert records == ["0 0 5061 pool01.contoso.test."]


async def test_an_address_literal_needs_no_query(dns: DNSServer) -> None:
    assert await resolver(dns, INSIDE_PHONE).resolve("127.10.0.11") == ["127.10.0.11"]
    assert len(dns.query_log) == 0


async def test_nxdomain_in_plain_words(dns: DNSServer) -> None:
    with pytest.raises(ResolutionError) as caught:
        await resolver(dns, INSIDE_PHONE).resolve("ucupdates-r2x.contoso.test")

    assert str(caught.value) == (
        f"ucupdates-r2x.contoso.test does not exist (NXDOMAIN from {where(dns)})"
    )
    assert (caught.value.name, caught.value.answer) == ("ucupdates-r2x.contoso.test", "NXDOMAIN")
    assert caught.value.server == where(dns)


async def test_a_removed_name_is_nxdomain(dns: DNSServer) -> None:
    dns.faults.set(UCUPDATES, "remove")

    with pytest.raises(ResolutionError, match=r"^ucupdates-r2\.contoso\.test does not exist"):
        await resolver(dns, INSIDE_PHONE).resolve(UCUPDATES)


async def test_refused_outside_the_lab_zones(dns: DNSServer) -> None:
    with pytest.raises(ResolutionError) as caught:
        await resolver(dns, INSIDE_PHONE).resolve("www.example.org")

    assert str(caught.value) == (
        f"the DNS server {where(dns)} refused to answer for www.example.org (REFUSED)"
    )
    assert caught.value.answer == "REFUSED"


async def test_servfail(dns: DNSServer) -> None:
    dns.faults.set(UCUPDATES, "servfail")

    with pytest.raises(ResolutionError) as caught:
        await resolver(dns, INSIDE_PHONE).resolve(UCUPDATES)

    assert str(caught.value) == (
        f"the DNS server {where(dns)} failed to answer for {UCUPDATES} (SERVFAIL)"
    )
    assert caught.value.answer == "SERVFAIL"


async def test_nodata_when_the_name_has_no_record_of_that_type(dns: DNSServer) -> None:
    with pytest.raises(ResolutionError) as caught:
        await resolver(dns, INSIDE_PHONE).resolve(UCUPDATES, "AAAA")

    assert str(caught.value) == f"{UCUPDATES} has no AAAA record (NODATA from {where(dns)})"
    assert caught.value.answer == "NODATA"


async def test_no_answer_after_the_tries(dns: DNSServer) -> None:
    dns.faults.set(UCUPDATES, "drop")

    with pytest.raises(ResolutionError) as caught:
        await resolver(dns, INSIDE_PHONE, timeout=0.05, tries=3).resolve(UCUPDATES)

    assert str(caught.value) == (
        f"no answer from the DNS server {where(dns)} for {UCUPDATES} after 3 tries of 0.05 s"
    )
    assert caught.value.answer == "no answer"
    assert [q["client"] for q in dns.query_log.recent()] == [INSIDE_PHONE] * 3


async def test_nothing_listening_is_no_answer(no_server: tuple[str, int]) -> None:
    phone = DNSResolver(no_server, INSIDE_PHONE, timeout=1.0, tries=2)

    with pytest.raises(ResolutionError) as caught:
        await phone.resolve(UCUPDATES)

    assert str(caught.value) == (
        f"no answer from the DNS server {no_server[0]}:{no_server[1]} for {UCUPDATES} after 2 "
        "tries of 1 s (Connection refused)"
    )
    assert caught.value.answer == "no answer"


async def test_truncated_answer_is_asked_again_over_tcp(config: LabConfig) -> None:
    # The pool ucupdates-r2 names, with 60 front ends.
    inside = list(ipaddress.IPv4Network("127.10.1.0/24").hosts())[:60]
    name = config.ucupdates_pool
    front_ends = tuple(
        FrontEnd(f"fe{i:03}", f"fe{i:03}.contoso.test", address, name)
        for i, address in enumerate(inside)
    )
    pools = tuple(Pool(name, front_ends) if p.fqdn == name else p for p in config.pools)
    server = await start_dns(dataclasses.replace(config, pools=pools))
    try:
        addresses = await resolver(server, INSIDE_PHONE).resolve(UCUPDATES)
    finally:
        await server.stop()

    assert sorted(addresses, key=ipaddress.IPv4Address) == [str(a) for a in inside]
    udp, tcp = server.query_log.recent()
    assert (udp["transport"], udp["truncated"], udp["client"]) == ("udp", True, INSIDE_PHONE)
    assert (tcp["transport"], tcp["truncated"], tcp["client"]) == ("tcp", False, INSIDE_PHONE)


class _Answers(asyncio.DatagramProtocol):
    """A DNS server that first answers with a wrong ID, then with a wrong name, then right."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dnslib.DNSRecord.parse(data)
        wrong_id = query.reply()
        wrong_id.header.id = (query.header.id + 1) % 65536
        wrong_id.add_answer(*dnslib.RR.fromZone(f"{UCUPDATES} 60 A 127.99.0.1"))
        wrong_name = dnslib.DNSRecord(
            dnslib.DNSHeader(id=query.header.id, qr=1), q=dnslib.DNSQuestion("evil.test")
        )
        wrong_name.add_answer(*dnslib.RR.fromZone("evil.test 60 A 127.99.0.2"))
        right = query.reply()
        right.add_answer(*dnslib.RR.fromZone(f"{UCUPDATES} 60 A 127.10.0.11"))
        for reply in (wrong_id, wrong_name, right):
            self.transport.sendto(reply.pack(), addr)  # type: ignore[attr-defined]


async def test_only_an_answer_to_the_query_counts() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Answers, local_addr=("127.10.0.3", 0))
    try:
        server = transport.get_extra_info("sockname")
        answer = await DNSResolver(server, INSIDE_PHONE, timeout=1.0).resolve(UCUPDATES)
    finally:
        transport.close()

    assert answer == ["127.10.0.11"]


async def test_a_name_that_cannot_be_asked(dns: DNSServer) -> None:
    with pytest.raises(ResolutionError, match="cannot ask for BOGUS records"):
        await resolver(dns, INSIDE_PHONE).resolve(UCUPDATES, "BOGUS")
