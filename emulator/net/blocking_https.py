"""A phone's HTTPS client in blocking calls, for cooperative workers (emulator.cooperative).

Under gevent's monkey patching (Locust's workers) every blocking socket call yields to the
other greenlets, so thousands of phones share one process as they do on an asyncio loop.
It speaks HTTP/1.1 with h11 over the standard library's TLS sockets, and keeps the rules of
the asyncio client (emulator.net.https): the phone's own certificate checks at its clock,
one kept-alive connection (NTLM's three legs on it), a request to the address the phone
chose with the host name for SNI and Host, bounded answers, and downloads that resume with
``Range`` and ``If-Range`` and are hashed as they are written. It raises the same errors,
so a driver turns them into the same events. Nothing here imports gevent.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import h11

from emulator.codec import ANSWER_LIMIT, parse_retry_after
from emulator.errors import (
    CertificateError,
    ConnectError,
    DownloadInterruptedError,
    MalformedAnswerError,
    NTLMError,
    ServiceStatusError,
    TLSError,
)
from emulator.events import Credentials
from emulator.net import ntlm
from emulator.net.client import Answer, Download
from emulator.net.https import ERROR_BODY_LIMIT, FileSink, file_size, service_error
from emulator.net.tls import PhoneTLSContext
from emulator.netns import Namespaces

_CHUNK = 65536


@dataclass
class _Connection:
    """One kept-alive connection: where it goes and the h11 state of it."""

    host: str
    port: int
    address: str
    sock: ssl.SSLSocket
    http: h11.Connection

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class _Response:
    status: int
    headers: dict[str, list[str]]

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


class BlockingHTTPSClient:
    """The HTTPS client of one phone at ``source``, with its clock's TLS contexts."""

    def __init__(
        self,
        *,
        source: str,
        tls: Callable[[float], PhoneTLSContext],
        connect_timeout: float,
        read_timeout: float,
        user_agent: str,
        namespaces: Namespaces | None = None,
    ) -> None:
        self.source = source
        self._tls = tls
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.user_agent = user_agent
        self.namespaces = namespaces
        self._kept: _Connection | None = None

    # -- what a driver asks ---------------------------------------------------------------------

    def post_xml(
        self,
        url: str,
        body: bytes,
        *,
        address: str,
        credentials: Credentials | None = None,
        clock_offset: float = 0.0,
    ) -> Answer:
        """POST an XML body, read the bounded answer; ServiceStatusError for an error status."""
        headers = [("Content-Type", "text/xml; charset=utf-8")]
        with self._exchange("POST", url, address, headers, body, credentials, clock_offset) as (
            conn,
            response,
            account,
        ):
            if not 200 <= response.status < 300:
                raise self._failure(conn, response, account)
            data = self._read(conn, ANSWER_LIMIT + 1)
            if len(data) > ANSWER_LIMIT:
                raise MalformedAnswerError(
                    f"the answer from {conn.host} is over the {ANSWER_LIMIT}-byte limit"
                )
            return Answer(response.status, data, response.header("content-type"))

    def download(
        self,
        url: str,
        path: Path,
        *,
        address: str,
        offset: int,
        etag: str | None,
        credentials: Credentials | None = None,
        clock_offset: float = 0.0,
    ) -> Download:
        """GET ``url`` into ``path`` from ``offset`` (with ``etag``: Range and If-Range)."""
        have = file_size(path)
        start = max(0, min(offset, have)) if etag is not None else 0
        headers = [("Accept-Encoding", "identity")]
        if start and etag is not None:
            headers += [("Range", f"bytes={start}-"), ("If-Range", etag)]
        with self._exchange("GET", url, address, headers, b"", credentials, clock_offset) as (
            conn,
            response,
            account,
        ):
            if response.status == 206 and start:
                keep = start
            elif response.status == 200:
                keep = 0
            else:
                raise self._failure(conn, response, account)
            new_etag = response.header("etag") or (etag if keep else None)
            size = keep
            sink = FileSink(path, keep)
            try:
                for chunk in self._body(conn):
                    sink.write(chunk)
                    size += len(chunk)
            except (OSError, h11.ProtocolError) as exc:
                raise DownloadInterruptedError(
                    f"download from {conn.host} was cut at {size} bytes: {_said(exc)}",
                    offset=size,
                    etag=new_etag,
                ) from None
            finally:
                sink.close()
            return Download(response.status, size, size - keep, new_etag, sink.sha256)

    def kept_address(self, host: str, port: int) -> str | None:
        """The address of the kept-alive connection to ``host`` on ``port``, if open."""
        kept = self._kept
        if kept is not None and (kept.host, kept.port) == (host.lower(), port):
            return kept.address
        return None

    def drop_connections(self) -> None:
        """Close the kept-alive connection (a restart, or a new clock)."""
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()

    # -- one request --------------------------------------------------------------------------

    @contextmanager
    def _exchange(
        self,
        method: str,
        url: str,
        address: str,
        headers: list[tuple[str, str]],
        body: bytes,
        credentials: Credentials | None,
        clock_offset: float,
    ) -> Iterator[tuple[_Connection, _Response, str | None]]:
        """Send the request (answering NTLM's challenge when able); the answer's head."""
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port or 443
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = self._connection(host, port, address, clock_offset)
        account: str | None = None
        try:
            response = self._send(conn, method, target, headers, body)
            if response.status == 401 and credentials is not None:
                challenges = response.headers.get("www-authenticate", [])
                if ntlm.offered(challenges):
                    self._drain(conn)
                    account = credentials.account
                    response = self._authenticate(conn, method, target, headers, body, credentials)
            yield conn, response, account
            self._finish(conn)
        except BaseException:
            self.drop_connections()
            raise

    def _authenticate(
        self,
        conn: _Connection,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        credentials: Credentials,
    ) -> _Response:
        context = ntlm.NTLMClient(credentials, conn.host)
        signed = [*headers, ("Authorization", ntlm.authorization(context.step()))]
        response = self._send(conn, method, target, signed, body)
        challenge = ntlm.challenge_token(response.headers.get("www-authenticate", []))
        if response.status != 401 or challenge is None:
            return response
        self._drain(conn)
        if self._kept is not conn:
            raise NTLMError(
                f"{conn.host} closed the connection in the middle of the NTLM handshake for "
                f"{credentials.account}; NTLM needs one kept-alive connection"
            )
        signed = [*headers, ("Authorization", ntlm.authorization(context.step(challenge)))]
        return self._send(conn, method, target, signed, body)

    def _send(
        self,
        conn: _Connection,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> _Response:
        host_header = conn.host if conn.port == 443 else f"{conn.host}:{conn.port}"
        request = h11.Request(
            method=method,
            target=target,
            headers=[
                ("Host", host_header),
                ("User-Agent", self.user_agent),
                ("Content-Length", str(len(body))),
                *headers,
            ],
        )
        try:
            data = conn.http.send(request) or b""
            if body:
                data += conn.http.send(h11.Data(data=body)) or b""
            data += conn.http.send(h11.EndOfMessage()) or b""
            conn.sock.sendall(data)
            while True:
                event = self._next_event(conn)
                if isinstance(event, h11.Response):
                    found: dict[str, list[str]] = {}
                    for name, value in event.headers:
                        found.setdefault(name.decode().lower(), []).append(value.decode())
                    return _Response(event.status_code, found)
                if isinstance(event, h11.ConnectionClosed):
                    raise ConnectError(
                        f"{conn.host} closed the connection before answering",
                        address=conn.address,
                    )
        except (OSError, h11.ProtocolError) as exc:
            raise ConnectError(
                f"{conn.host} did not answer: {_said(exc)}", address=conn.address
            ) from None

    def _next_event(self, conn: _Connection) -> object:
        """The next h11 event of the answer (Response, Data, EndOfMessage, ConnectionClosed)."""
        while True:
            event = conn.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.sock.settimeout(self.read_timeout)
            conn.http.receive_data(conn.sock.recv(_CHUNK))

    def _body(self, conn: _Connection) -> Iterator[bytes]:
        while True:
            event = self._next_event(conn)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    def _read(self, conn: _Connection, limit: int) -> bytes:
        data = b""
        for chunk in self._body(conn):
            data += chunk
            if len(data) > limit:
                break
        return data[:limit]

    def _drain(self, conn: _Connection) -> None:
        self._read(conn, ERROR_BODY_LIMIT)
        self._finish(conn)

    def _finish(self, conn: _Connection) -> None:
        """Ready the connection for the next request, or close it if it cannot be."""
        http = conn.http
        if http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()
        elif self._kept is conn:
            self.drop_connections()

    def _failure(
        self, conn: _Connection, response: _Response, account: str | None
    ) -> ServiceStatusError:
        return service_error(
            conn.host,
            response.status,
            self._read(conn, ERROR_BODY_LIMIT),
            diagnostics=response.header("x-ms-diagnostics"),
            retry_after=parse_retry_after(response.header("retry-after")),
            challenges=response.headers.get("www-authenticate", []),
            account=account,
        )

    # -- connections ----------------------------------------------------------------------------

    def _connection(self, host: str, port: int, address: str, clock_offset: float) -> _Connection:
        kept = self._kept
        if kept is not None and (kept.host, kept.port, kept.address) == (host, port, address):
            return kept
        self.drop_connections()
        where = f"{host} ({address}:{port})"
        family = socket.AF_INET6 if ":" in self.source else socket.AF_INET
        if self.namespaces is not None:
            raw = self.namespaces.socket(self.source, socket.SOCK_STREAM)
        else:
            raw = socket.socket(family, socket.SOCK_STREAM)
        try:
            raw.settimeout(self.connect_timeout)
            raw.bind((self.source, 0))
            raw.connect((address, port))
        except OSError as exc:
            raw.close()
            raise ConnectError(
                f"could not connect to {where}: {_said(exc)}", address=address
            ) from None
        context = self._tls(clock_offset)
        try:
            sock = context.wrap_socket(raw, server_hostname=host)
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise TLSError(f"TLS with {where} failed: {_said(exc)}", host=host) from None
        try:
            chain = sock.getpeercert(binary_form=True)
            context.checker.check(host, [chain] if chain else [])
        except CertificateError as exc:
            sock.close()
            exc.address = address
            raise
        conn = _Connection(host, port, address, sock, h11.Connection(h11.CLIENT))
        self._kept = conn
        return conn


def _said(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
