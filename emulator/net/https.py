"""The phone's HTTPS client: one aiohttp session per phone, its address, its DNS, its TLS checks.

Rules of this module:
- Every connection leaves from the phone's source address and is kept alive, one at a time
  (NTLM authenticates a connection, so the legs of a handshake must share one).
- Names are resolved only by the phone's Resolver (the lab DNS, asked from the phone's
  address), never by the system. A caller that walks the addresses itself passes
  ``address``: the connection then goes to exactly that address while TLS (SNI and the
  certificate check) and the Host header still use the URL's host name. Pooled connections
  are keyed by address and name, so one is never reused for the other.
- Certificates are checked by the phone's own rules at the phone's time (emulator.net.tls),
  inside the handshake: nothing, credentials included, is sent over a connection that
  failed them. Changing the clock offset drops pooled connections, so the next request
  is checked at the new time.
- A 401 offering NTLM, when credentials are given, is answered on the same connection
  (NEGOTIATE, CHALLENGE, AUTHENTICATE), then the request is served.
- Answers are read with a bound (64 KiB for XML); an error status raises
  ServiceStatusError with the service's reason from ``X-Ms-Diagnostics``; aiohttp's and the
  socket layer's errors become the emulator's, in plain words, naming the address.
- Only aiohttp's public API is used, so that an upgrade cannot break it quietly: aiohttp
  connects (from the phone's address, one address at a time), and the client keeps its own
  record of the connections aiohttp hands it (``BaseConnector.connect``) to count them and
  to name the one it holds open to a host, instead of reading aiohttp's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import Connection
from yarl import URL

from emulator.clock import Clock, to_datetime
from emulator.codec import ANSWER_LIMIT, describe_status, parse_diagnostics, parse_retry_after
from emulator.errors import (
    CertificateError,
    ConnectError,
    CredentialsRefusedError,
    DownloadInterruptedError,
    MalformedAnswerError,
    NetworkError,
    NTLMError,
    ServiceStatusError,
    TLSError,
)
from emulator.events import Credentials
from emulator.lease import Lease
from emulator.net import ntlm
from emulator.net.client import Answer, Download, Progress
from emulator.net.resolver import Resolver
from emulator.net.tls import (
    CertificateChecker,
    PhoneCertificateRejected,
    PhoneTLSContext,
    phone_context,
)
from emulator.netns import Namespaces

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_USER_AGENT = "UCPhone (Lync Phone Edition emulator)"
ERROR_BODY_LIMIT = 4096
"""How much of an error answer's body is kept (its reason is in the headers anyway)."""
CHUNK_SIZE = 64 * 1024
_HASH_BLOCK = 1 << 20

TLSContexts = Callable[[float], PhoneTLSContext]
"""The TLS context for a clock offset: lets many phones on one clock share a few contexts."""

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class PhoneAiohttpResolver(AbstractResolver):
    """aiohttp's resolver interface over the phone's Resolver: the lab DNS, never the system's."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.last: dict[str, list[str]] = {}
        """The addresses each name last resolved to (to name them in errors)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The name's A records, in the order the DNS gave them (aiohttp tries them so)."""
        addresses = await self.resolver.resolve(host, "A")
        self.last[host] = addresses
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        """Nothing to release: the phone's resolver opens a socket per lookup."""


@dataclass(frozen=True)
class _Target:
    """Where one request goes: the URL's host and port, and maybe one address for it."""

    url: URL
    host: str
    port: int
    address: str | None

    @property
    def request_url(self) -> URL:
        return self.url.with_host(self.address) if self.address else self.url

    @property
    def host_header(self) -> str:
        return self.host if self.port == 443 else f"{self.host}:{self.port}"

    @property
    def resource(self) -> str:
        return self.url.path_qs


@dataclass
class _Exchange:
    """The final answer of a request, and the account it was authenticated as (if any)."""

    response: aiohttp.ClientResponse
    account: str | None = None


class PhoneHTTPSClient:
    """The HTTPS client of one phone: its source address, its resolver, its CA, its clock.

    ``tls``, when given, supplies the TLS context for each clock offset instead of a context
    of the client's own (which costs an OpenSSL context per phone); its checks must read the
    same clock plus that offset.
    """

    def __init__(
        self,
        *,
        source: str,
        resolver: Resolver,
        ca_cert: Path | None,
        clock: Clock,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        answer_limit: int = ANSWER_LIMIT,
        user_agent: str = DEFAULT_USER_AGENT,
        ntlm_client: ntlm.AuthFactory = ntlm.NTLMClient,
        tls: TLSContexts | None = None,
        namespaces: Namespaces | None = None,
    ) -> None:
        self.source = source
        # The lab's own network, whose segments the phone's sockets are made in.
        self.namespaces = namespaces
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.answer_limit = answer_limit
        self.user_agent = user_agent
        self._ntlm = ntlm_client
        self._connections = _KeptConnections()
        self._resolver = PhoneAiohttpResolver(resolver)
        self._offset = 0.0
        if tls is None:
            checker = (
                CertificateChecker.from_file(ca_cert, self.phone_time)
                if ca_cert is not None
                else CertificateChecker((), self.phone_time)
            )
            # Its checker reads phone_time, which follows the offset: one context will do.
            tls = _always(phone_context(checker))
        self._tls_for = tls
        self._tls = tls(self._offset)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_lease(
        cls,
        lease: Lease,
        source: str,
        resolver: Resolver,
        clock: Clock,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> PhoneHTTPSClient:
        """The client of a phone at ``source`` that trusts its lease's CA."""
        return cls(
            source=source,
            resolver=resolver,
            ca_cert=lease.ca_cert,
            clock=clock,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            namespaces=lease.netns,
        )

    @property
    def connections_made(self) -> int:
        """How many connections this client opened (each kept alive as long as it can be)."""
        return self._connections.made

    def phone_time(self) -> datetime:
        """The phone's own time (true time plus its clock offset), as certificates are judged."""
        return to_datetime(self.clock.now() + self._offset)

    # -- operations ----------------------------------------------------------------------------

    async def post_xml(
        self,
        url: str,
        body: bytes,
        *,
        address: str | None = None,
        credentials: Credentials | None = None,
        clock_offset: float = 0.0,
    ) -> Answer:
        """POST an XML body and read the XML answer (bounded); ServiceStatusError otherwise."""
        headers = {"Content-Type": "text/xml; charset=utf-8"}
        return await self._post(url, body, headers, address, credentials, clock_offset)

    async def post_log(
        self,
        url: str,
        body: bytes,
        *,
        address: str | None = None,
        credentials: Credentials | None = None,
        clock_offset: float = 0.0,
        content_type: str = "application/octet-stream",
    ) -> Answer:
        """POST a device log; ServiceStatusError when the service does not store it."""
        headers = {"Content-Type": content_type}
        return await self._post(url, body, headers, address, credentials, clock_offset)

    async def download(
        self,
        url: str,
        path: Path,
        *,
        address: str | None = None,
        offset: int | None = None,
        etag: str | None = None,
        credentials: Credentials | None = None,
        clock_offset: float = 0.0,
        progress: Progress | None = None,
    ) -> Download:
        """GET ``url`` into ``path``, resuming from ``offset`` (default: the file's size).

        With an ETag the request asks ``Range: bytes=<offset>-`` and ``If-Range: <etag>``:
        206 appends, 200 (the file changed) starts the file again. Without one, or at offset
        0, the file starts afresh. A cut transfer raises DownloadInterruptedError with how
        far the file got, kept on disk for the next try.
        """
        target = self._target(url, address)
        have = file_size(path)
        start = have if offset is None else max(0, min(offset, have))
        if etag is None:
            # Without the ETag nothing says the bytes kept are of the same file.
            start = 0
        headers = {"Accept-Encoding": "identity"}
        if start and etag is not None:
            headers |= {"Range": f"bytes={start}-", "If-Range": etag}
        with self._translated(target):
            async with self._exchange(
                "GET", target, None, headers, credentials, clock_offset
            ) as exchange:
                response = exchange.response
                if response.status == 416 and start and _complete_at(response, start):
                    return Download(416, start, 0, etag)
                if response.status == 206 and start:
                    total = _content_range_total(response, start, target)
                    keep = start
                elif response.status == 200:
                    total, keep = response.content_length, 0
                else:
                    raise await self._failure(target, exchange)
                new_etag = response.headers.get("ETag") or (etag if keep else None)
                return await self._receive(response, target, path, keep, total, new_etag, progress)

    def kept_address(self, host: str, port: int) -> str | None:
        """The address of a kept-alive connection, still open, made to ``host`` on ``port``;
        of several, the one used last. None when the client holds none open."""
        return self._connections.kept(host.lower(), port)

    async def drop_connections(self) -> None:
        """Close every kept-alive connection (the phone restarts, or its clock changed)."""
        session, self._session = self._session, None
        self._connections.forget()
        if session is not None:
            await session.close()

    async def close(self) -> None:
        """Close the client and its connections."""
        await self.drop_connections()

    async def __aenter__(self) -> PhoneHTTPSClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- one request ---------------------------------------------------------------------------

    async def _post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        address: str | None,
        credentials: Credentials | None,
        clock_offset: float,
    ) -> Answer:
        target = self._target(url, address)
        with self._translated(target):
            async with self._exchange(
                "POST", target, body, headers, credentials, clock_offset
            ) as exchange:
                response = exchange.response
                if not 200 <= response.status < 300:
                    raise await self._failure(target, exchange)
                data, more = await _read_bounded(response, self.answer_limit)
                if more:
                    raise MalformedAnswerError(
                        f"the answer from {self._where(target)} is over the "
                        f"{self.answer_limit}-byte limit"
                    )
                return Answer(response.status, data, response.headers.get("Content-Type"))

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        method: str,
        target: _Target,
        body: bytes | None,
        headers: dict[str, str],
        credentials: Credentials | None,
        clock_offset: float,
    ) -> AsyncIterator[_Exchange]:
        """Send the request, answering an NTLM challenge if asked and able; yield the answer."""
        session = await self._session_for(clock_offset)
        exchange = _Exchange(await self._send(session, method, target, body, headers))
        try:
            challenges = exchange.response.headers.getall("WWW-Authenticate", [])
            if exchange.response.status == 401 and credentials and ntlm.offered(challenges):
                await _discard(exchange.response)
                exchange = await self._authenticate(
                    session, method, target, body, headers, credentials
                )
            yield exchange
        finally:
            exchange.response.release()

    async def _authenticate(
        self,
        session: aiohttp.ClientSession,
        method: str,
        target: _Target,
        body: bytes | None,
        headers: dict[str, str],
        credentials: Credentials,
    ) -> _Exchange:
        """NEGOTIATE, CHALLENGE, AUTHENTICATE on one connection; the answer to the last leg."""
        context = self._ntlm(credentials, target.host)
        signed = {**headers, "Authorization": ntlm.authorization(context.step())}
        response = await self._send(session, method, target, body, signed)
        try:
            challenge = ntlm.challenge_token(response.headers.getall("WWW-Authenticate", []))
            if response.status != 401 or challenge is None:
                # Served at once, or refused outright: that answer is the outcome.
                return _Exchange(response, credentials.account)
            await _discard(response)
        except BaseException:
            response.release()
            raise
        made = self.connections_made
        signed = {**headers, "Authorization": ntlm.authorization(context.step(challenge))}
        response = await self._send(session, method, target, body, signed)
        if self.connections_made != made:
            response.release()
            raise NTLMError(
                f"{self._where(target)} closed the connection in the middle of the NTLM "
                f"handshake for {credentials.account}; NTLM needs one kept-alive connection"
            )
        return _Exchange(response, credentials.account)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        target: _Target,
        body: bytes | None,
        headers: dict[str, str],
    ) -> aiohttp.ClientResponse:
        return await session.request(
            method,
            target.request_url,
            data=body,
            headers={"Host": target.host_header, **headers},
            server_hostname=target.host if target.address else None,
            allow_redirects=False,
        )

    async def _receive(
        self,
        response: aiohttp.ClientResponse,
        target: _Target,
        path: Path,
        keep: int,
        total: int | None,
        etag: str | None,
        progress: Progress | None,
    ) -> Download:
        size = keep
        sink = FileSink(path, keep)
        try:
            # Whatever has arrived, in one piece: fewer, larger writes than fixed chunks.
            async for chunk in response.content.iter_any():
                sink.write(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(size, total)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise DownloadInterruptedError(
                f"download of {target.resource} from {self._where(target)} was cut at "
                f"{size} bytes: {_problem(exc, self.read_timeout)}",
                offset=size,
                etag=etag,
            ) from None
        finally:
            sink.close()
        if total is not None and size != total:
            raise DownloadInterruptedError(
                f"download of {target.resource} from {self._where(target)} ended at {size} "
                f"of {total} bytes",
                offset=size,
                etag=etag,
            )
        return Download(response.status, size, size - keep, etag, sink.sha256)

    async def _failure(self, target: _Target, exchange: _Exchange) -> ServiceStatusError:
        """The error for an answer that is not what was asked for, with the service's reason."""
        response = exchange.response
        body, _ = await _read_bounded(response, ERROR_BODY_LIMIT)
        return service_error(
            target.host,
            response.status,
            body,
            diagnostics=response.headers.get("X-Ms-Diagnostics"),
            retry_after=parse_retry_after(response.headers.get("Retry-After"), self.phone_time()),
            challenges=response.headers.getall("WWW-Authenticate", []),
            account=exchange.account,
        )

    # -- plumbing ------------------------------------------------------------------------------

    def _new_socket(self, _remote: Any) -> socket.socket:
        """The phone's TCP socket, made in its segment's namespace (the connector binds it)."""
        assert self.namespaces is not None
        return self.namespaces.socket(self.source, socket.SOCK_STREAM)

    async def _session_for(self, clock_offset: float) -> aiohttp.ClientSession:
        if clock_offset != self._offset:
            # Connections were checked at the old time: the next one must be checked anew.
            await self.drop_connections()
            self._offset = clock_offset
            self._tls = self._tls_for(clock_offset)
        if self._session is None:
            connector = _PhoneConnector(
                self._connections,
                ssl=self._tls,
                local_addr=(self.source, 0),
                resolver=self._resolver,
                use_dns_cache=False,
                family=socket.AF_INET,
                # One address at a time, in the order given: a phone does not race them.
                happy_eyeballs_delay=None,
                limit=1,
                socket_factory=None if self.namespaces is None else self._new_socket,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self.connect_timeout,
                    sock_read=self.read_timeout,
                    # A connection gives up at its timeout, not at the next whole second.
                    ceil_threshold=math.inf,
                ),
                headers={"User-Agent": self.user_agent},
                auto_decompress=False,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _target(self, url: str, address: str | None) -> _Target:
        parsed = URL(url)
        if parsed.scheme != "https" or not parsed.host:
            raise MalformedAnswerError(f"a phone only fetches https URLs with a host, not {url!r}")
        return _Target(parsed, parsed.host.lower(), parsed.port or 443, address)

    def _where(self, target: _Target) -> str:
        if target.address:
            return f"{target.host} at {target.address}:{target.port}"
        tried = self._resolver.last.get(target.host)
        return f"{target.host}:{target.port}" + (f" ({', '.join(tried)})" if tried else "")

    @contextlib.contextmanager
    def _translated(self, target: _Target) -> Iterator[None]:
        """Turn aiohttp's and the socket layer's errors into the emulator's, in plain words."""
        self._tls.rejections.clear()
        try:
            yield
        except NetworkError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            rejections = self._tls.rejections
            if target.address is None and rejections:
                # aiohttp tried every address and reports only the last failure; a server
                # whose certificate the phone refused says more than another that refused
                # the connection.
                first = rejections[0]
                raise CertificateError(target.host, first.problem, kind=first.kind) from None
            raise self._translate(exc, target) from None

    def _translate(self, exc: Exception, target: _Target) -> NetworkError:
        where = self._where(target)
        address = f"{target.address}:{target.port}" if target.address else None
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            cause = exc.certificate_error
            if isinstance(cause, PhoneCertificateRejected):
                rejected = cause.error
                return CertificateError(
                    target.host, rejected.problem, address=address, kind=rejected.kind
                )
            return CertificateError(target.host, str(cause), address=address)
        if isinstance(exc, aiohttp.ClientConnectorSSLError):
            return TLSError(
                f"TLS handshake with {where} failed: {_problem(exc.os_error)}", host=target.host
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ConnectError(_connect_problem(where, exc.os_error), address=address)
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return ConnectError(
                f"could not connect to {where} within {self.connect_timeout:g} s", address=address
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return ConnectError(f"{where} closed the connection without answering", address=address)
        return ConnectError(
            f"no complete answer from {where}: {_problem(exc, self.read_timeout)}", address=address
        )


class _KeptConnections:
    """The connections aiohttp handed a client, by host name and port, the last used last.

    aiohttp gives a request a connection from its pool, or a new one it made; the client
    notes each (its transport: still open or not, and where it goes) rather than read the
    pool, whose shape is aiohttp's own business.
    """

    def __init__(self) -> None:
        self.made = 0
        """How many new connections were handed out."""
        self._by_host: dict[tuple[str, int], dict[asyncio.BaseTransport, str]] = {}

    def handed(self, host: str, port: int, transport: asyncio.BaseTransport) -> None:
        """Note that a request to ``host`` on ``port`` goes out on ``transport``."""
        used = self._by_host.setdefault((host, port), {})
        address = used.pop(transport, None)
        if address is None:
            self.made += 1
            for closed in [other for other in used if other.is_closing()]:
                del used[closed]
            peer = transport.get_extra_info("peername")
            if peer is None:
                return  # closed already: nothing to keep
            address = str(peer[0])
        used[transport] = address

    def kept(self, host: str, port: int) -> str | None:
        """The address of the connection to ``host`` on ``port`` used last and still open."""
        for transport, address in reversed(self._by_host.get((host, port), {}).items()):
            if not transport.is_closing():
                return address
        return None

    def forget(self) -> None:
        """Forget every connection (they are being closed); the count stays."""
        self._by_host.clear()


class _PhoneConnector(aiohttp.TCPConnector):
    """aiohttp's TCP connector, telling the client which connection each request gets.

    ``connect`` is the connector's documented way out of its pool: what it returns, new or
    reused, carries the request, and its transport says where it goes and whether it is open.
    """

    def __init__(self, connections: _KeptConnections, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.phone_connections = connections

    async def connect(self, req: aiohttp.ClientRequest, *args: Any, **kwargs: Any) -> Connection:
        """A connection for ``req``, noted under the host name it is for (not its address)."""
        connection = await super().connect(req, *args, **kwargs)
        transport = connection.transport
        if transport is not None:
            host = req.server_hostname or req.host
            self.phone_connections.handed(host, req.port or 443, transport)
        return connection


class FileSink:
    """The file a download writes to, opened to keep its first ``keep`` bytes, and the
    SHA-256 of all of it, hashed as it is written (so verifying needs no second read)."""

    def __init__(self, path: Path, keep: int) -> None:
        # Writes land in the page cache; a thread hop per chunk would cost more than it saves.
        self._file: IO[bytes] = path.open("r+b" if keep else "wb")
        self._digest = hashlib.sha256()
        if keep:
            # What is kept is hashed first (resuming is rare; the bytes are in the cache).
            left = keep
            while left and (block := self._file.read(min(left, _HASH_BLOCK))):
                self._digest.update(block)
                left -= len(block)
        self._file.truncate(keep)
        self._file.seek(keep)

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._digest.update(data)

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of the file's bytes so far."""
        return self._digest.hexdigest()

    def close(self) -> None:
        self._file.close()


def _always(context: PhoneTLSContext) -> TLSContexts:
    return lambda offset: context


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, and whether there was more (then left unread)."""
    data = bytearray()
    if response.content_length is not None and response.content_length > limit:
        return bytes(data), True
    async for chunk in response.content.iter_chunked(CHUNK_SIZE):
        data += chunk
        if len(data) > limit:
            return bytes(data[:limit]), True
    return bytes(data), False


async def _discard(response: aiohttp.ClientResponse) -> None:
    """Read a small answer's body so its connection can carry the next leg, then let it go."""
    try:
        await _read_bounded(response, ERROR_BODY_LIMIT)
    finally:
        response.release()


def service_error(
    host: str,
    status: int,
    body: bytes,
    *,
    diagnostics: str | None,
    retry_after: float | None,
    challenges: Sequence[str],
    account: str | None,
) -> ServiceStatusError:
    """The error for an answer that is not what was asked for, with the service's reason
    (``X-Ms-Diagnostics``): CredentialsRefusedError when NTLM refused ``account``."""
    parsed = parse_diagnostics(diagnostics)
    reason = parsed.reason if parsed is not None else None
    kind = ServiceStatusError
    if status == 401 and account is not None:
        kind = CredentialsRefusedError
        message = f"the service refused the credentials of {account} ({status})"
        message += f": {reason}" if reason else ""
    else:
        message = f"{host} answered {describe_status(status, parsed)}"
        if status == 401 and ntlm.offered(challenges):
            message += " (the phone has no credentials to sign in with)"
    return kind(
        message,
        status=status,
        reason=reason,
        diagnostics=diagnostics,
        retry_after=retry_after,
        body=body,
    )


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _complete_at(response: aiohttp.ClientResponse, size: int) -> bool:
    """Whether a 416 says the file is ``size`` bytes long (so the phone already has it all)."""
    match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    return match is not None and int(match.group(1)) == size


def _content_range_total(
    response: aiohttp.ClientResponse, start: int, target: _Target
) -> int | None:
    """The full size from a 206's ``Content-Range``, which must start where the phone asked."""
    header = response.headers.get("Content-Range", "").strip()
    match = _CONTENT_RANGE.fullmatch(header)
    if match is None or int(match.group(1)) != start:
        raise MalformedAnswerError(
            f"{target.host} answered 206 for bytes {start}- with Content-Range {header!r}"
        )
    return None if match.group(3) == "*" else int(match.group(3))


def _connect_problem(where: str, error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return f"connection to {where} refused"
    if isinstance(error, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return f"{where} closed the connection before the TLS handshake finished"
    if isinstance(error, TimeoutError):
        return f"could not connect to {where}: timed out"
    return f"could not connect to {where}: {_problem(error)}"


def _problem(exc: BaseException, timeout: float | None = None) -> str:
    """An exception in a few plain words (aiohttp's messages can run long)."""
    if isinstance(exc, TimeoutError):
        return f"no data for {timeout:g} s" if timeout else "timed out"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the server stopped sending before the end of the answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__
