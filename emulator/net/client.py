"""What a phone asks of HTTPS, as an interface: the check and sign-in, downloads, log uploads.

A driver is handed an `HTTPSClient`; emulator.net.https has the real one, over real
sockets from the phone's own address. Every failure is one of the emulator's errors:
ServiceStatusError (with the service's reason) for an error answer, ConnectError,
TLSError or CertificateError when no answer came, ResolutionError when the name did not
resolve, DownloadInterruptedError when a transfer was cut.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from emulator.events import Credentials

Progress = Callable[[int, int | None], None]
"""Called as a download grows: bytes in the file so far, and the full size when known."""


@dataclass(frozen=True)
class Answer:
    """A successful answer, read whole: status, body and content type."""

    status: int
    body: bytes
    content_type: str | None


@dataclass(frozen=True)
class Download:
    """How a download ended: the file's size now, the bytes received this time, the ETag."""

    status: int
    """200 (the whole file), 206 (appended to what the phone had) or 416 (it had it all)."""
    size: int
    received: int
    etag: str | None
    sha256: str | None = None
    """The SHA-256 of the whole file as written, hashed as it was (None if not hashed)."""

    @property
    def resumed(self) -> bool:
        """Whether the bytes the phone already had were kept."""
        return self.status in (206, 416)


class HTTPSClient(Protocol):
    """What a phone asks of HTTPS: the check and sign-in, file downloads, log uploads."""

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
        ...

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
        """GET ``url`` into ``path``, resuming from ``offset`` when ``etag`` still holds."""
        ...

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
        ...

    def kept_address(self, host: str, port: int) -> str | None:
        """The address of a kept-alive connection the client holds to ``host`` on ``port``."""
        ...

    async def drop_connections(self) -> None:
        """Close every kept-alive connection (the phone restarts, or its clock changed)."""
        ...

    async def close(self) -> None:
        """Close the client and its connections."""
        ...
