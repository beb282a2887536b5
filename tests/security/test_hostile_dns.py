"""Hostile traffic against the lab's DNS server, over real sockets to a real `lab up`.

Each attack is made the way an attacker would make it (raw sockets, hand-built packets),
and each limit is also shown not to hurt a normal client: a query from another address, a
slow but well-behaved TCP client, ordinary queries after the attack. Waiting is always on
an event (a read that returns, a socket the server closes, a log line that appears), with
timeouts only as a safety net.
"""

from __future__ import annotations

import re
import resource
import selectors
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import dns.message
import dns.query
import dns.rcode
import pytest
from conftest import INSIDE_PHONE, OUTSIDE_ATTACKER
from labprocess import LabProcess

# A second outside address, so one test's connections never count against another's.
SLOW_ATTACKER = "127.20.66.7"
UCUPDATES = "ucupdates-r2.contoso.test"
# The inside view, from the default config: the front ends of the pool ucupdates-r2 names
# (pool01: fe01, fe02), never se01 (127.10.0.21) of the lab's other pool.
FRONT_ENDS = ["127.10.0.11", "127.10.0.12"]
EDGE = "127.20.0.10"  # the outside view
CAP = 20
MESSAGE_TIMEOUT = 0.5
FAULT_LOG_INTERVAL = 0.2
SAFETY = 5.0  # seconds: only ever reached when the server misbehaves
FORMERR = 1


@pytest.fixture(scope="module")
def strict_lab(lab_factory: Callable[..., LabProcess]) -> LabProcess:
    """A lab with a small per-address cap, a short message deadline and a fast fault log."""
    return lab_factory(
        {
            "limits": {
                "connections_per_address": CAP,
                "dns_tcp_message_timeout": MESSAGE_TIMEOUT,
                "dns_tcp_idle_timeout": 30.0,
                "fault_log_interval": FAULT_LOG_INTERVAL,
            }
        }
    )


@pytest.fixture
def sockets() -> Iterator[ExitStack]:
    """Every socket a test opens is closed when it ends, whatever happens."""
    with ExitStack() as stack:
        yield stack


def tcp_from(stack: ExitStack, source: str, server: tuple[str, int]) -> socket.socket:
    """A TCP connection to ``server`` from ``source``."""
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.settimeout(SAFETY)
    sock.bind((source, 0))
    sock.connect(server)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether a readable socket was closed by the server (EOF or reset), not sent data."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def wait_until_closed(socks: list[socket.socket], count: int) -> list[socket.socket]:
    """Wait until ``count`` of ``socks`` are closed by the server; those sockets."""
    closed: list[socket.socket] = []
    deadline = time.monotonic() + SAFETY
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ, sock)
        while len(closed) < count and time.monotonic() < deadline:
            for key, _ in selector.select(deadline - time.monotonic()):
                ready: socket.socket = key.data
                selector.unregister(ready)
                assert closed_by_peer(ready), "the server sent data on an idle connection"
                closed.append(ready)
    return closed


def still_open(socks: list[socket.socket]) -> bool:
    """Whether none of ``socks`` has anything to read (no EOF, no data) right now."""
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        return not selector.select(0)


def ask(
    lab: LabProcess, name: str, *, source: str, tcp: bool, rdtype: str = "A"
) -> dns.message.Message:
    """One ordinary query with dnspython."""
    host, port = lab.endpoint("dns", "tcp" if tcp else "udp")
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, host, SAFETY, port, source)
    return dns.query.udp(query, host, SAFETY, port, source)


def answered(response: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in response.answer for rd in rrset)


def raw_query(qid: int, labels: list[bytes]) -> bytes:
    """A query for the name made of ``labels``, built byte by byte (no library refuses it)."""
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)


LONG_LABEL = [b"a" * 64, b"contoso", b"test"]
LONG_NAME = [b"b" * 60] * 4 + [b"contoso", b"test"]  # 258 bytes on the wire


def rcode_and_id(reply: bytes) -> tuple[int, int, bool]:
    qid, flags = struct.unpack("!HH", reply[:4])
    return flags & 0xF, qid, bool(flags & 0x8000)


def udp_exchange(sock: socket.socket, server: tuple[str, int], packet: bytes) -> bytes:
    sock.sendto(packet, server)
    reply, _ = sock.recvfrom(65535)
    return reply


def tcp_exchange(sock: socket.socket, packet: bytes) -> bytes:
    sock.sendall(len(packet).to_bytes(2, "big") + packet)
    size = int.from_bytes(recv_exactly(sock, 2), "big")
    return recv_exactly(sock, size)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the server closed the connection instead of answering"
        data += chunk
    return data


# -- (a) connections per address -------------------------------------------------------


def test_one_address_cannot_hold_more_than_its_share_of_dns_tcp(
    strict_lab: LabProcess, sockets: ExitStack
) -> None:
    server = strict_lab.endpoint("dns", "tcp")
    extra = 10
    flood = [tcp_from(sockets, OUTSIDE_ATTACKER, server) for _ in range(CAP + extra)]

    refused = wait_until_closed(flood, extra)
    assert len(refused) == extra
    held = [sock for sock in flood if sock not in refused]
    # A normal client on another address is served while the attacker holds its share.
    inside = ask(strict_lab, UCUPDATES, source=INSIDE_PHONE, tcp=True)
    assert answered(inside) == FRONT_ENDS
    # One more from the attacker is refused too, and the ones it holds are left alone.
    assert wait_until_closed([tcp_from(sockets, OUTSIDE_ATTACKER, server)], 1)
    assert still_open(held)

    stats = strict_lab.status()["dns"]["stats"]
    assert stats["tcp_refused"] == extra + 1
    assert stats["tcp_limits"]["per_address_cap"] == CAP
    assert stats["tcp_open"] >= CAP


@pytest.fixture(scope="module")
def small_fd_lab(lab_factory: Callable[..., LabProcess]) -> LabProcess:
    """A lab on the default limits under `ulimit -n 1024` (idle connections kept for the
    whole test, so that only the connection cap closes any)."""
    return lab_factory({"limits": {"dns_tcp_idle_timeout": 60.0}}, nofile=1024)


@pytest.fixture
def room_for_sockets() -> Iterator[None]:
    """Enough open files in this process for the flood (restored afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("room_for_sockets")
def test_eleven_hundred_idle_connections_under_ulimit_1024_stop_nothing(
    small_fd_lab: LabProcess, sockets: ExitStack
) -> None:
    server = small_fd_lab.endpoint("dns", "tcp")
    flood = [tcp_from(sockets, OUTSIDE_ATTACKER, server) for _ in range(1100)]
    cap = small_fd_lab.status()["dns"]["stats"]["tcp_limits"]["per_address_cap"]
    assert cap < 1024 - 100  # the default leaves the process room for everything else

    assert len(wait_until_closed(flood, len(flood) - cap)) == len(flood) - cap
    for tcp in (True, False):
        inside = ask(small_fd_lab, UCUPDATES, source=INSIDE_PHONE, tcp=tcp)
        assert answered(inside) == FRONT_ENDS
    stats = small_fd_lab.status()["dns"]["stats"]
    assert stats["tcp_refused"] == len(flood) - cap
    assert "Too many open files" not in small_fd_lab.stderr_path.read_text()


# -- (b) a message must arrive whole in time --------------------------------------------


def test_a_trickling_client_is_cut_at_the_message_deadline(
    strict_lab: LabProcess, sockets: ExitStack
) -> None:
    server = strict_lab.endpoint("dns", "tcp")
    # A well-behaved client that keeps its connection between two queries.
    patient = tcp_from(sockets, INSIDE_PHONE, server)
    first = dns.message.make_query(UCUPDATES, "A", id=1).to_wire()
    assert rcode_and_id(tcp_exchange(patient, first))[:2] == (0, 1)

    slow = tcp_from(sockets, SLOW_ATTACKER, server)
    slow.settimeout(0.05)  # the pace of the trickle: one byte per read that times out
    slow.sendall(b"\x03\xe8")  # "1000 bytes follow"
    started = time.monotonic()
    sent = 0
    cut = False
    while not cut and time.monotonic() - started < SAFETY:
        try:
            cut = closed_by_peer(slow)
        except TimeoutError:
            slow.sendall(b"x")  # a byte arrives, but the message never completes
            sent += 1
    elapsed = time.monotonic() - started
    assert cut, f"still open after {elapsed:.1f} s and {sent} bytes"
    # The server's timer may fire a clock tick early (the loop's clock resolution).
    assert MESSAGE_TIMEOUT - 0.01 <= elapsed < MESSAGE_TIMEOUT + 2.0
    assert sent >= 3  # bytes kept arriving while the deadline ran

    # The patient client waited longer than the message deadline between its messages:
    # only the idle timeout applies there, so it is still served.
    second = dns.message.make_query(UCUPDATES, "A", id=2).to_wire()
    assert rcode_and_id(tcp_exchange(patient, second))[:2] == (0, 2)
    assert strict_lab.status()["dns"]["stats"]["tcp_message_timeouts"] >= 1


# -- (c) names no DNS name can be ---------------------------------------------------------


@pytest.mark.parametrize("labels", [LONG_LABEL, LONG_NAME], ids=["label-64", "name-258"])
def test_an_impossible_name_gets_formerr_over_udp_and_tcp(
    strict_lab: LabProcess, sockets: ExitStack, labels: list[bytes]
) -> None:
    server = strict_lab.endpoint("dns", "udp")
    udp = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    udp.settimeout(SAFETY)
    udp.bind((OUTSIDE_ATTACKER, 0))
    assert rcode_and_id(udp_exchange(udp, server, raw_query(0x5A5A, labels))) == (
        FORMERR,
        0x5A5A,
        True,
    )
    tcp = tcp_from(sockets, INSIDE_PHONE, strict_lab.endpoint("dns", "tcp"))
    assert rcode_and_id(tcp_exchange(tcp, raw_query(0xA5A5, labels))) == (FORMERR, 0xA5A5, True)


def test_a_flood_of_impossible_names_is_logged_as_counts_without_tracebacks(
    strict_lab: LabProcess, sockets: ExitStack
) -> None:
    server = strict_lab.endpoint("dns", "udp")
    udp = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    udp.settimeout(SAFETY)
    udp.bind((OUTSIDE_ATTACKER, 0))
    for qid in range(200):
        labels = LONG_LABEL if qid % 2 else LONG_NAME
        assert rcode_and_id(udp_exchange(udp, server, raw_query(qid, labels)))[:2] == (
            FORMERR,
            qid,
        )
    # The fault log writes a count once its interval has passed and the next fault comes:
    # keep the faults coming until that line appears.
    count_line = re.compile(r"label_too_long\)?: \d+ times in the last")
    deadline = time.monotonic() + SAFETY
    text = strict_lab.stderr_path.read_text()
    while not count_line.search(text) and time.monotonic() < deadline:
        for _ in range(20):
            udp_exchange(udp, server, raw_query(1, LONG_LABEL))
        text = strict_lab.stderr_path.read_text()
    assert count_line.search(text), text[-2000:]
    assert "Traceback" not in text
    # Counted by kind, and no answer failed.
    stats = strict_lab.status()["dns"]["stats"]
    assert stats["malformed_reasons"]["label_too_long"] >= 100
    assert stats["malformed_reasons"]["name_too_long"] >= 100
    assert stats["errors"] == 0
    assert stats["fault_log"]["DNS: malformed packet (label_too_long)"] >= 100


# -- (d) and ordinary queries still work ----------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_ordinary_queries_still_answer_after_the_attacks(strict_lab: LabProcess, tcp: bool) -> None:
    inside = ask(strict_lab, UCUPDATES, source=INSIDE_PHONE, tcp=tcp)
    assert answered(inside) == FRONT_ENDS
    outside = ask(strict_lab, UCUPDATES, source=SLOW_ATTACKER, tcp=tcp)
    assert answered(outside) == [EDGE]
    missing = ask(strict_lab, "nothing.contoso.test", source=INSIDE_PHONE, tcp=tcp)
    assert missing.rcode() == dns.rcode.NXDOMAIN
