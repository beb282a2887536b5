"""The phone's DNS client: the lease's DNS server, asked from the phone's own address.

Rules of this module:
- Every socket (UDP, and TCP when an answer is truncated) is bound to the phone's source
  address, because the lab's DNS answers by the side of the firewall the asker is on.
- One query per lookup, sent up to ``tries`` times over UDP, each try waiting ``timeout``
  seconds; an answer counts only if it has the query's ID and question, so a stray or
  spoofed datagram cannot answer for the phone.
- TC=1 over UDP means "ask again over TCP": the same query, length-prefixed, once.
- Failures are ResolutionError in plain words for the phone log, naming the name, the
  server and what it said (NXDOMAIN, SERVFAIL, REFUSED, NODATA, or no answer at all).
- The query, the match of an answer to it and A records are read and written here
  (a phone looks names up at every exchange, and a general DNS library costs several
  times more); dnslib turns other record types into text. Its errors never leave this
  module, and neither do those of the wire format.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import dnslib

from emulator.errors import ResolutionError
from emulator.lease import Lease
from emulator.netns import Namespaces
from emulator.routes import is_address

DEFAULT_TIMEOUT = 2.0
DEFAULT_TRIES = 3
_MAX_MESSAGE = 65535
_HEADER = struct.Struct("!HHHHHH")
_RECORD = struct.Struct("!HHIH")
_QR, _TC, _RD = 0x8000, 0x0200, 0x0100
_TYPE_A, _CLASS_IN = 1, 1
_MAX_POINTERS = 64


class Resolver(Protocol):
    """Looks names up for a phone; ResolutionError says in plain words why one failed."""

    async def resolve(self, name: str, qtype: str = "A") -> list[str]:
        """The records of ``name`` of type ``qtype`` as text (addresses for A), in answer order."""
        ...


class DNSResolver:
    """A stub resolver asking one DNS server over UDP (TCP when truncated) from one address."""

    def __init__(
        self,
        server: tuple[str, int],
        source: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tries: int = DEFAULT_TRIES,
        namespaces: Namespaces | None = None,
    ) -> None:
        if timeout <= 0 or tries < 1:
            raise ValueError(f"a DNS timeout must be > 0 and tries >= 1, not {timeout}, {tries}")
        self.server = server
        self.source = source
        self.timeout = timeout
        self.tries = tries
        # The lab's own network, whose segments the phone's sockets are made in.
        self.namespaces = namespaces

    @classmethod
    def from_lease(
        cls,
        lease: Lease,
        source: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tries: int = DEFAULT_TRIES,
    ) -> DNSResolver:
        """The resolver a phone at ``source`` gets from its lease's DNS server."""
        return cls(lease.dns, source, timeout=timeout, tries=tries, namespaces=lease.netns)

    @property
    def server_text(self) -> str:
        """The DNS server as the log names it (``127.10.0.2:10053``)."""
        return f"{self.server[0]}:{self.server[1]}"

    async def resolve(self, name: str, qtype: str = "A") -> list[str]:
        """Look ``name`` up; an address literal is its own answer (as for getaddrinfo)."""
        name = name.strip().rstrip(".").lower()
        if is_address(name):
            return [name]
        query = self._query(name, qtype)
        reply = await self._udp(name, query)
        if reply.truncated:
            reply = await self._tcp(name, query)
        return self._records(name, qtype, reply)

    def resolve_blocking(self, name: str, qtype: str = "A") -> list[str]:
        """`resolve` in blocking calls, for cooperative workers (gevent's patched sockets
        yield while they wait; emulator.cooperative): UDP, then TCP for a truncated answer."""
        name = name.strip().rstrip(".").lower()
        if is_address(name):
            return [name]
        query = self._query(name, qtype)
        reply = self._udp_blocking(name, query)
        if reply.truncated:
            reply = self._tcp_blocking(name, query)
        return self._records(name, qtype, reply)

    def _udp_blocking(self, name: str, query: _Query) -> _Reply:
        detail = ""
        try:
            sock = self._socket(timeout=self.timeout)
        except OSError as exc:
            raise self._cannot_send(name, exc) from None
        with sock:
            for _ in range(self.tries):
                try:
                    sock.send(query.packet)
                    deadline = time.monotonic() + self.timeout
                    while (left := deadline - time.monotonic()) > 0:
                        sock.settimeout(left)
                        answer = query.answer(sock.recv(_MAX_MESSAGE))
                        if answer is not None:
                            return answer
                except TimeoutError:
                    continue
                except OSError as exc:
                    detail = f" ({exc.strerror or exc})"
                    continue
        raise self._unanswered(name, detail)

    def _tcp_blocking(self, name: str, query: _Query) -> _Reply:
        packet = query.packet
        try:
            with self._socket(socket.SOCK_STREAM, timeout=self.timeout) as sock:
                sock.sendall(len(packet).to_bytes(2, "big") + packet)
                size = int.from_bytes(_read_exactly(sock, 2), "big")
                answer = query.answer(_read_exactly(sock, size))
        except TimeoutError:
            problem = f"no answer within {self.timeout:g} s"
        except OSError as exc:
            problem = exc.strerror or str(exc)
        else:
            if answer is not None:
                return answer
            problem = "the answer over TCP is not for the query sent"
        raise self._tcp_failed(name, problem)

    # -- one exchange ------------------------------------------------------------------------

    def _query(self, name: str, qtype: str) -> _Query:
        try:
            return _Query.make(name, qtype)
        except ValueError as exc:
            raise self._error(
                name, f"cannot ask for {qtype} records of {name!r}: {exc}", "invalid"
            ) from None

    async def _udp(self, name: str, query: _Query) -> _Reply:
        loop = asyncio.get_running_loop()
        protocol = _UDPExchange(loop, query.answer)
        try:
            # The socket is made here, bound and connected to numeric addresses: asking
            # the loop to do it costs it a lookup of each address in a worker thread.
            transport, _ = await loop.create_datagram_endpoint(
                lambda: protocol, sock=self._socket()
            )
        except OSError as exc:
            raise self._cannot_send(name, exc) from None
        detail = ""
        try:
            for _ in range(self.tries):
                transport.sendto(query.packet)
                try:
                    async with asyncio.timeout(self.timeout):
                        return await protocol.next_answer()
                except TimeoutError:
                    continue
                except OSError as exc:
                    # An ICMP error (nothing listens there): worth trying again, as for a loss.
                    detail = f" ({exc.strerror or exc})"
                    continue
        finally:
            transport.close()
        raise self._unanswered(name, detail)

    def _socket(
        self, kind: socket.SocketKind = socket.SOCK_DGRAM, *, timeout: float | None = None
    ) -> socket.socket:
        """A socket from the phone's address (any port), connected to the server: non-blocking
        for the loop, or with ``timeout`` for blocking calls."""
        sock = self._new_socket(kind)
        try:
            # 0: non-blocking, for the loop; a timeout: blocking calls that give up after it.
            sock.settimeout(0.0 if timeout is None else timeout)
            sock.bind((self.source, 0))
            sock.connect(self.server)
        except BaseException:
            sock.close()
            raise
        return sock

    def _new_socket(self, kind: socket.SocketKind) -> socket.socket:
        if self.namespaces is not None:
            return self.namespaces.socket(self.source, kind)
        return socket.socket(socket.AF_INET6 if ":" in self.source else socket.AF_INET, kind)

    async def _connected(self) -> socket.socket:
        """A TCP socket from the phone's address (any port), connected to the server."""
        sock = self._new_socket(socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind((self.source, 0))
            await asyncio.get_running_loop().sock_connect(sock, self.server)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _tcp(self, name: str, query: _Query) -> _Reply:
        packet = query.packet
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(sock=await self._connected())
                writer.write(len(packet).to_bytes(2, "big") + packet)
                await writer.drain()
                size = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(size)
        except TimeoutError:
            problem = f"no answer within {self.timeout:g} s"
        except asyncio.IncompleteReadError:
            problem = "the server closed the connection before answering"
        except OSError as exc:
            problem = exc.strerror or str(exc)
        else:
            answer = query.answer(data)
            if answer is not None:
                return answer
            problem = "the answer over TCP is not for the query sent"
        finally:
            if writer is not None:
                writer.close()
        raise self._tcp_failed(name, problem)

    def _records(self, name: str, qtype: str, reply: _Reply) -> list[str]:
        rcode = reply.rcode
        said = str(dnslib.RCODE.get(rcode, f"RCODE {rcode}"))
        where = self.server_text
        if rcode == dnslib.RCODE.NXDOMAIN:
            raise self._error(name, f"{name} does not exist (NXDOMAIN from {where})", said)
        if rcode == dnslib.RCODE.SERVFAIL:
            raise self._error(
                name, f"the DNS server {where} failed to answer for {name} (SERVFAIL)", said
            )
        if rcode == dnslib.RCODE.REFUSED:
            raise self._error(
                name, f"the DNS server {where} refused to answer for {name} (REFUSED)", said
            )
        if rcode != dnslib.RCODE.NOERROR:
            raise self._error(name, f"the DNS server {where} answered {said} for {name}", said)
        records = reply.records
        if not records:
            raise self._error(
                name, f"{name} has no {qtype.upper()} record (NODATA from {where})", "NODATA"
            )
        return records

    def _cannot_send(self, name: str, exc: OSError) -> ResolutionError:
        return self._error(
            name, f"cannot send a DNS query for {name} from {self.source}: {exc.strerror}"
        )

    def _unanswered(self, name: str, detail: str) -> ResolutionError:
        return self._error(
            name,
            f"no answer from the DNS server {self.server_text} for {name} after {self.tries} "
            f"tries of {self.timeout:g} s{detail}",
        )

    def _tcp_failed(self, name: str, problem: str) -> ResolutionError:
        return self._error(
            name,
            f"the answer for {name} from {self.server_text} was truncated and asking again "
            f"over TCP failed: {problem}",
            "truncated",
        )

    def _error(self, name: str, message: str, answer: str = "no answer") -> ResolutionError:
        return ResolutionError(message, name=name, server=self.server_text, answer=answer)


class _Reply(NamedTuple):
    """What an answer to the query said: its RCODE, TC flag and records of the type asked."""

    rcode: int
    truncated: bool
    records: list[str]


class _Query(NamedTuple):
    """One question on the wire, and the test of whether a message answers it."""

    ident: int
    name: str
    """The name as it goes on the wire: ASCII (IDNA), lower case, no final dot."""
    qtype: int
    packet: bytes

    @classmethod
    def make(cls, name: str, qtype: str) -> _Query:
        """The query for ``qtype`` records of ``name`` (recursion desired, a random ID);
        ValueError for a name DNS cannot carry or a type it does not know."""
        try:
            code = int(getattr(dnslib.QTYPE, qtype.upper()))
        except dnslib.DNSError:
            raise ValueError(f"there is no record type {qtype}") from None
        wire = bytearray()
        labels = []
        for label in name.split("."):
            raw = label.encode("ascii") if label.isascii() else label.encode("idna")
            if not 0 < len(raw) < 64:
                raise ValueError(f"the label {label!r} is not 1 to 63 bytes long")
            labels.append(raw.decode("ascii").lower())
            wire += bytes((len(raw),)) + raw
        wire += b"\0"
        if len(wire) > 255:
            raise ValueError("the name is longer than 255 bytes")
        ident = random.getrandbits(16)
        header = _HEADER.pack(ident, _RD, 1, 0, 0, 0)
        packet = header + bytes(wire) + struct.pack("!HH", code, _CLASS_IN)
        return cls(ident, ".".join(labels), code, packet)

    def answer(self, data: bytes) -> _Reply | None:
        """``data`` read, if it is a well-formed answer to this query (same ID and question).

        Every section is walked, so a message cut short is no answer; the records of the
        type asked are kept, in order (a CNAME comes with its target's records).
        """
        if not 12 <= len(data) <= _MAX_MESSAGE:
            return None
        ident, flags, questions, answers, authority, additional = _HEADER.unpack_from(data)
        if ident != self.ident or not flags & _QR or questions != 1:
            return None
        try:
            qname, offset = _read_name(data, 12)
            qtype, _ = struct.unpack_from("!HH", data, offset)
            if qtype != self.qtype or qname != self.name:
                return None
            offset += 4
            found: list[bytes] = []
            for index in range(answers + authority + additional):
                _, offset = _read_name(data, offset)
                rtype, _, _, length = _RECORD.unpack_from(data, offset)
                offset += _RECORD.size
                if offset + length > len(data):
                    return None
                if index < answers and rtype == qtype:
                    found.append(data[offset : offset + length])
                offset += length
            if qtype == _TYPE_A:
                records = [socket.inet_ntoa(rdata) for rdata in found]
            elif found:
                reply = dnslib.DNSRecord.parse(data)
                records = [str(rr.rdata) for rr in reply.rr if rr.rtype == qtype]
            else:
                records = []
        except (struct.error, ValueError, IndexError, OSError, dnslib.DNSError):
            return None
        return _Reply(flags & 0xF, bool(flags & _TC), records)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock``; OSError if it closes first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("the server closed the connection before answering")
        data += chunk
    return data


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` (lower case, no final dot) and the offset after it."""
    labels: list[str] = []
    end: int | None = None
    pointers = 0
    while True:
        length = data[offset]
        if length >= 0xC0:
            # A pointer to the rest of the name, earlier in the message.
            pointers += 1
            if pointers > _MAX_POINTERS:
                raise ValueError("the name's compression pointers loop")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length >= 0x40:
            raise ValueError("a label of an unknown type")
        offset += 1
        if length == 0:
            break
        if offset + length > len(data):
            raise ValueError("the name runs past the end of the message")
        labels.append(data[offset : offset + length].decode("ascii").lower())
        offset += length
    return ".".join(labels), offset if end is None else end


class _UDPExchange(asyncio.DatagramProtocol):
    """Hands over the datagrams that answer the query; errors from ICMP end the wait too."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        accept: Callable[[bytes], _Reply | None],
    ) -> None:
        self._loop = loop
        self._accept = accept
        self._waiter: asyncio.Future[_Reply] | None = None

    def next_answer(self) -> asyncio.Future[_Reply]:
        """A future for the next datagram that answers the query (or the next ICMP error)."""
        self._waiter = self._loop.create_future()
        return self._waiter

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """Pass on an answer to the query, read; anything else is dropped."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            answer = self._accept(data)
            if answer is not None:
                waiter.set_result(answer)

    def error_received(self, exc: Exception) -> None:
        """Pass on an ICMP error (such as "connection refused") to the waiting try."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
