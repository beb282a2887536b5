"""Clients the hostile-traffic battery attacks a running lab with: HTTP/1.1 over TLS, NTLM.

Deliberately small and raw: one TLS connection bound to a chosen source address, requests
written as given, answers read with the standard library's HTTP parser, so a test controls
which connection carries which step of NTLM and can hold a request half sent.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import spnego
from labprocess import LabProcess


def check_body(
    mac: str = "00-04-F2-00-00-01",
    serial: str = "CX6A000001",
    *,
    version: str = "4.0.7577.4366",
    user: str | None = None,
) -> bytes:
    """An update check body as a CX600 sends it."""
    signed_in = f"<LastSignedInUser>{user}</LastSignedInUser>" if user else ""
    return (
        "<DeviceUpdateRequest><DeviceType>UCPhone</DeviceType><Vendor>Polycom</Vendor>"
        "<Model>CX600</Model><Revision>A</Revision><Locale>ENU</Locale>"
        f"<MacAddress>{mac}</MacAddress><SerialNumber>{serial}</SerialNumber>"
        f'<Modules><Module name="CPE.nbt" version="{version}"/></Modules>'
        f"{signed_in}</DeviceUpdateRequest>"
    ).encode()


@dataclass
class Answer:
    """One HTTP answer."""

    status: int
    headers: Message
    body: bytes

    def header(self, name: str) -> str:
        """A header's value, "" when absent."""
        return self.headers.get(name, "")


def client_context(lab: LabProcess) -> ssl.SSLContext:
    """A TLS client context trusting the lab's CA (from its lease)."""
    lease = json.loads((lab.state / "lease.json").read_text())
    return ssl.create_default_context(cafile=lease["ca_cert"])


class Connection:
    """One kept-alive HTTPS connection from ``source`` to ``address``."""

    def __init__(
        self,
        lab: LabProcess,
        address: tuple[str, int],
        source: str,
        hostname: str,
        *,
        timeout: float = 10.0,
    ) -> None:
        raw = socket.create_connection(address, timeout=timeout, source_address=(source, 0))
        # The handshake is asked for explicitly: wrap_socket skips it, and hands back an
        # unconnected socket, when the server's reset has already arrived.
        sock = client_context(lab).wrap_socket(
            raw, server_hostname=hostname, do_handshake_on_connect=False
        )
        try:
            sock.do_handshake()
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.hostname = hostname

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        """Write a request (headers and the whole body)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.hostname}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def read(self) -> Answer:
        """Read one answer."""
        response = http.client.HTTPResponse(self.sock, method="POST")
        response.begin()
        return Answer(response.status, response.msg, response.read())

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Answer:
        """Send a request and read its answer."""
        self.send(method, path, headers or {}, body)
        return self.read()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reset_before_tls(address: tuple[str, int], source: str, wait: float = 5.0) -> bool:
    """Whether a TCP connection from ``source`` is reset before a byte of TLS: the client
    sends nothing and waits; a server doing TLS would wait too (its handshake timeout).

    Plain sockets on purpose: a TLS client socket that meets the reset while it is being
    wrapped can be left half made by the ssl module, unclosed.
    """
    try:
        with socket.create_connection(address, timeout=wait, source_address=(source, 0)) as raw:
            raw.recv(1)  # data or a clean close: no reset
    except ConnectionResetError:  # at the connect already, or while waiting
        return True
    except TimeoutError:
        pass
    return False


def through_edge(lab: LabProcess, source: str) -> Connection:
    """A connection from outside address ``source`` to the edge, for the external web name."""
    config_text = lab.config.read_text()
    external_web = "webext.contoso.test" if "webext" in config_text else "localhost"
    return Connection(lab, lab.endpoint("edge", "https"), source, external_web)


def ntlm_request(
    conn: Connection,
    method: str,
    path: str,
    user: str,
    password: str,
    *,
    body: bytes = b"",
) -> Answer:
    """Sign in with NTLM on ``conn`` (pyspnego as the client) carrying the request."""
    client = spnego.client(
        user, password, protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm
    )
    negotiate = client.step()
    assert negotiate is not None
    first = conn.request(method, path, {"Authorization": "NTLM " + _b64(negotiate)}, body)
    challenge = first.header("WWW-Authenticate")
    if first.status != 401 or not challenge.startswith("NTLM "):
        return first
    answer = client.step(base64.b64decode(challenge[5:]))
    assert answer is not None
    return conn.request(method, path, {"Authorization": "NTLM " + _b64(answer)}, body)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audit_lines(lab: LabProcess) -> list[str]:
    """Every audit line every front end has written so far (headers left out)."""
    lines: list[str] = []
    for path in sorted(Path(lab.state, "servers").glob("*/AuditLogs/*.log")):
        text = path.read_text(encoding="utf-8")
        lines += [line for line in text.splitlines()[1:] if line]
    return lines
