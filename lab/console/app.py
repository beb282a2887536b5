"""The console's web server: one aiohttp application on 127.0.0.1, next to the lab it shows.

``Console`` starts (client session to the lab's admin API, the event relay, the web site)
and stops as any lab part does (lab.lifecycle). It binds 127.0.0.1 only, on the config's
``ports.console`` or the port it is given (0: any free one, read back as ``port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import socket
from importlib import resources
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from lab.console import views
from lab.console.guard import STATIC_PREFIX, Guard, security_headers
from lab.console.labapi import LabAPI
from lab.console.live import Relay
from lab.console.panels import Sources
from lab.console.training import Training
from lab.errors import AdminError, PortInUseError
from lab.lifecycle import Service
from lab.net.config import LabConfig
from lab.ops.demo import DEFAULT_SCALE

HOST = "127.0.0.1"
UPLOAD_MAX = 256 * 1024 * 1024
"""Bytes a request to the console may carry (a vendor cab uploaded for import)."""
CONNECT_WAIT = 5.0
"""Seconds the console waits at start for the lab's event stream."""
SHUTDOWN_TIMEOUT = 2.0
"""Seconds the server waits for open pages' streams when it stops."""
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}


class StaticFiles:
    """The console's style sheet and script, read once from the package (no CDN, offline)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        for entry in resources.files("lab.console").joinpath("static").iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in STATIC_TYPES:
                body = entry.read_bytes()
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                self.files[entry.name] = (body, STATIC_TYPES[suffix], etag)

    async def serve(self, request: web.Request) -> web.Response:
        """GET /static/NAME: one of the package's files, nothing else."""
        found = self.files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="no such file")
        body, content_type, etag = found
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=content_type, headers=headers)


class Console(Service):
    """The lab console for one running lab, reached through its admin API."""

    def __init__(
        self,
        api: LabAPI,
        config: LabConfig,
        *,
        port: int | None = None,
        demo_scale: float = DEFAULT_SCALE,
    ) -> None:
        self.api = api
        self.config = config
        self.relay = Relay(api)
        self.training = Training(self.relay, demo_scale)
        self.sources = Sources(api=api, config=config, relay=self.relay, training=self.training)
        self.guard = Guard()
        self.clock: dict[str, Any] | None = None
        self._port = config.ports.console if port is None else port
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        """The console's aiohttp application."""
        app = web.Application(middlewares=[self.guard.middleware], client_max_size=UPLOAD_MAX)
        app[views.SERVED_KEY] = views.Served(self.sources, self.guard, self.clock)
        aiohttp_jinja2.setup(
            app,
            loader=jinja2.PackageLoader("lab.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        app.on_response_prepare.append(security_headers)
        app.router.add_get(STATIC_PREFIX + "{name}", StaticFiles().serve)
        views.add_routes(app)
        return app

    async def start(self) -> None:
        """Reach the lab, follow its events, and serve the page on 127.0.0.1."""
        await self.api.start()
        try:
            try:
                self.clock = (await self.api.get("/v1/status")).get("clock")
            except AdminError:
                self.clock = None  # the page still comes up, and says the lab is away
            await self.relay.start()
            # Pages opened from now on see the lab live; a lab that is away only makes the
            # page say so, and the relay keeps trying.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.relay.wait_connected(), CONNECT_WAIT)
            runner = web.AppRunner(
                self.make_app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
            )
            await runner.setup()
            self._runner = runner
            sock = self._bind()
            site = web.SockSite(runner, sock)
            await site.start()
            self.guard.bind(sock.getsockname()[1])
        except BaseException:
            await self.stop()
            raise

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, self._port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {self._port} on {HOST} (the console: ports.console in the config, "
                    "or --port) is already in use; is another console running? "
                    "--port 0 picks any free port"
                ) from None
            raise
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def stop(self) -> None:
        """Stop the runs, end every open page's stream, stop serving, close the connection
        to the lab."""
        await self.training.stop()
        await self.relay.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.api.stop()

    @property
    def port(self) -> int:
        """The port the console serves on."""
        return self.guard.port

    @property
    def url(self) -> str:
        """The console's address (its pages need a session: see ``login_url``)."""
        return self.guard.origin + "/"

    def login_url(self) -> str:
        """A fresh login link for one browser (it works once)."""
        return self.guard.login_url()
