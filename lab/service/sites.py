"""Listening sites: TCP accepted by us, a firewall check before TLS, then aiohttp's HTTP.

aiohttp's own sites hand ``ssl=`` to ``loop.create_server``, so the first code of ours to
run for a connection is after the TLS handshake: too late for a firewall, which must drop
an outside peer before a single TLS byte is answered. ``TLSSite`` is therefore an aiohttp
``BaseSite`` that accepts connections itself:

1. an accept callback (the loop's reader on the listening socket) asks the site whether
   the peer is admitted right now; if not, the socket is closed with a reset (SO_LINGER
   0), so the client sees no TLS and no HTTP;
2. an admitted socket is handed to ``loop.connect_accepted_socket`` with the site's TLS
   context; the protocol, ``GuardedConnection``, is told of the connection only once the
   handshake is done, and hands the TLS transport to an aiohttp ``RequestHandler`` made
   for the runner's ``Server``, forwarding every protocol call to it, so HTTP, keep-alive
   and graceful shutdown are aiohttp's own.

Upgrading a plain TCP protocol with ``loop.start_tls`` looks closer to aiohttp's design
but races on uvloop: it starts reading right after ``connection_made`` whatever the
protocol asked, so the ClientHello can reach the plain protocol before ``start_tls`` has
taken the transport. Accepting first has no such window on either loop.

Each site keeps its open connections, which is how a firewall change cuts keep-alive
connections already open, how maintenance cuts transfers, and how a request finds the
per-connection state NTLM needs (``TLSSite.connection(request)``).

What one peer may hold (lab.guard, ``[limits]`` in the config): every accepted connection
takes a slot of the process's ``ConnectionBudget`` (a cap per source address and one in
all) and is reset at once without one. A connection must finish its TLS handshake within
``handshake_timeout``; each request's headers must arrive within ``header_timeout`` of its
first byte (of the handshake's end, for the first request), and its body within
``body_timeout``, extended by a second for every ``body_min_rate`` bytes received, as
Apache's mod_reqtimeout does. Idle kept-alive connections are aiohttp's to close
(``keepalive_timeout``). Deadlines are checked by one timer per site, set for the
earliest deadline running, so a request costs no timer of its own and an idle site is
never woken. The same site serves plain HTTP (the admin API) with no TLS context.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, cast

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.web_protocol import RequestHandler

from lab.errors import ServiceError
from lab.net.config import Limits
from lab.net.guard import ConnectionBudget
from lab.net.netns import socket_at
from lab.service.problems import Diagnostic, Problem

BIND_ATTEMPTS = 20
# Deadline sweeps are at least this far apart (a quarter of a timeout under 4 s).
SWEEP_INTERVAL = 1.0
# How long to wait before accepting again after the system refused (e.g. no free fds).
ACCEPT_BACKOFF = 0.1
# At most this many connections accepted per wake-up, so that serving is not starved.
ACCEPT_BATCH = 64

log = logging.getLogger(__name__)


def reset_transport(transport: asyncio.Transport) -> None:
    """Close a TCP connection with a reset, as a firewall dropping it would."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def reset_socket(sock: socket.socket) -> None:
    """Close an accepted socket with a reset."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class AlertingSSLObject(ssl.SSLObject):
    """A server's TLS object that sends its alert before a failed handshake ends.

    asyncio's and uvloop's TLS transports close a connection whose handshake failed without
    sending what OpenSSL wrote for the peer, so a client offering TLS 1.1 or no shared
    cipher sees the connection drop instead of the ``protocol_version`` or
    ``handshake_failure`` alert a TLS server sends. Installed through the public
    ``SSLContext.sslobject_class`` hook, this object answers the first fatal error with
    "want read", which obliges the transport to flush the outgoing data (the alert) and
    wait; the error itself is raised on the next step. The client closes on the alert (or
    the handshake timeout ends the connection).
    """

    _failure: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        """Step the handshake; a fatal error is held back for one step (see the class)."""
        if self._failure is not None:
            raise self._failure
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            self._failure = exc
            raise ssl.SSLWantReadError("the alert is sent first") from exc


class _Phase(enum.Enum):
    HANDSHAKE = "TLS handshake"
    HEADERS = "request headers"
    BODY = "request body"
    SERVING = "answer"
    IDLE = "next request"


class GuardedConnection(asyncio.Protocol):
    """One admitted connection: after its TLS handshake, served by an aiohttp RequestHandler."""

    def __init__(self, site: TLSSite, peer: str, port: int, sock: socket.socket) -> None:
        self.site = site
        self.peer = peer
        self.port = port
        self.state: dict[str, Any] = {}  # per-connection state of the handlers (NTLM)
        self.transport: asyncio.Transport | None = None
        self._sock = sock
        self._handler: RequestHandler | None = None
        self._lost = False
        # The request deadline (loop time; inf when none runs): see the module's rules.
        self.deadline = float("inf")
        self._phase = _Phase.HANDSHAKE
        self._phase_start = 0.0
        self._received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The handshake is done: aiohttp takes the TLS transport."""
        # uvloop's transports are not asyncio.Transport instances, only alike.
        self.transport = cast(asyncio.Transport, transport)
        handler = self.site.make_handler()
        self._handler = handler
        self.site._upgraded(self)
        self._start(_Phase.HEADERS, self.site.limits.header_timeout)
        handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Decrypted request bytes, for aiohttp; the first of a request starts its deadline."""
        if self._phase is _Phase.IDLE:
            self._start(_Phase.HEADERS, self.site.limits.header_timeout)
        elif self._phase is _Phase.BODY:
            self._received += len(data)
        if self._handler is not None:
            self._handler.data_received(data)

    def request_started(self, body_pending: bool) -> None:
        """The site's handler has a request's headers; its body may still be arriving."""
        if body_pending:
            self._start(_Phase.BODY, self.site.limits.body_timeout)
        else:
            self._start(_Phase.SERVING, None)

    def request_done(self) -> None:
        """The handler has answered: the next bytes start a new request."""
        self._start(_Phase.IDLE, None)

    def _start(self, phase: _Phase, timeout: float | None) -> None:
        self._phase = phase
        self._received = 0
        now = self.site.now()
        self._phase_start = now
        if timeout is None:
            self.deadline = float("inf")
        else:
            self.deadline = now + timeout
            self.site.watch(self.deadline)

    def overdue(self, now: float) -> bool:
        """Whether the deadline has passed (a body that keeps its minimum rate is given
        more time: one second per ``body_min_rate`` bytes)."""
        if now < self.deadline:
            return False
        if self._phase is _Phase.BODY:
            limits = self.site.limits
            allowed = (
                self._phase_start + limits.body_timeout + self._received / limits.body_min_rate
            )
            if now < allowed:
                self.deadline = allowed
                return False
        return True

    @property
    def phase(self) -> str:
        """What the connection is waiting for (for the timeout's report)."""
        return self._phase.value

    def eof_received(self) -> bool | None:
        """The peer closed its side; aiohttp closes ours."""
        if self._handler is not None:
            self._handler.eof_received()
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forget the connection and tell aiohttp."""
        if self._lost:
            return
        self._lost = True
        self.site._closed(self)
        if self._handler is not None:
            self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        """Flow control from the TLS layer, for aiohttp's writer."""
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        """Flow control from the TLS layer, for aiohttp's writer."""
        if self._handler is not None:
            self._handler.resume_writing()

    def close(self) -> None:
        """Close the connection cleanly (TLS close, then TCP's); aiohttp is told it is gone."""
        if not self._lost and self.transport is not None:
            self.transport.close()

    def reset(self) -> None:
        """Cut the connection at once with a TCP reset (no TLS close, no HTTP answer)."""
        if self._lost:
            return
        if self.transport is not None:
            reset_transport(self.transport)
            return
        # Still in the handshake, the socket belongs to the loop's transport: make the
        # handshake fail now, and the transport's close then resets the connection.
        with suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._sock.shutdown(socket.SHUT_RDWR)

    def __repr__(self) -> str:
        return f"<GuardedConnection {self.peer} on {self.site.name}>"


class TLSSite(web.BaseSite):
    """An aiohttp site on a socket bound beforehand, with a per-connection admission check.

    ``budget`` is the process's connection budget; ``per_address`` False exempts this
    site's peers from the per-address cap (the front ends' external sites, whose only
    peer is the edge, which caps its own clients); ``reserved`` lets the site use the
    budget's reserve (the admin API); ``on_closed`` hears of every connection that ends
    (the edge closes what it opened for it).
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        ssl_context: ssl.SSLContext | None,
        *,
        limits: Limits | None = None,
        budget: ConnectionBudget | None = None,
        per_address: bool = True,
        reserved: bool = False,
        admit: Callable[[str], bool] | None = None,
        on_refused: Callable[[str], None] | None = None,
        on_closed: Callable[[GuardedConnection], None] | None = None,
        handler_class: type[RequestHandler] = RequestHandler,
        handler_options: Mapping[str, Any] | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self.ssl_context: ssl.SSLContext | None = None
        if ssl_context is not None:
            self.present(ssl_context)
        self.limits = limits or Limits()
        self.budget = budget or ConnectionBudget.of_its_own(self.limits)
        self._per_address = per_address
        self._reserved = reserved
        self._sock = sock
        self._admit = admit
        self._on_refused = on_refused
        self._on_closed = on_closed
        self._handler_class = handler_class
        self._handler_options = {
            "keepalive_timeout": self.limits.keepalive_timeout,
            **(handler_options or {}),
        }
        host, port = sock.getsockname()[:2]
        self.address: tuple[str, int] = (str(host), int(port))
        self.connections: set[GuardedConnection] = set()
        self._by_transport: dict[asyncio.Transport, GuardedConnection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listening = False
        self._retry: asyncio.TimerHandle | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        # The sweep of overdue connections: when it runs next (inf: not planned).
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._sweep_at = float("inf")
        # Connections refused for want of a budget slot, and cut for being too slow.
        self.over_budget = 0
        self.timed_out = 0

    @property
    def name(self) -> str:
        """The URL this site answers on."""
        host, port = self.address
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://{host}:{port}"

    def present(self, ssl_context: ssl.SSLContext) -> None:
        """Serve new connections' handshakes with ``ssl_context`` (its certificate); those
        already open keep theirs."""
        ssl_context.sslobject_class = AlertingSSLObject
        self.ssl_context = ssl_context

    def now(self) -> float:
        """The loop's time, which every deadline uses."""
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    async def start(self) -> None:
        """Start accepting on the socket."""
        await super().start()
        self._loop = asyncio.get_running_loop()
        self._listen()

    def watch(self, deadline: float) -> None:
        """Make sure a sweep runs by ``deadline`` (a connection's new deadline)."""
        if deadline >= self._sweep_at or self._loop is None:
            return
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self._sweep_at = deadline
        self._sweep_timer = self._loop.call_at(deadline, self._sweep)

    def _sweep(self) -> None:
        """Cut every overdue connection; plan the next sweep for the earliest deadline left.

        Sweeps are at least a granule apart, so that a busy site sweeps its connections a
        few times per timeout rather than once per request; with no deadline running none
        is planned (an idle lab, or a test on fake time, is not woken).
        """
        self._sweep_timer = None
        self._sweep_at = float("inf")
        now = self.now()
        earliest = float("inf")
        for conn in list(self.connections):
            if conn.overdue(now):
                self.timed_out += 1
                log.debug("site %s: %s timed out waiting for %s", self.name, conn.peer, conn.phase)
                conn.reset()
            elif conn.deadline < earliest:
                earliest = conn.deadline
        if earliest < float("inf"):
            limits = self.limits
            granule = min(SWEEP_INTERVAL, limits.header_timeout / 4, limits.body_timeout / 4)
            self.watch(max(earliest, now + granule))

    async def stop(self) -> None:
        """Stop accepting; connections still in their handshake are cut."""
        self._unlisten()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        self._loop = None
        self._sock.close()
        for task in list(self._handshakes):
            task.cancel()
        if self._handshakes:
            await asyncio.wait(self._handshakes)
        await super().stop()

    def _listen(self) -> None:
        # A reader callback rather than a sock_accept per connection: one wake-up takes
        # every connection waiting, with no future and no reader set up and torn down each.
        self._retry = None
        if self._loop is not None and not self._listening:
            self._loop.add_reader(self._sock.fileno(), self._accept_ready)
            self._listening = True

    def _unlisten(self) -> None:
        if self._loop is not None and self._listening:
            self._loop.remove_reader(self._sock.fileno())
        self._listening = False

    def _accept_ready(self) -> None:
        """Accept what is waiting: reset who is not admitted, start TLS for the others."""
        loop = self._loop
        assert loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of file descriptors and the like: keep serving who is connected.
                log.warning("site %s cannot accept: %s", self.name, exc)
                self._unlisten()
                self._retry = loop.call_later(ACCEPT_BACKOFF, self._listen)
                return
            peer = str(address[0])
            if not self.admits(peer):
                reset_socket(sock)
                self.refused(peer)
                continue
            if not self.budget.admit(peer, reserved=self._reserved, capped=self._per_address):
                reset_socket(sock)
                self.over_budget += 1
                continue
            sock.setblocking(False)
            conn = GuardedConnection(self, peer, int(address[1]), sock)
            self.connections.add(conn)
            task = loop.create_task(self._handshake(conn, sock))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: GuardedConnection, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.ssl_context is None:
                await loop.connect_accepted_socket(lambda: conn, sock)
            else:
                await loop.connect_accepted_socket(
                    lambda: conn,
                    sock,
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=self.limits.handshake_timeout,
                )
        except OSError:
            # A failed handshake (bad client, reset, timeout) ends the connection quietly;
            # the loop closed the socket with its transport.
            self._closed(conn)
        except asyncio.CancelledError:
            self._closed(conn)
            raise

    def admits(self, peer: str) -> bool:
        """Whether a connection from ``peer`` may be served right now."""
        return self._admit is None or self._admit(peer)

    def refused(self, peer: str) -> None:
        """Report a connection that was reset before TLS."""
        if self._on_refused is not None:
            self._on_refused(peer)

    def make_handler(self) -> RequestHandler:
        """A fresh aiohttp RequestHandler serving the runner's application."""
        server = self._runner.server
        if server is None:
            raise ServiceError(f"site {self.name} has no running server")
        return self._handler_class(server, loop=asyncio.get_running_loop(), **self._handler_options)

    def connection(self, request: web.BaseRequest) -> GuardedConnection:
        """The connection ``request`` arrived on."""
        conn = self._connection_of(request)
        if conn is None:
            raise ConnectionResetError("the connection of this request is gone")
        return conn

    def _connection_of(self, request: web.BaseRequest) -> GuardedConnection | None:
        transport = request.transport
        return self._by_transport.get(transport) if transport is not None else None

    @contextmanager
    def serving(self, request: web.BaseRequest) -> Iterator[None]:
        """Around a handler: the request's headers are in, its body deadline starts; when
        the handler returns, the connection waits for its next request."""
        conn = self._connection_of(request)
        if conn is None:
            yield
            return
        conn.request_started(request.body_exists and not request.content.is_eof())
        try:
            yield
        finally:
            conn.request_done()

    def enforce(self) -> int:
        """Reset every open connection whose peer is no longer admitted; returns how many."""
        cut = [conn for conn in self.connections if not self.admits(conn.peer)]
        for conn in cut:
            self.refused(conn.peer)
            conn.reset()
        return len(cut)

    def reset_all(self) -> int:
        """Reset every open connection; returns how many."""
        conns = list(self.connections)
        for conn in conns:
            conn.reset()
        return len(conns)

    def _upgraded(self, conn: GuardedConnection) -> None:
        if conn.transport is not None:
            self._by_transport[conn.transport] = conn

    def _closed(self, conn: GuardedConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.budget.release(conn.peer)
            if self._on_closed is not None:
                self._on_closed(conn)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)

    def snapshot(self) -> dict[str, int]:
        """Open connections and those refused or cut by the limits, for ``lab status``."""
        return {
            "open": len(self.connections),
            "over_budget": self.over_budget,
            "timed_out": self.timed_out,
        }


async def answer_expect(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` as aiohttp's router would; refuse any other.

    Sites run on aiohttp's low-level server, which has no router to do it, so this writes
    the interim answer itself through the request's public writer
    (``BaseRequest.writer``, an ``aiohttp.abc.AbstractStreamWriter``, which declares
    ``output_size``): reset, so that a refusal can still be answered after it.
    """
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return
    if expect.lower() != "100-continue":
        raise Problem(
            Diagnostic.MALFORMED_REQUEST,
            f"the Expect header {expect!r} is not understood; only 100-continue is",
        )
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    # The interim answer is no part of the answer: aiohttp sends an error answer only
    # while nothing of one has been written.
    request.writer.output_size = 0


def _bind(host: str, port: int) -> socket.socket:
    sock = socket_at(host, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_same_port(hosts: Iterable[str], port: int) -> list[socket.socket]:
    """Listening sockets on every host, all on one port number.

    With ``port`` 0 the first host gets a free port and the others are bound on that same
    number; when one of them has it taken, everything is released and tried again.
    """
    hosts = list(hosts)
    if not hosts:
        return []
    for _ in range(BIND_ATTEMPTS):
        socks: list[socket.socket] = []
        host = hosts[0]
        try:
            socks.append(_bind(host, port))
            chosen = socks[0].getsockname()[1]
            for host in hosts[1:]:
                socks.append(_bind(host, chosen))
            return socks
        except OSError as exc:
            for sock in socks:
                sock.close()
            if port != 0 or exc.errno != errno.EADDRINUSE:
                raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    raise ServiceError(f"no port free on all of {', '.join(hosts)} after {BIND_ATTEMPTS} attempts")
