"""Test-side clients of the update service: a small HTTP/1.1 client over TLS, NTLM, curl.

The client is deliberately raw (paths sent exactly as given, the connection kept open,
reading under the test's control) so tests can send traversal paths, keep a connection
alive across a firewall change, cut a download half way or read slowly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import random
import socket
import ssl
from dataclasses import dataclass

import spnego

from lab.service import ServicePool

CURL = "/usr/bin/curl"

APPROVED = "4.0.7577.4372"
PENDING = "4.0.7577.4400"
IMAGE_SIZE = 8 * 1024 * 1024
TEST_DEVICE_SERIAL = "CX6A0000FF"
INSIDE_PHONE = "127.10.0.50"
OUTSIDE_PHONE = "127.20.0.50"


@dataclass(frozen=True)
class Image:
    """A file the fixtures put in the file stores."""

    relative: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def layout(version: str, name: str) -> str:
    return f"UCPhone/Polycom/CX600/A/ENU/{version}/CPE/{name}"


def make_images(version: str, size: int) -> list[Image]:
    image = random.Random(version).randbytes(size)
    catalog = f"DEVICE-UPDATE-CATALOG 1\nversion: {version}\n".encode()
    return [
        Image(layout(version, "CPE.cat"), catalog),
        Image(layout(version, "CPE.nbt"), image),
    ]


APPROVED_IMAGES = make_images(APPROVED, IMAGE_SIZE)
PENDING_IMAGES = make_images(PENDING, 64 * 1024)

CHECK_BODY = """<DeviceUpdateRequest>
  <DeviceType>UCPhone</DeviceType><Vendor>{vendor}</Vendor><Model>{model}</Model>
  <Revision>A</Revision><Locale>ENU</Locale>
  <MacAddress>{mac}</MacAddress><SerialNumber>{serial}</SerialNumber>
  <Modules><Module name="CPE.nbt" version="{version}" timestamp="2012-11-02T10:00:00Z"/></Modules>
  {user}
</DeviceUpdateRequest>"""


def check_body(
    *,
    model: str = "CX600",
    vendor: str = "Polycom",
    version: str = "4.0.7577.4366",
    mac: str = "00-04-F2-00-00-01",
    serial: str = "CX6A000001",
    user: str | None = None,
) -> bytes:
    """A DeviceUpdateRequest as a phone sends it."""
    user_xml = f"<LastSignedInUser>{user}</LastSignedInUser>" if user else ""
    return CHECK_BODY.format(
        vendor=vendor, model=model, version=version, mac=mac, serial=serial, user=user_xml
    ).encode()


@dataclass
class Response:
    """An HTTP response as read off the wire."""

    status: int
    headers: dict[str, str]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class HttpConnection:
    """One HTTPS connection from a chosen source address, kept alive between requests."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    host: str

    @classmethod
    async def open(
        cls,
        address: tuple[str, int],
        host: str,
        context: ssl.SSLContext,
        *,
        source: str,
        receive_buffer: int | None = None,
    ) -> HttpConnection:
        if receive_buffer is None:
            reader, writer = await asyncio.open_connection(
                *address,
                ssl=context,
                server_hostname=host,
                local_addr=(source, 0),
                limit=16 * 1024,
            )
            return cls(reader, writer, host)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # A small window keeps a slow reader's download really in progress.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.bind((source, 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        # From here the loop's transport owns the socket and closes it, also on failure.
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=context, server_hostname=host, limit=16 * 1024
        )
        return cls(reader, writer, host)

    async def send(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        headers = headers or {}
        framing = {} if "Transfer-Encoding" in headers else {"Content-Length": str(len(body))}
        merged = {**framing, **headers}
        lines += [f"{name}: {value}" for name, value in merged.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()

    async def read_head(self) -> Response:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = raw.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return Response(int(status_line.split()[1]), headers)

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        await self.send(method, path, headers, body)
        response = await self.read_head()
        length = int(response.header("content-length") or 0)
        if method != "HEAD" and length:
            response.body = await self.reader.readexactly(length)
        return response

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def ntlm_request(
    conn: HttpConnection,
    method: str,
    path: str,
    user: str,
    password: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Response:
    """Sign in with NTLM on ``conn`` (NEGOTIATE, CHALLENGE, AUTHENTICATE) carrying the request."""
    client = spnego.client(
        user, password, protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm
    )
    negotiate = client.step()
    assert negotiate is not None
    first = await conn.request(
        method, path, {**(headers or {}), "Authorization": "NTLM " + _b64(negotiate)}
    )
    challenge = first.header("www-authenticate") or ""
    if first.status != 401 or not challenge.startswith("NTLM "):
        return first
    answer = client.step(base64.b64decode(challenge[5:]))
    assert answer is not None
    return await conn.request(
        method, path, {**(headers or {}), "Authorization": "NTLM " + _b64(answer)}, body
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class CurlResult:
    """What curl did: its exit code, the HTTP status it saw (0 for none), headers and body."""

    returncode: int
    status: int
    output: str
    stderr: str


async def curl(
    url: str,
    *,
    source: str,
    resolve: str,
    cacert: str,
    data: bytes | None = None,
    extra: tuple[str, ...] = (),
) -> CurlResult:
    """Run curl without blocking the loop the service runs on."""
    args = [
        CURL,
        "-sS",
        "--max-time",
        "20",
        "--interface",
        source,
        "--resolve",
        resolve,
        "--cacert",
        cacert,
        "-i",
        "-w",
        "\n%{http_code}",
        *extra,
    ]
    if data is not None:
        args += ["-H", "Content-Type: text/xml", "--data-binary", "@-"]
    proc = await asyncio.create_subprocess_exec(
        *args,
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(data)
    text = out.decode("utf-8", "replace")
    body, _, code = text.rpartition("\n")
    return CurlResult(proc.returncode or 0, int(code or 0), body, err.decode())


class Phones:
    """Connections as phones make them: inside to a front end, outside through the edge."""

    def __init__(self, pool: ServicePool, context: ssl.SSLContext) -> None:
        self.pool = pool
        self.context = context
        self.open: list[HttpConnection] = []

    async def inside(
        self, server: str = "fe01", *, source: str = INSIDE_PHONE, receive_buffer: int | None = None
    ) -> HttpConnection:
        # A phone inside reaches a front end by its pool's FQDN (what the DNS and in-band
        # provisioning give it), which that front end's certificate carries.
        front_end = self.pool.server(server)
        site = front_end.internal
        assert site is not None
        return await self._open(site.address, front_end.front_end.pool, source, receive_buffer)

    async def outside(
        self, *, source: str = OUTSIDE_PHONE, receive_buffer: int | None = None
    ) -> HttpConnection:
        assert self.pool.edge is not None
        host = self.pool.config.edge.external_web
        return await self._open(self.pool.edge.address, host, source, receive_buffer)

    async def _open(
        self, address: tuple[str, int], host: str, source: str, receive_buffer: int | None
    ) -> HttpConnection:
        conn = await HttpConnection.open(
            address, host, self.context, source=source, receive_buffer=receive_buffer
        )
        self.open.append(conn)
        return conn

    async def close(self) -> None:
        for conn in self.open:
            await conn.close()
