"""The edge: the reverse proxy on the outside address that publishes the pool's external sites.

Lync publishes its external web services through a reverse proxy (TMG, IIS ARR or
similar), and so does the lab. The edge's rules, all in this module:

- TLS ends here. The edge's listener is a ``TLSSite`` (a slot of the connection budget per
  client address, handshake and request deadlines, a graceful stop) presenting the edge's
  own certificate, which carries the external web name outside phones ask for.
- Each client connection gets its own connection to one front end's external site, opened
  for its first request and pinned to it for its whole life: never shared, never replaced,
  closed when the client's closes, and the client's is closed when it ends. NTLM
  authenticates a connection, not a request, so pinning is what lets a phone's handshake
  reach one front end whole. It is a new TLS connection from the edge's address, the front
  end's certificate verified against the CA the edge trusts (the lab CA) for the front
  end's FQDN (lab.service.upstream: the link, its HTTP and its flow control).
- A new client connection goes to the next server in turn among those the pool says are in
  production, asked at that moment; a server that refuses, fails TLS or does not take the
  connection in time is skipped for the next. A server leaving production keeps its pinned
  connections (its own 503 ends them) and gets no new client.
- Requests and answers are HTTP/1.1: aiohttp's server towards the client, h11 towards the
  front end. Method, path, status and end-to-end headers (Range, ETag, If-Range,
  Authorization, WWW-Authenticate, X-Ms-Diagnostics) pass untouched, hop-by-hop headers do
  not, and bodies stream both ways with flow control, never held whole. ``Expect:
  100-continue`` is answered here.
- When no front end can answer, the edge answers in the service's shape (X-Ms-Diagnostics,
  lab.service.problems) and closes the client connection: 503 when no server is in
  production, 502 when none took the connection or its certificate did not verify, or it
  closed without an answer, 504 when it did not answer in time. An answer cut part way
  cuts the client connection too (a reset), so a download resumes elsewhere.
- The front end sees the edge as its peer. Before the first byte goes up, the edge records
  which client each of its connections forwards (``Edge.origin``), so the front ends count
  failed sign-ins per client, not per edge. A record keyed by the edge's own socket cannot
  be written by a client, where an ``X-Forwarded-For`` header would need a rule for whom
  to believe.
- ``PublishingRule`` is what an administrator configures in the proxy's publishing rule.
  Scenarios change it, the listener's certificate (``present``) and the CA the edge trusts
  (``trust``) to replay the classic reverse-proxy mistakes.
"""

from __future__ import annotations

import socket
import ssl
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h11
from aiohttp import hdrs, web
from multidict import CIMultiDict

from lab.events import EventBus
from lab.net.config import Limits
from lab.net.guard import ConnectionBudget
from lab.service.problems import DiagnosedRequestHandler, Diagnostic, Problem, problem_response
from lab.service.sites import GuardedConnection, TLSSite, answer_expect
from lab.service.upstream import Link, Upstream, open_link

__all__ = ["Edge", "PublishingRule", "Upstream"]

CONNECT_TIMEOUT = 5.0
"""Seconds a front end has to take the edge's connection, TLS handshake included."""
ANSWER_TIMEOUT = 60.0
"""Seconds a front end may keep the edge waiting for its answer, or for the next part of it."""
# Headers of one connection, not of the message (RFC 9110 7.6.1): never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# The edge answers Expect itself; credentials are what a rule may keep from the front end.
_EXPECT = frozenset({b"expect"})
_AUTHORIZATION = frozenset({b"authorization"})
_CONNECTION_CLOSE = b"close"


@dataclass(frozen=True)
class PublishingRule:
    """The proxy's publishing rule for the pool's external web services (TMG's or ARR's)."""

    bridge_port: int | None = None
    """The port the rule bridges to on each front end; None: its external site's (4443)."""
    client_may_authenticate: bool = True
    """"No delegation, but client may authenticate directly", as Lync needs; False keeps the
    clients' credentials (Authorization) from the front ends."""


class Edge:
    """The reverse proxy on the outside address: each client connection pinned to one front end."""

    def __init__(
        self,
        sock: socket.socket,
        upstreams: Callable[[], Sequence[Upstream]],
        *,
        source: str,
        certificate: ssl.SSLContext,
        trust: ssl.SSLContext,
        events: EventBus | None = None,
        budget: ConnectionBudget | None = None,
        limits: Limits | None = None,
        retry_after: int = 60,
        shutdown_timeout: float = 5.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self._sock = sock
        self._upstreams = upstreams
        self.source = source
        self.events = events
        self.limits = limits or Limits()
        self.budget = budget or ConnectionBudget.of_its_own(self.limits)
        self.rule = PublishingRule()
        self.retry_after = retry_after
        self.connect_timeout = connect_timeout
        self.answer_timeout = answer_timeout
        host, port = sock.getsockname()[:2]
        self.address: tuple[str, int] = (str(host), int(port))
        # The upstream connection's (host, port) -> the client it forwards (see origin).
        self.origins: dict[tuple[str, int], str] = {}
        # Client connections pinned, per server; the edge's own answers, per status.
        self.forwarded_to: Counter[str] = Counter()
        self.answered: Counter[int] = Counter()
        self._certificate = certificate
        self._trust = trust
        self._shutdown_timeout = shutdown_timeout
        self._turn = 0
        self._links: dict[GuardedConnection, Link] = {}
        self._runner: web.ServerRunner | None = None
        self._site: TLSSite | None = None

    async def start(self) -> None:
        """Start accepting."""
        runner = web.ServerRunner(web.Server(self._serve), shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        self._runner = runner
        self._site = TLSSite(
            runner,
            self._sock,
            self._certificate,
            limits=self.limits,
            budget=self.budget,
            on_closed=self._client_closed,
            handler_class=DiagnosedRequestHandler,
            handler_options={"access_log": None},
            backlog=256,
        )
        await self._site.start()

    async def stop(self) -> None:
        """Stop accepting; requests being forwarded get the shutdown timeout to finish."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        for link in self._links.values():
            self._unpin(link)
        self._links.clear()
        self._site = None

    # -- what the pool, the status and scenarios use ------------------------------------------

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        return len(self._site.connections) if self._site is not None else 0

    @property
    def over_budget(self) -> int:
        """Clients refused for want of a budget slot."""
        return self._site.over_budget if self._site is not None else 0

    def present(self, certificate: ssl.SSLContext) -> None:
        """Serve new client connections with ``certificate`` (the listener's certificate)."""
        self._certificate = certificate
        if self._site is not None:
            self._site.present(certificate)

    def trust(self, context: ssl.SSLContext) -> None:
        """Verify the front ends of new connections with ``context`` (the CAs it trusts)."""
        self._trust = context

    def origin(self, host: str, port: int) -> str:
        """The client a front end's peer ``host:port`` forwards, if it is the edge's."""
        return self.origins.get((host, port), host)

    def choose(self) -> list[Upstream]:
        """The servers to try for a new client connection, the next one in turn first."""
        candidates = list(self._upstreams())
        if not candidates:
            return []
        start = self._turn % len(candidates)
        self._turn += 1
        return candidates[start:] + candidates[:start]

    def snapshot(self) -> dict[str, Any]:
        """Connections, where they went and what the edge answered itself, for ``lab status``."""
        site = self._site
        return {
            "open_connections": self.open_connections,
            "upstream_connections": sum(
                1 for link in self._links.values() if link.client is not None
            ),
            "forwarded": dict(self.forwarded_to),
            "answered": {str(status): count for status, count in sorted(self.answered.items())},
            "over_budget": self.over_budget,
            "timed_out": site.timed_out if site is not None else 0,
        }

    # -- serving -------------------------------------------------------------------------------

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        site = self._site
        if site is None:
            raise ConnectionResetError("the edge is stopping")
        conn = site.connection(request)
        # The body's deadline runs from here (lab.service.sites).
        with site.serving(request):
            try:
                link = self._links.get(conn)
                if link is None:
                    link = await self._connect(conn)
                elif link.client is None:
                    # Its front end has ended it: a connection is never given another.
                    raise Problem(
                        Diagnostic.FRONT_END_NO_ANSWER,
                        _REASONS[Diagnostic.FRONT_END_NO_ANSWER],
                        close=True,
                    )
                return await self._forward(request, conn, link)
            except Problem as problem:
                self.answered[problem.diagnostic.status] += 1
                return problem_response(problem)

    async def _connect(self, conn: GuardedConnection) -> Link:
        """A new connection to the next server in production that takes it, pinned to ``conn``."""
        candidates = self.choose()
        if not candidates:
            reason = "no front end of the pool is in production; try again later"
            self._unrouted(reason, {})
            raise Problem(
                Diagnostic.NO_SERVER_IN_PRODUCTION,
                reason,
                headers={"Retry-After": str(self.retry_after)},
                close=True,
            )
        failures: list[Diagnostic] = []
        details: dict[str, str] = {}
        for upstream in candidates:
            port = self.rule.bridge_port or upstream.port
            try:
                link = await open_link(
                    upstream,
                    port,
                    source=self.source,
                    trust=self._trust,
                    on_idle_close=self._upstream_closed,
                    connect_timeout=self.connect_timeout,
                    patience=self.answer_timeout,
                )
            except OSError as exc:  # TimeoutError and ssl.SSLError among them
                failures.append(_failure(exc))
                details[upstream.name] = f"{upstream.host}:{port}: {_words(exc)}"
                continue
            if conn not in self._site_connections():
                # The client left while the front end was being reached.
                link.close()
                raise ConnectionResetError("the client is gone")
            self._pin(conn, link)
            return link
        diagnostic = next(d for d in _PRECEDENCE if d in failures)
        reason = _REASONS[diagnostic]
        self._unrouted(reason, details)
        raise Problem(diagnostic, reason, close=True)

    def _site_connections(self) -> set[GuardedConnection]:
        return self._site.connections if self._site is not None else set()

    def _pin(self, conn: GuardedConnection, link: Link) -> None:
        # Before the client's first byte goes up: the front end asks as soon as it reads.
        link.client = conn
        transport = link.transport
        local = transport.get_extra_info("sockname") if transport is not None else None
        if local:
            link.origin_key = (str(local[0]), int(local[1]))
            self.origins[link.origin_key] = conn.peer
        self._links[conn] = link
        self.forwarded_to[link.upstream.name] += 1

    def _unpin(self, link: Link) -> None:
        """Part ``link`` from its client for good and close it (again: a no-op). The client
        connection keeps it, parted, until it closes: it never gets another."""
        link.client = None
        if link.origin_key is not None:
            self.origins.pop(link.origin_key, None)
        link.close()

    def _client_closed(self, conn: GuardedConnection) -> None:
        link = self._links.pop(conn, None)
        if link is not None:
            self._unpin(link)

    def _upstream_closed(self, link: Link) -> None:
        # The front end ended an idle connection (its keep-alive timeout, maintenance): the
        # client's ends with it, as one pinned pair. A link already parted has no client.
        conn = link.client
        self._unpin(link)
        if conn is not None:
            conn.close()

    async def _forward(
        self, request: web.BaseRequest, conn: GuardedConnection, link: Link
    ) -> web.StreamResponse:
        """Send ``request`` over ``link`` and stream the front end's answer back."""
        if request.headers.get(hdrs.EXPECT):
            await answer_expect(request)
        try:
            head = h11.Request(
                method=request.method,
                target=request.raw_path,
                headers=self._forwarded_headers(request),
            )
        except h11.LocalProtocolError as exc:
            raise Problem(
                Diagnostic.MALFORMED_REQUEST, f"the edge cannot forward this request: {exc}"
            ) from None
        link.busy = True
        try:
            answer = await self._exchange(request, link, head)
            response = _response(answer)
            if not _kept_alive(answer):
                response.force_close()
            await response.prepare(request)
            await self._stream_answer(conn, link, response)
            if not link.reusable():
                # The front end ends the connection after this answer: so does the client's.
                response.force_close()
                self._unpin(link)
            return response
        except BaseException:
            # Whatever broke (the front end, the client, a refusal of ours answered with a
            # close), this pair cannot go on.
            self._unpin(link)
            raise
        finally:
            link.busy = False

    async def _exchange(
        self, request: web.BaseRequest, link: Link, head: h11.Request
    ) -> h11.Response:
        """Send the request and its body; the front end's answer (its status and headers)."""
        try:
            sending = await link.send(head)
            if sending and request.body_exists:
                async for chunk in request.content.iter_any():
                    if not await link.send(h11.Data(data=chunk)):
                        sending = False
                        break
            if sending:
                await link.send(h11.EndOfMessage())
            while True:
                event = await link.next_event()
                if isinstance(event, h11.Response):
                    return event
                if not isinstance(event, h11.InformationalResponse):
                    break
        except TimeoutError:
            link.abort()
            raise Problem(
                Diagnostic.FRONT_END_TIMEOUT, _REASONS[Diagnostic.FRONT_END_TIMEOUT], close=True
            ) from None
        except h11.ProtocolError:
            pass
        link.abort()
        raise Problem(
            Diagnostic.FRONT_END_NO_ANSWER, _REASONS[Diagnostic.FRONT_END_NO_ANSWER], close=True
        )

    async def _stream_answer(
        self, conn: GuardedConnection, link: Link, response: web.StreamResponse
    ) -> None:
        """The answer's body, as it comes; a front end that stops part way cuts the client."""
        while True:
            try:
                event = await link.next_event()
            except (TimeoutError, h11.ProtocolError):
                event = None
            if isinstance(event, h11.Data):
                await response.write(event.data)
            elif isinstance(event, h11.EndOfMessage):
                await response.write_eof()
                return
            else:
                link.abort()
                conn.reset()
                raise ConnectionResetError(f"{link.upstream.name} stopped part way through")

    def _forwarded_headers(self, request: web.BaseRequest) -> list[tuple[bytes, bytes]]:
        """The request's end-to-end headers, as the client sent them, and its framing."""
        dropped = HOP_BY_HOP | _EXPECT | _connection_options(request.raw_headers)
        if not self.rule.client_may_authenticate:
            dropped |= _AUTHORIZATION
        headers = [
            (name, value) for name, value in request.raw_headers if name.lower() not in dropped
        ]
        if request.body_exists and request.content_length is None:
            # aiohttp took the client's chunks apart; h11 frames them again.
            headers.append((b"Transfer-Encoding", b"chunked"))
        return headers

    def _unrouted(self, reason: str, details: dict[str, str]) -> None:
        """Report a client connection no server could take."""
        if self.events is not None:
            self.events.publish(
                "edge.no_server",
                address=f"{self.address[0]}:{self.address[1]}",
                reason=reason,
                servers=details,
            )


_REASONS = {
    Diagnostic.FRONT_END_UNREACHABLE: "no front end took the edge's connection to its external "
    "site",
    Diagnostic.FRONT_END_UNTRUSTED: "the edge does not trust the certificate of the front ends' "
    "external sites",
    Diagnostic.FRONT_END_NO_ANSWER: "the front end closed the connection without a whole answer",
    Diagnostic.FRONT_END_TIMEOUT: "the front end did not answer the edge in time",
}
# Which failure names a client connection's trouble when every server failed differently.
_PRECEDENCE = (
    Diagnostic.FRONT_END_UNTRUSTED,
    Diagnostic.FRONT_END_UNREACHABLE,
    Diagnostic.FRONT_END_TIMEOUT,
)


def _failure(exc: BaseException) -> Diagnostic:
    """What a failed connection to a front end was, as the edge answers it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Diagnostic.FRONT_END_UNTRUSTED
    if isinstance(exc, TimeoutError):
        return Diagnostic.FRONT_END_TIMEOUT
    return Diagnostic.FRONT_END_UNREACHABLE


def _words(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message})"
    if isinstance(exc, TimeoutError):
        return "no connection in time"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _connection_options(raw: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names a ``Connection`` header declares hop-by-hop."""
    return frozenset(
        option.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for option in value.split(b",")
    )


def _response(answer: h11.Response) -> web.StreamResponse:
    """The client's answer with the front end's status and end-to-end headers."""
    raw = answer.headers.raw_items()
    dropped = HOP_BY_HOP | _connection_options(raw)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in raw:
        if name.lower() not in dropped:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
    reason = answer.reason.decode("latin-1") or None
    return web.StreamResponse(status=answer.status_code, reason=reason, headers=headers)


def _kept_alive(answer: h11.Response) -> bool:
    """Whether the front end keeps the connection after ``answer``, by its headers."""
    if answer.http_version != b"1.1":
        return False
    return not any(
        name == b"connection" and _CONNECTION_CLOSE in value.lower()
        for name, value in answer.headers
    )
