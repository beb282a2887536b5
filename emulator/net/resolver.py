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
  dnslib does the wire format; its errors never leave this module.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any, Protocol, cast

import dnslib

from emulator.errors import ResolutionError
from emulator.lease import Lease

DEFAULT_TIMEOUT = 2.0
DEFAULT_TRIES = 3
_MAX_MESSAGE = 65535


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
    ) -> None:
        if timeout <= 0 or tries < 1:
            raise ValueError(f"a DNS timeout must be > 0 and tries >= 1, not {timeout}, {tries}")
        self.server = server
        self.source = source
        self.timeout = timeout
        self.tries = tries

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
        return cls(lease.dns, source, timeout=timeout, tries=tries)

    @property
    def server_text(self) -> str:
        """The DNS server as the log names it (``127.10.0.2:10053``)."""
        return f"{self.server[0]}:{self.server[1]}"

    async def resolve(self, name: str, qtype: str = "A") -> list[str]:
        """Look ``name`` up; an address literal is its own answer (as for getaddrinfo)."""
        name = name.strip().rstrip(".").lower()
        if _is_address(name):
            return [name]
        query = self._query(name, qtype)
        packet = query.pack()
        reply = await self._udp(name, query, packet)
        if reply.header.tc:
            reply = await self._tcp(name, query, packet)
        return self._records(name, qtype, reply)

    # -- one exchange ------------------------------------------------------------------------

    def _query(self, name: str, qtype: str) -> dnslib.DNSRecord:
        try:
            return dnslib.DNSRecord.question(name, qtype.upper())
        except (dnslib.DNSError, ValueError, UnicodeError) as exc:
            raise self._error(
                name, f"cannot ask for {qtype} records of {name!r}: {exc}", "invalid"
            ) from None

    async def _udp(self, name: str, query: dnslib.DNSRecord, packet: bytes) -> dnslib.DNSRecord:
        loop = asyncio.get_running_loop()
        protocol = _UDPExchange(loop, lambda data: _matches(query, data))
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: protocol, local_addr=(self.source, 0), remote_addr=self.server
            )
        except OSError as exc:
            raise self._error(
                name, f"cannot send a DNS query for {name} from {self.source}: {exc.strerror}"
            ) from None
        detail = ""
        try:
            for _ in range(self.tries):
                transport.sendto(packet)
                try:
                    async with asyncio.timeout(self.timeout):
                        return _parse(await protocol.next_answer())
                except TimeoutError:
                    continue
                except OSError as exc:
                    # An ICMP error (nothing listens there): worth trying again, as for a loss.
                    detail = f" ({exc.strerror or exc})"
                    continue
        finally:
            transport.close()
        raise self._error(
            name,
            f"no answer from the DNS server {self.server_text} for {name} after {self.tries} "
            f"tries of {self.timeout:g} s{detail}",
        )

    async def _tcp(self, name: str, query: dnslib.DNSRecord, packet: bytes) -> dnslib.DNSRecord:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(
                    *self.server, local_addr=(self.source, 0)
                )
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
            if _matches(query, data):
                return _parse(data)
            problem = "the answer over TCP is not for the query sent"
        finally:
            if writer is not None:
                writer.close()
        raise self._error(
            name,
            f"the answer for {name} from {self.server_text} was truncated and asking again "
            f"over TCP failed: {problem}",
            "truncated",
        )

    def _records(self, name: str, qtype: str, reply: dnslib.DNSRecord) -> list[str]:
        rcode = reply.header.rcode
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
        wanted = getattr(dnslib.QTYPE, qtype.upper())
        # The server answers a CNAME with its target's records in the same answer section.
        records = [str(rr.rdata) for rr in reply.rr if rr.rtype == wanted]
        if not records:
            raise self._error(
                name, f"{name} has no {qtype.upper()} record (NODATA from {where})", "NODATA"
            )
        return records

    def _error(self, name: str, message: str, answer: str = "no answer") -> ResolutionError:
        return ResolutionError(message, name=name, server=self.server_text, answer=answer)


class _UDPExchange(asyncio.DatagramProtocol):
    """Hands over the datagrams that answer the query; errors from ICMP end the wait too."""

    def __init__(self, loop: asyncio.AbstractEventLoop, accept: Callable[[bytes], bool]) -> None:
        self._loop = loop
        self._accept = accept
        self._waiter: asyncio.Future[bytes] | None = None

    def next_answer(self) -> asyncio.Future[bytes]:
        """A future for the next datagram that answers the query (or the next ICMP error)."""
        self._waiter = self._loop.create_future()
        return self._waiter

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """Pass on an answer to the query; anything else is dropped."""
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._accept(data):
            waiter.set_result(data)

    def error_received(self, exc: Exception) -> None:
        """Pass on an ICMP error (such as "connection refused") to the waiting try."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def _parse(data: bytes) -> dnslib.DNSRecord:
    return cast(dnslib.DNSRecord, dnslib.DNSRecord.parse(data))


def _matches(query: dnslib.DNSRecord, data: bytes) -> bool:
    """Whether ``data`` is a well-formed answer to ``query`` (same ID and question)."""
    if len(data) > _MAX_MESSAGE:
        return False
    try:
        reply = dnslib.DNSRecord.parse(data)
    except (dnslib.DNSError, ValueError, IndexError, UnicodeError):
        return False
    if reply.header.id != query.header.id or not reply.header.qr or len(reply.questions) != 1:
        return False
    asked, got = query.q, reply.q
    return bool(
        got.qtype == asked.qtype
        and str(got.qname).rstrip(".").lower() == str(asked.qname).rstrip(".").lower()
    )


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
