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
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from lab.errors import ServiceError

# A TLS client that never finishes its handshake must not hold a connection forever.
HANDSHAKE_TIMEOUT = 10.0
BIND_ATTEMPTS = 20
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


class GuardedConnection(asyncio.Protocol):
    """One admitted connection: after its TLS handshake, served by an aiohttp RequestHandler."""

    def __init__(self, site: TLSSite, peer: str, sock: socket.socket) -> None:
        self.site = site
        self.peer = peer
        self.state: dict[str, Any] = {}  # per-connection state of the handlers (NTLM)
        self.transport: asyncio.Transport | None = None
        self._sock = sock
        self._handler: RequestHandler | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The handshake is done: aiohttp takes the TLS transport."""
        # uvloop's transports are not asyncio.Transport instances, only alike.
        self.transport = cast(asyncio.Transport, transport)
        handler = self.site.make_handler()
        self._handler = handler
        self.site._upgraded(self)
        handler.connection_made(transport)
        # From here on the request bytes go to aiohttp's handler without a stop here (the
        # transport looks the method up on this object for every read).
        setattr(self, "data_received", handler.data_received)  # noqa: B010

    def data_received(self, data: bytes) -> None:
        """Decrypted request bytes, for aiohttp."""
        if self._handler is not None:
            self._handler.data_received(data)

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
    """An aiohttp site on a socket bound beforehand, with a per-connection admission check."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        ssl_context: ssl.SSLContext,
        *,
        admit: Callable[[str], bool] | None = None,
        on_refused: Callable[[str], None] | None = None,
        handler_class: type[RequestHandler] = RequestHandler,
        handler_options: Mapping[str, Any] | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self.ssl_context = ssl_context
        self._sock = sock
        self._admit = admit
        self._on_refused = on_refused
        self._handler_class = handler_class
        self._handler_options = dict(handler_options or {})
        host, port = sock.getsockname()[:2]
        self.address: tuple[str, int] = (str(host), int(port))
        self.connections: set[GuardedConnection] = set()
        self._by_transport: dict[asyncio.Transport, GuardedConnection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listening = False
        self._retry: asyncio.TimerHandle | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        """The URL this site answers on."""
        host, port = self.address
        return f"https://{host}:{port}"

    async def start(self) -> None:
        """Start accepting on the socket."""
        await super().start()
        self._loop = asyncio.get_running_loop()
        self._listen()

    async def stop(self) -> None:
        """Stop accepting; connections still in their handshake are cut."""
        self._unlisten()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
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
            sock.setblocking(False)
            task = loop.create_task(self._handshake(sock, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket, peer: str) -> None:
        conn = GuardedConnection(self, peer, sock)
        self.connections.add(conn)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn,
                sock,
                ssl=self.ssl_context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
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
        transport = request.transport
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is None:
            raise ConnectionResetError("the connection of this request is gone")
        return conn

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
        self.connections.discard(conn)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
