"""Helpers for the network adapter tests: addresses, and a real TLS web server that records.

Phones bind 127.10.0.50 (inside the default lab's firewall) or 127.20.0.50 (outside);
test servers bind a front end's address (127.10.0.11) on a free port.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web
from aiohttp.typedefs import Handler

INSIDE_PHONE = "127.10.0.50"
OUTSIDE_PHONE = "127.20.0.50"
FE01 = "127.10.0.11"
FE02 = "127.10.0.12"
UCUPDATES = "ucupdates-r2.contoso.test"


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    host: str | None
    peer: tuple[str, int]
    headers: dict[str, str]
    body: bytes


@dataclass
class WebServer:
    """A real aiohttp server over TLS on one loopback address that records every request."""

    app: web.Application
    host: str
    ssl_context: ssl.SSLContext | None
    requests: list[Seen] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    async def __aenter__(self) -> WebServer:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self.requests.append(
                Seen(
                    request.method,
                    request.path,
                    request.headers.get("Host"),
                    (str(peer[0]), int(peer[1])) if peer else ("", 0),
                    dict(request.headers),
                    await request.read(),
                )
            )
            return await handler(request)

        self.app.middlewares.append(record)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str, host: str = UCUPDATES) -> str:
        """An https URL for ``path`` under ``host`` on this server's port."""
        return f"https://{host}:{self.port}{path}"
