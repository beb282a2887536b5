"""The edge: a TCP pass-through on the outside address publishing the pool's external sites.

Like a reverse proxy that does not terminate TLS, the edge forwards whole connections:
each new client connection is paired with a fresh connection to one front end's external
site, and bytes flow both ways untouched, so the TLS session and NTLM's per-connection
handshake are end to end. The upstream connection leaves from the edge's own address, so
the front end sees the edge as its peer; the edge remembers which client each upstream
connection forwards (``Edge.origin``), so that a front end can throttle failed sign-ins
per client, not per edge. Each client takes a slot of the process's connection budget
(its cap per address), and is reset without one. New connections go round-robin over the servers
the pool says are in production, asked at that moment; a server that refuses the
connection is skipped for the next. Flow control is passed through (a slow reader on one
side pauses reading on the other), half-closes are forwarded, and a reset on either side
resets the other.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from lab.events import EventBus
from lab.net.config import Limits
from lab.net.guard import ConnectionBudget
from lab.service.sites import reset_transport

CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Upstream:
    """A front end's external site as the edge reaches it."""

    name: str
    host: str
    port: int


class _Side(asyncio.Protocol):
    """One end of a spliced pair; forwards everything to the other end."""

    def __init__(self, splice: _Splice) -> None:
        self.splice = splice
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.held: list[bytes] = []

    @property
    def other(self) -> _Side:
        return self.splice.upstream if self is self.splice.client else self.splice.client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        other = self.other.transport
        if other is None:
            # Nowhere to send it yet (uvloop reads before an upstream exists, whatever
            # pause_reading said in connection_made): hold it and stop reading for now.
            self.held.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
        elif not other.is_closing():
            other.write(data)

    def release(self) -> None:
        """Send what was held back, then read again."""
        other = self.other.transport
        if other is not None and self.held:
            other.write(b"".join(self.held))
        self.held.clear()
        if self.transport is not None:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other.transport
        if other is None:
            # The client gave up before any upstream was found.
            self.splice.close()
            return False
        if not other.is_closing() and other.can_write_eof():
            other.write_eof()
        if self.other.eof:
            self.splice.close()
        # Keep our sending side open: the other end may still have bytes for this one.
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.splice.lost(self, exc)

    def pause_writing(self) -> None:
        if self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other.transport is not None:
            self.other.transport.resume_reading()


class _Splice:
    """A client connection and the upstream connection it is forwarded over."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.client = _ClientSide(self)
        self.upstream = _Side(self)
        self.server: str | None = None
        # The client's address while it holds a budget slot, and the upstream connection's
        # own address (how the front end names the client, see Edge.origin).
        self.peer: str | None = None
        self.origin_key: tuple[str, int] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        assert self.client.transport is not None
        # Nothing may be read from the client before there is somewhere to send it.
        self.client.transport.pause_reading()
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        for upstream in self.edge.choose():
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await loop.create_connection(
                        lambda: self.upstream,
                        upstream.host,
                        upstream.port,
                        local_addr=(self.edge.source, 0),
                    )
            except OSError:
                continue
            if self._closed:
                self.close(reset=True)
                return
            self._record_origin()
            self.server = upstream.name
            self.edge.forwarded(upstream.name)
            self.client.release()
            return
        self.edge.unrouted()
        self.close(reset=True)

    def _record_origin(self) -> None:
        # Before the client's first byte goes up: the front end asks as soon as it reads.
        upstream = self.upstream.transport
        client = self.client.transport
        if upstream is None or client is None:
            return
        local = upstream.get_extra_info("sockname")
        peer = client.get_extra_info("peername")
        if local and peer:
            self.origin_key = (str(local[0]), int(local[1]))
            self.edge.origins[self.origin_key] = str(peer[0])

    def lost(self, side: _Side, exc: BaseException | None) -> None:
        # A reset on one side is passed on as a reset, a clean close as a close.
        self.close(reset=exc is not None)

    def close(self, reset: bool = False) -> None:
        first = not self._closed
        self._closed = True
        for side in (self.client, self.upstream):
            transport = side.transport
            if transport is not None and not transport.is_closing():
                if reset:
                    reset_transport(transport)
                else:
                    transport.close()
        if first:
            if self._connecting is not None and not self._connecting.done():
                self._connecting.cancel()
            self.edge._splices.discard(self)
            if self.origin_key is not None:
                self.edge.origins.pop(self.origin_key, None)
            if self.peer is not None:
                self.edge.budget.release(self.peer)


class _ClientSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        edge = self.splice.edge
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else ""
        if not edge.budget.admit(peer):
            edge.over_budget += 1
            reset_transport(cast(asyncio.Transport, transport))
            return
        self.splice.peer = peer
        edge._splices.add(self.splice)
        self.splice.start()


class Edge:
    """The reverse proxy on the outside address: new connections round-robin over ``choose``."""

    def __init__(
        self,
        sock: socket.socket,
        upstreams: Callable[[], Sequence[Upstream]],
        *,
        source: str,
        events: EventBus | None = None,
        budget: ConnectionBudget | None = None,
    ) -> None:
        self._sock = sock
        self.budget = budget or ConnectionBudget.of_its_own(Limits())
        # Clients refused for want of a budget slot.
        self.over_budget = 0
        # The upstream connection's (host, port) -> the client it forwards (see origin).
        self.origins: dict[tuple[str, int], str] = {}
        self._upstreams = upstreams
        self.source = source
        self.events = events
        host, port = sock.getsockname()[:2]
        self.address: tuple[str, int] = (str(host), int(port))
        self.forwarded_to: Counter[str] = Counter()
        self._turn = 0
        self._server: asyncio.Server | None = None
        self._splices: set[_Splice] = set()

    async def start(self) -> None:
        """Start accepting."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Splice(self).client, sock=self._sock, backlog=256
        )

    async def stop(self) -> None:
        """Stop accepting and cut every forwarded connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for splice in list(self._splices):
            splice.close(reset=True)
        if server is not None:
            await server.wait_closed()

    @property
    def open_connections(self) -> int:
        """Connections being forwarded right now."""
        return len(self._splices)

    def origin(self, host: str, port: int) -> str:
        """The client a front end's peer ``host:port`` forwards, if it is the edge's."""
        return self.origins.get((host, port), host)

    def choose(self) -> list[Upstream]:
        """The servers to try for a new connection, the next one in turn first."""
        candidates = list(self._upstreams())
        if not candidates:
            return []
        start = self._turn % len(candidates)
        self._turn += 1
        return candidates[start:] + candidates[:start]

    def forwarded(self, server: str) -> None:
        """Count a connection forwarded to ``server``."""
        self.forwarded_to[server] += 1

    def unrouted(self) -> None:
        """Report a connection no server could take."""
        if self.events is not None:
            self.events.publish("edge.no_server", address=f"{self.address[0]}:{self.address[1]}")
