"""The lab's authoritative split-horizon DNS server: asyncio over UDP and TCP.

What this module owns is the I/O: binding UDP and TCP on one address and port, TCP
framing (2-byte length, several queries per connection, idle timeout, back-pressure),
sending answers now or later (delay fault), and the query log and counters. What an
answer *is* belongs to ``responder`` (and ``zones``, ``faults``).

The view of every query is chosen at that moment by asking the FirewallPolicy about the
source address; nothing about it is cached, so a firewall change applies to the very
next query. No event loop policy is installed here: whoever runs the server picks the loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from lab.config import LabConfig
from lab.dns.faults import FaultTable
from lab.dns.querylog import Counters, QueryLog
from lab.dns.responder import Malformed, Responder
from lab.dns.zones import View, ViewRecords, build_views
from lab.errors import DNSError
from lab.events import EventBus
from lab.firewall import FirewallPolicy, Zone
from lab.lifecycle import Service

log = logging.getLogger(__name__)

DEFAULT_TCP_IDLE_TIMEOUT = 30.0
DEFAULT_QUERY_LOG_SIZE = 1000
# With port 0, UDP picks the port and TCP may find it taken: try a few free ports.
BIND_ATTEMPTS = 20
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
"""Bytes asked for the UDP socket's receive buffer (the kernel caps it at net.core.rmem_max):
thousands of phones booting together send their queries in one burst, and the default
buffer (about 200 KiB) drops most of it before the loop reads it."""

_VIEWS = {Zone.INSIDE: View.INTERNAL, Zone.OUTSIDE: View.EXTERNAL}
_Reply = tuple[bytes | None, float]  # what to send (None: nothing) and after how many seconds
_NO_REPLY: _Reply = (None, 0.0)


class DNSServer(Service):
    """Authoritative split-horizon DNS for the lab, UDP and TCP on one address and port."""

    def __init__(
        self,
        config: LabConfig,
        firewall: FirewallPolicy,
        *,
        host: str | None = None,
        port: int | None = None,
        events: EventBus | None = None,
        query_log_path: Path | None = None,
        query_log_size: int = DEFAULT_QUERY_LOG_SIZE,
        tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT,
    ) -> None:
        self.config = config
        self.firewall = firewall
        self.events = events if events is not None else firewall.events
        self.host = host if host is not None else str(config.dns_address)
        self.port = config.ports.dns if port is None else port
        self.tcp_idle_timeout = tcp_idle_timeout
        self.views: dict[View, ViewRecords] = build_views(config)
        self.faults = FaultTable(config.zones, self.events, on_change=self._faults_changed)
        self.query_log = QueryLog(query_log_size, query_log_path)
        self.counters = Counters()
        self._responder = Responder(self.views, self.faults)
        self._address: tuple[str, int] | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_closed: asyncio.Future[None] | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[_TCPConnection] = set()
        self._pending: set[asyncio.TimerHandle] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP and TCP on the same address and port and start answering."""
        if self._udp is not None:
            raise DNSError(f"the DNS server is already running on {self._describe()}")
        loop = asyncio.get_running_loop()
        udp_sock, tcp_sock = self._bind()
        closed: asyncio.Future[None] = loop.create_future()
        try:
            self.query_log.open()
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self, closed), sock=udp_sock
            )
            self._udp, self._udp_closed = udp, closed
            self._tcp = await loop.create_server(lambda: _TCPConnection(self), sock=tcp_sock)
        except BaseException:
            tcp_sock.close()
            await self.stop()  # closes the UDP transport if it got that far, and the log
            udp_sock.close()
            raise
        host, port = udp_sock.getsockname()[:2]
        self._address = (str(host), int(port))
        self.events.publish("dns.started", host=host, port=port)

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        """Bound UDP and TCP sockets on one port; DNSError saying what is wrong if not."""
        # Binding the sockets ourselves gives the same errors on every loop (uvloop hides
        # errno) and leaks nothing when a bind fails.
        attempts_left = BIND_ATTEMPTS if self.port == 0 else 1
        while True:
            attempts_left -= 1
            try:
                udp = _bound_socket(self.host, self.port, socket.SOCK_DGRAM)
            except OSError as exc:
                raise _bind_error(self.host, self.port, "udp", exc) from None
            port = int(udp.getsockname()[1])
            try:
                tcp = _bound_socket(self.host, port, socket.SOCK_STREAM)
            except OSError as exc:
                udp.close()
                if exc.errno == errno.EADDRINUSE and attempts_left > 0:
                    continue  # the port UDP picked is taken for TCP: pick another
                raise _bind_error(self.host, port, "tcp", exc) from None
            return udp, tcp

    async def stop(self) -> None:
        """Stop answering, drop delayed answers and close every socket (idempotent)."""
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self._tcp is not None:
            self._tcp.close()
            for connection in list(self._connections):
                connection.close()
            await self._tcp.wait_closed()
            self._tcp = None
        if self._udp is not None and self._udp_closed is not None:
            self._udp.close()
            await self._udp_closed
            self._udp = self._udp_closed = None
            if self._address is not None:
                host, port = self._address
                self.events.publish("dns.stopped", host=host, port=port)
        self.query_log.close()

    @property
    def address(self) -> tuple[str, int]:
        """The address and port really bound (after ``start``)."""
        if self._address is None:
            raise DNSError("the DNS server has not been started, so it has no address yet")
        return self._address

    def stats(self) -> dict[str, Any]:
        """Counters, cache figures and active faults, JSON-ready."""
        return {
            **self.counters.as_dict(),
            "tcp_open": len(self._connections),
            "cache": self._responder.stats(),
            "faults_active": self.faults.snapshot(),
        }

    # -- answering -------------------------------------------------------------------------

    def _handle(self, data: bytes, client: tuple[str, int], transport: str) -> _Reply:
        """Classify, answer, log and count one packet: the bytes to send (if any) and when."""
        view = _VIEWS[self.firewall.classify(client[0])]
        try:
            result = self._responder.respond(view, data, transport == "tcp")
        except Exception:  # a bug here must cost one query, never the server
            log.exception("DNS: failed to answer a %s packet from %s", transport, client[0])
            self.counters.errors += 1
            self.counters.dropped += 1
            return _NO_REPLY
        if isinstance(result, Malformed):
            self.counters.count_malformed(result.reason, result.reply is not None)
            return result.reply, 0.0
        self.query_log.record(time.time(), client, transport, result.outcome)
        self.counters.count(transport, result.outcome)
        return result.response(data), result.delay

    def _later(self, delay: float, send: Callable[..., None], *args: Any) -> None:
        """Call ``send(*args)`` in ``delay`` seconds unless the server stops first."""
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._pending.discard(handle)
            send(*args)

        handle = loop.call_later(delay, fire)
        self._pending.add(handle)

    def _faults_changed(self) -> None:
        self._responder.invalidate()

    def _describe(self) -> str:
        host, port = self._address or (self.host, self.port)
        return f"{host} port {port}"


def _bound_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # A restarted lab gets its port back while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_error(host: str, port: int, proto: str, exc: OSError) -> DNSError:
    where = f"cannot bind the DNS server to {host}:{port} ({proto})"
    if exc.errno == errno.EADDRINUSE:
        advice = (
            "the address is already in use; stop whatever uses it, or choose another port "
            "(ports.dns in the lab config, 0 for any free port)"
        )
    elif exc.errno == errno.EACCES:
        advice = (
            "permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE, "
            'otherwise use ports.mode = "high" in the lab config'
        )
    elif exc.errno == errno.EADDRNOTAVAIL:
        advice = f"{host} is not an address of this machine; use one in 127.0.0.0/8"
    else:
        advice = exc.strerror or str(exc)
    return DNSError(f"{where}: {advice}")


class _UDPProtocol(asyncio.DatagramProtocol):
    """One datagram in, at most one datagram out."""

    def __init__(self, server: DNSServer, closed: asyncio.Future[None]) -> None:
        self._server = server
        self._closed = closed
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not every loop's datagram transport subclasses asyncio.DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        response, delay = self._server._handle(data, addr, "udp")
        if response is None or self._transport is None:
            return
        if delay:
            self._server._later(delay, self._send, response, addr)
        else:
            self._transport.sendto(response, addr)

    def _send(self, response: bytes, addr: tuple[str, int]) -> None:
        if self._transport is None or self._transport.is_closing():
            self._server.counters.dropped += 1
            return
        self._transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from clients that went away: nothing to do but carry on.
        log.debug("DNS: UDP error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._closed.done():
            self._closed.set_result(None)


class _TCPConnection(asyncio.Protocol):
    """One client connection: length-framed queries in, answers out, closed when idle."""

    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] = ("", 0)
        self._last_active = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._delayed = 0  # answers waiting to be sent
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = self._transport.get_extra_info("peername")
        self._peer = (str(peer[0]), int(peer[1]))
        self._server._connections.add(self)
        self._server.counters.tcp_connections += 1
        self._arm_idle_timer(self._server.tcp_idle_timeout)

    def data_received(self, data: bytes) -> None:
        self._last_active = self._loop.time()
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 2:
            size = int.from_bytes(buffer[:2], "big")
            if len(buffer) < 2 + size:
                break
            message = bytes(buffer[2 : 2 + size])
            del buffer[: 2 + size]
            response, delay = self._server._handle(message, self._peer, "tcp")
            if response is None:
                continue
            if delay:
                self._delayed += 1
                self._server._later(delay, self._send_delayed, response)
            else:
                self._send(response)

    def eof_received(self) -> bool:
        # A client may send its queries and half-close: keep writing until answers are out.
        self._eof = True
        return self._delayed > 0

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its queries until it does.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._transport = None
        self._server._connections.discard(self)

    def close(self) -> None:
        """Close the connection (answers already written are still flushed)."""
        if self._transport is not None:
            self._transport.close()

    def _send(self, response: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            self._server.counters.dropped += 1
            return
        self._transport.write(len(response).to_bytes(2, "big") + response)
        self._last_active = self._loop.time()

    def _send_delayed(self, response: bytes) -> None:
        self._delayed -= 1
        self._send(response)
        if self._eof and not self._delayed:
            self.close()

    def _arm_idle_timer(self, delay: float) -> None:
        self._idle_timer = self._loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        # Re-arming once per timeout is cheaper than resetting a timer on every message.
        remaining = self._last_active + self._server.tcp_idle_timeout - self._loop.time()
        if remaining > 0 or self._delayed:
            self._arm_idle_timer(max(remaining, 0.0) or self._server.tcp_idle_timeout)
            return
        self._server.counters.tcp_idle_closed += 1
        self.close()
