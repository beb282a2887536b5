"""The edge's connection to one front end: TLS of its own, HTTP/1.1 through h11, flow control.

Rules of this module:
- A ``Link`` is opened by ``open_link`` from the edge's own address, with a small kernel
  receive buffer, and its TLS checks the front end's certificate for the front end's FQDN
  against the CA the edge trusts. Connecting and the handshake each have a deadline.
- It speaks HTTP/1.1 as a client through h11 (no I/O of h11's own): ``send`` writes one
  event and waits while the front end reads slower than the client sends, ``next_event``
  reads the answer one event at a time, waiting at most ``patience`` seconds for each part.
- Bytes from the front end are kept as they came and handed to h11 only as the forwarding
  asks for them: past HIGH_WATER held the link stops reading, below LOW_WATER it reads
  again, so a client that reads slowly holds the front end, not the edge's memory.
- The link knows nothing of clients: the edge pins it to one and hears, through
  ``on_idle_close``, when the front end ends it while no request is on it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import h11

from lab.net.netns import socket_at
from lab.service.sites import GuardedConnection

HIGH_WATER = 256 * 1024
"""Bytes of an answer held for a slow client before the link stops reading the front end."""
LOW_WATER = 64 * 1024
"""...and reads again once the client has taken all but this much."""
RECEIVE_BUFFER = 64 * 1024
"""The kernel's receive buffer of a link. Loopback's own would grow to megabytes and take a
whole image off a front end for a client that reads nothing, which would end the front
end's transfer (what maintenance drains) long before the client's."""
_BOTH_DONE = {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}


@dataclass(frozen=True)
class Upstream:
    """A front end's external site as the edge reaches it: address, and the name TLS checks."""

    name: str
    fqdn: str
    host: str
    port: int


class Link(asyncio.Protocol):
    """An edge's connection to one front end, pinned to one client connection."""

    def __init__(
        self, upstream: Upstream, on_idle_close: Callable[[Link], None], patience: float
    ) -> None:
        self.upstream = upstream
        # Seconds the front end may take for each part of an answer.
        self.patience = patience
        self.http = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None
        # The client connection it is pinned to, and its key in the edge's origins.
        self.client: GuardedConnection | None = None
        self.origin_key: tuple[str, int] | None = None
        # A request is being forwarded over it.
        self.busy = False
        self.closed = False
        self._on_idle_close = on_idle_close
        self._received: deque[bytes] = deque()
        self._held = 0
        self._eof = False
        self._eof_fed = False
        self._reading_paused = False
        self._wakeup: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    # -- the protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The TLS connection is up."""
        # uvloop's transports are not asyncio.Transport instances, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Keep what the front end sent until the forwarding reads it."""
        self._received.append(data)
        self._held += len(data)
        if self._held > HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        """The front end closed its side: the connection ends (TLS cannot half-close)."""
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is gone; when no request is on it, the edge is told."""
        self._eof = True
        self.closed = True
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if not self.busy:
            self._on_idle_close(self)

    def pause_writing(self) -> None:
        """The front end reads slower than the client sends: the forwarding waits."""
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        """The front end has caught up."""
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # -- what the forwarding uses ------------------------------------------------------------

    async def send(self, event: h11.Event) -> bool:
        """Write ``event`` to the front end; False once it has closed (what it answered
        before closing can still be read)."""
        if self.closed or self.transport is None:
            return False
        data = self.http.send(event)
        if data:
            self.transport.write(data)
        if self._writable is not None and not self._writable.done():
            await self._writable
        return not self.closed

    async def next_event(self) -> h11.Event:
        """The front end's next HTTP event; TimeoutError if nothing comes for ``patience``
        seconds, h11.RemoteProtocolError if it closes in the middle of an answer."""
        while True:
            event = self.http.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                # Only asked for while an answer is due, never between requests.
                raise h11.LocalProtocolError("no answer is due on this connection")
            if self._received:
                data = self._received.popleft()
                self._held -= len(data)
                if self._reading_paused and self._held <= LOW_WATER and self.transport:
                    self._reading_paused = False
                    self.transport.resume_reading()
                self.http.receive_data(data)
            elif self._eof and not self._eof_fed:
                self._eof_fed = True
                self.http.receive_data(b"")
            else:
                self._wakeup = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(self.patience):
                        await self._wakeup
                finally:
                    self._wakeup = None

    def reusable(self) -> bool:
        """Ready for the client's next request (both sides done, kept alive): the next
        cycle is started; False when the connection must end."""
        if self.closed or self.http.states != _BOTH_DONE:
            return False
        self.http.start_next_cycle()
        return True

    def close(self) -> None:
        """End the connection (a clean TLS close)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """End the connection at once."""
        if self.transport is not None:
            self.transport.abort()


async def open_link(
    upstream: Upstream,
    port: int,
    *,
    source: str,
    trust: ssl.SSLContext,
    on_idle_close: Callable[[Link], None],
    connect_timeout: float,
    patience: float,
) -> Link:
    """A new link from ``source`` to ``upstream`` on ``port``, its certificate checked with
    ``trust``; OSError (TimeoutError, ssl.SSLCertVerificationError among them) if none."""
    loop = asyncio.get_running_loop()
    link = Link(upstream, on_idle_close, patience)
    sock = socket_at(source, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((source, 0))
        sock.setblocking(False)
        async with asyncio.timeout(connect_timeout):
            await loop.sock_connect(sock, (upstream.host, port))
    except BaseException:
        sock.close()
        raise
    # From here the loop's transport owns the socket and closes it, also on failure.
    await loop.create_connection(
        lambda: link,
        sock=sock,
        ssl=trust,
        server_hostname=upstream.fqdn,
        ssl_handshake_timeout=connect_timeout,
    )
    return link
