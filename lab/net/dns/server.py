"""The lab's authoritative split-horizon DNS server: asyncio over UDP and TCP.

What this module owns is the I/O: binding UDP and TCP on one address and port, TCP
framing (2-byte length, several queries per connection, back-pressure), sending answers
now or later (delay fault), and the query log and counters. What an answer *is* belongs
to ``responder`` (and ``zones``, ``faults``).

The view of every query is chosen at that moment by asking the FirewallPolicy about the
source address; nothing about it is cached, so a firewall change applies to the very
next query. No event loop policy is installed here: whoever runs the server picks the loop.

What one peer may cost the server (``[limits]``):
- every accepted TCP connection takes a slot of a ``ConnectionBudget`` (capped per source
  address, shared with the lab's other listeners) before a byte is read, and gives it back
  when it ends, however it ends; a connection over the cap is closed at once and counted;
- a TCP connection is idle, and closed after ``dns_tcp_idle_timeout``, when no *complete*
  message has arrived (nor answer left) for that long: stray bytes do not keep it open;
- a message whose first byte (length prefix included) has arrived must be whole within
  ``dns_tcp_message_timeout``, however many bytes trickle in meanwhile;
- malformed packets, refused connections, missed deadlines and failures to answer are
  reported through one ``FaultLog``: counts with a sample at a bounded rate, never a
  traceback, so a peer sending garbage can neither fill the log nor slow the server.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from lab.errors import DNSError
from lab.events import EventBus
from lab.lifecycle import Service
from lab.net.config import LabConfig
from lab.net.dns.faults import FaultTable
from lab.net.dns.querylog import Counters, QueryLog
from lab.net.dns.responder import Malformed, Responder, failure_reply
from lab.net.dns.zones import View, ViewRecords, build_views
from lab.net.firewall import FirewallPolicy, Zone
from lab.net.guard import ConnectionBudget, FaultLog
from lab.net.netns import socket_at

log = logging.getLogger(__name__)

DEFAULT_QUERY_LOG_SIZE = 1000
# With port 0, UDP picks the port and TCP may find it taken: try a few free ports.
BIND_ATTEMPTS = 20
TCP_BACKLOG = 1024
"""Connections the kernel may queue before the loop accepts them (capped by somaxconn): a
burst of connections, refused or not, must not drop the SYN of a normal client."""
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
"""Bytes asked for the UDP socket's receive buffer (the kernel caps it at net.core.rmem_max):
thousands of phones booting together send their queries in one burst, and the default
buffer (about 200 KiB) drops most of it before the loop reads it."""

_VIEWS = {Zone.INSIDE: View.INTERNAL, Zone.OUTSIDE: View.EXTERNAL}
_Reply = tuple[bytes | None, float]  # what to send (None: nothing) and after how many seconds


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
        tcp_idle_timeout: float | None = None,
        tcp_message_timeout: float | None = None,
        budget: ConnectionBudget | None = None,
    ) -> None:
        limits = config.limits
        self.config = config
        self.firewall = firewall
        self.events = events if events is not None else firewall.events
        self.host = host if host is not None else str(config.dns_address)
        self.port = config.ports.dns if port is None else port
        self.tcp_idle_timeout = (
            limits.dns_tcp_idle_timeout if tcp_idle_timeout is None else tcp_idle_timeout
        )
        self.tcp_message_timeout = (
            limits.dns_tcp_message_timeout if tcp_message_timeout is None else tcp_message_timeout
        )
        self.budget = budget or ConnectionBudget.of_its_own(limits)
        self.fault_log = FaultLog(log, interval=limits.fault_log_interval)
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
            self._tcp = await loop.create_server(
                lambda: _TCPConnection(self), sock=tcp_sock, backlog=TCP_BACKLOG
            )
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
        """Counters, TCP connections and limits, logged faults, cache figures and active
        faults, JSON-ready."""
        per_address = Counter(connection.peer[0] for connection in self._connections)
        return {
            **self.counters.as_dict(),
            "tcp_open": len(self._connections),
            "tcp_addresses": len(per_address),
            "tcp_busiest_address": max(per_address.values(), default=0),
            "tcp_limits": {
                "per_address_cap": self.budget.per_address,
                "idle_timeout": self.tcp_idle_timeout,
                "message_timeout": self.tcp_message_timeout,
            },
            "fault_log": self.fault_log.counts(),
            "cache": self._responder.stats(),
            "faults_active": self.faults.snapshot(),
        }

    # -- answering -------------------------------------------------------------------------

    def _handle(self, data: bytes, client: tuple[str, int], transport: str) -> _Reply:
        """Classify, answer, log and count one packet: the bytes to send (if any) and when."""
        view = _VIEWS[self.firewall.classify(client[0])]
        try:
            result = self._responder.respond(view, data, transport == "tcp")
        except Exception as exc:  # a bug here must cost one query, never the server
            self.counters.errors += 1
            self.fault_log.fault(
                "DNS: failed to answer a packet",
                f"{_packet(data, client, transport)}: {type(exc).__name__}: {exc}",
            )
            # SERVFAIL tells the client at once what it would otherwise learn by timing out.
            reply = failure_reply(data)
            if reply is None:
                self.counters.dropped += 1
            return reply, 0.0
        if isinstance(result, Malformed):
            self.counters.count_malformed(result.reason, result.reply is not None)
            self.fault_log.fault(
                f"DNS: malformed packet ({result.reason})", _packet(data, client, transport)
            )
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


def _packet(data: bytes, client: tuple[str, int], transport: str) -> str:
    """A packet in a fault log sample: size, transport, source and ID when it has one."""
    ident = f", id {int.from_bytes(data[:2], 'big')}" if len(data) >= 2 else ""
    return f"{len(data)} bytes over {transport} from {client[0]} port {client[1]}{ident}"


def _bound_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    sock = socket_at(host, kind)
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
    """One client connection: length-framed queries in, answers out, within the limits.

    Closed when idle (no complete message in, no answer out, for the idle timeout) and when
    a message that has begun is not whole by its deadline, whatever trickles in meanwhile.
    """

    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self._admitted = False  # holds a slot of the budget, to give back when it ends
        self._last_active = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._message_timer: asyncio.TimerHandle | None = None  # set while a message arrives
        self._delayed = 0  # answers waiting to be sent
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        host, port = self._transport.get_extra_info("peername")[:2]
        self.peer = (str(host), int(port))
        server = self._server
        budget = server.budget
        if not budget.admit(self.peer[0]):
            server.counters.tcp_refused += 1
            over = "per-address" if budget.held(self.peer[0]) >= budget.per_address else "total"
            server.fault_log.fault(
                "DNS: TCP connection refused",
                f"from {self.peer[0]}: over the {over} connection cap",
            )
            self._transport.close()
            return
        self._admitted = True
        server._connections.add(self)
        server.counters.tcp_connections += 1
        self._arm_idle_timer(server.tcp_idle_timeout)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return  # refused: closing, and nothing it sends is read
        buffer = self._buffer
        buffer += data
        completed = False
        while len(buffer) >= 2:
            size = int.from_bytes(buffer[:2], "big")
            if len(buffer) < 2 + size:
                break
            message = bytes(buffer[2 : 2 + size])
            del buffer[: 2 + size]
            completed = True
            self._last_active = self._loop.time()
            response, delay = self._server._handle(message, self.peer, "tcp")
            if response is None:
                continue
            if delay:
                self._delayed += 1
                self._server._later(delay, self._send_delayed, response)
            else:
                self._send(response)
        self._time_message(restart=completed)

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
        for timer in (self._idle_timer, self._message_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._message_timer = None
        self._transport = None
        if self._admitted:
            self._admitted = False
            self._server.budget.release(self.peer[0])
            self._server._connections.discard(self)

    def close(self) -> None:
        """Close the connection (answers already written are still flushed)."""
        if self._transport is not None:
            self._transport.close()

    def _hang_up(self) -> None:
        """Close on a limit; answers the client has not read go too (it is not reading)."""
        if self._transport is None:
            return
        if self._transport.get_write_buffer_size():
            # A graceful close would wait for a reader that never comes, holding the slot.
            self._transport.abort()
        else:
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

    def _time_message(self, *, restart: bool) -> None:
        """Keep the deadline of the message in the buffer: none when the buffer is empty,
        a new one when that message began in this read, else the one already running."""
        timer = self._message_timer
        if self._buffer and timer is not None and not restart:
            return  # the message that began earlier keeps its deadline
        if timer is not None:
            timer.cancel()
            self._message_timer = None
        if self._buffer and self._transport is not None:
            self._message_timer = self._loop.call_later(
                self._server.tcp_message_timeout, self._message_overdue
            )

    def _message_overdue(self) -> None:
        self._message_timer = None
        server = self._server
        server.counters.tcp_message_timeouts += 1
        server.fault_log.fault(
            "DNS: TCP message not whole in time",
            f"from {self.peer[0]}: {len(self._buffer)} bytes of a message after "
            f"{server.tcp_message_timeout:g} s",
        )
        self._hang_up()

    def _arm_idle_timer(self, delay: float) -> None:
        self._idle_timer = self._loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        # Re-arming once per timeout is cheaper than resetting a timer on every message.
        # A message still arriving does not count: the first of the two limits wins.
        timeout = self._server.tcp_idle_timeout
        remaining = self._last_active + timeout - self._loop.time()
        if remaining > 0 or self._delayed:
            self._arm_idle_timer(max(remaining, 0.0) or timeout)
            return
        self._server.counters.tcp_idle_closed += 1
        self._hang_up()
