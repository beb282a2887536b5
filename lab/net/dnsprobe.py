"""A DNS query from a chosen source address: how the demo and tools see a view.

The lab's own DNS client for operations (the phones have their own in emulator/): one
question over UDP, or TCP, bound to ``source`` so the firewall classifies it as a phone
at that address would be.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from dnslib import QTYPE, RCODE, DNSRecord

from lab.errors import DNSError
from lab.net.netns import socket_at

# A lab answers at once or not at all (a drop fault); two seconds tells them apart.
QUERY_TIMEOUT = 2.0


async def query(
    name: str,
    server: tuple[str, int],
    source: str,
    *,
    qtype: str = "A",
    tcp: bool = False,
) -> DNSRecord:
    """Ask ``server`` for ``name`` from ``source``; DNSError on timeout or a bad reply."""
    request = DNSRecord.question(name, qtype)
    wire = request.pack()
    try:
        async with asyncio.timeout(QUERY_TIMEOUT):
            reply = await (_tcp(wire, server, source) if tcp else _udp(wire, server, source))
    except TimeoutError:
        raise DNSError(f"no answer for {name} from {server[0]}:{server[1]}") from None
    except OSError as exc:
        raise DNSError(f"cannot ask {server[0]}:{server[1]} for {name}: {exc}") from None
    try:
        answer = DNSRecord.parse(reply)
    except Exception as exc:  # dnslib raises several types for bad wire data
        raise DNSError(f"unreadable answer for {name}: {exc}") from None
    if answer.header.id != request.header.id:
        raise DNSError(f"answer for {name} has the wrong id")
    return answer


async def _udp(wire: bytes, server: tuple[str, int], source: str) -> bytes:
    loop = asyncio.get_running_loop()
    with socket_at(source, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((source, 0))
        await loop.sock_connect(sock, server)
        await loop.sock_sendall(sock, wire)
        return await loop.sock_recv(sock, 65535)


async def _tcp(wire: bytes, server: tuple[str, int], source: str) -> bytes:
    sock = socket_at(source, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, server)
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length)
    finally:
        writer.close()
        await writer.wait_closed()


def summarise(answer: DNSRecord) -> str:
    """``NOERROR 127.10.0.11, 127.10.0.12`` — an answer in one readable line."""
    rcode = RCODE.get(answer.header.rcode)
    data = [str(rr.rdata) for rr in answer.rr if rr.rtype in (QTYPE.A, QTYPE.SRV)]
    return f"{rcode} {', '.join(data)}".strip()
