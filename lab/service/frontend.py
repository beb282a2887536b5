"""One front-end server: its internal and external site, its pool's file store and its mode.

A front end is in one of three modes. In production it serves everything. Entering
maintenance by draining makes it ``draining``: transfers already in progress go on, every
new request is answered 503 with ``Retry-After``, and it becomes ``maintenance`` when the
last transfer ends. Entering immediately goes straight to ``maintenance`` and resets every
open connection, transfers included. Which servers may enter maintenance (never the last
one in production without force) is the pool's rule, not this module's.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from aiohttp import web

from lab.clock import utc_now
from lab.events import EventBus
from lab.net.config import FrontEnd, LabConfig
from lab.net.guard import ConnectionBudget
from lab.service.audit import AuditRecord
from lab.service.files import ImageFiles
from lab.service.inventory import Sighting
from lab.service.logs import DeviceLogStore
from lab.service.ntlm import Directory, TargetNames
from lab.service.problems import DiagnosedRequestHandler, Diagnostic, Problem
from lab.service.sites import TLSSite
from lab.service.updates import AnswerCache, NoSnapshots, Snapshots
from lab.store.devconfig import DeviceUpdateConfig

DEFAULT_RETRY_AFTER = 60
DEFAULT_CHECK_INTERVAL = 86400
# aiohttp's per-connection options: no access log (the audit seam records requests); idle
# kept-alive connections are closed after [limits] keepalive_timeout (lab.service.sites).
HANDLER_OPTIONS: dict[str, Any] = {"access_log": None}
# What a site answers every request with (aiohttp's low-level server calls it).
SiteHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Mode(StrEnum):
    """Whether a front end takes new work."""

    PRODUCTION = "production"
    DRAINING = "draining"
    MAINTENANCE = "maintenance"


class Role(StrEnum):
    """Which of a front end's two sites: the internal one, or the external one (edge)."""

    INTERNAL = "internal"
    EXTERNAL = "external"


@dataclass
class ServiceContext:
    """What every front end of a pool shares: config, directory, decisions, events."""

    config: LabConfig
    directory: Directory
    events: EventBus
    # The process's connection budget, shared by every listener.
    budget: ConnectionBudget
    # The update store's snapshot in hand (lab.service.updates; set by the pool at start).
    snapshots: Snapshots = field(default_factory=NoSnapshots)
    # The check path's one cache of answers (per snapshot generation, bounded in bytes).
    answers: AnswerCache = field(default_factory=AnswerCache)
    retry_after: int = DEFAULT_RETRY_AFTER
    check_interval: int = DEFAULT_CHECK_INTERVAL
    # The port of every URL the service hands out (the lease's https_port); set at start.
    https_port: int = 0
    # Called with every request to the update endpoints (the audit log's seam).
    on_request: Callable[[AuditRecord], None] | None = None
    # Called with every answered update check (the phone inventory's seam); must be cheap.
    on_check: Callable[[Sighting], None] | None = None
    # The service's clock: the time of audit lines, sightings and log names (injectable).
    now: Callable[[], datetime] = utc_now
    # The address a connection's client has, from the peer the site sees: through the
    # edge, the client the edge forwards (set by the pool once the edge runs).
    origin: Callable[[str, int], str] = lambda host, port: host
    # The only peer a front end's external site admits (the edge's address), or anyone.
    edge_address: str | None = None

    def device_config(self) -> DeviceUpdateConfig:
        """The device-update configuration in force (log limits), from the snapshot in hand."""
        return self.snapshots.current().config

    def internal_url(self, pool: str, path: str) -> str:
        """An https URL at the FQDN of ``pool`` (what inside phones use)."""
        return f"https://{pool}:{self.https_port}{path}"

    def external_url(self, pool: str, path: str) -> str | None:
        """An https URL at the external web name the edge publishes ``pool`` under
        (through the edge), or None when the edge does not publish that pool."""
        if pool != self.config.edge.pool:
            return None
        return f"https://{self.config.edge.external_web}:{self.https_port}{path}"


@dataclass(eq=False)
class Transfer:
    """A download in progress."""

    peer: str
    path: str
    size: int
    started: float
    sent: int = 0

    def add(self, count: int) -> None:
        """Count bytes sent."""
        self.sent += count

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "peer": self.peer,
            "path": self.path,
            "size": self.size,
            "sent": self.sent,
            "started": self.started,
        }


@dataclass(frozen=True)
class ServerStatus:
    """A snapshot of one front end: mode, transfers in progress, open connections."""

    name: str
    fqdn: str
    mode: Mode
    transfers: tuple[dict[str, Any], ...]
    connections: int
    pool: str = ""  # the FQDN of the pool the front end is in
    # Per site: connections open, refused over the budget, cut for being too slow.
    limits: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def in_progress(self) -> int:
        """How many transfers are in progress."""
        return len(self.transfers)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "name": self.name,
            "fqdn": self.fqdn,
            "pool": self.pool,
            "mode": self.mode.value,
            "transfers": list(self.transfers),
            "connections": self.connections,
            "limits": self.limits,
        }


class FrontEndServer:
    """One front end: an internal and an external TLS site over one file store and its logs."""

    def __init__(
        self,
        front_end: FrontEnd,
        files: ImageFiles,
        context: ServiceContext,
        ssl_context: ssl.SSLContext,
        *,
        make_handler: Callable[[FrontEndServer, Role], SiteHandler],
        admit_internal: Callable[[str], bool],
        shutdown_timeout: float = 5.0,
        logs: DeviceLogStore | None = None,
    ) -> None:
        self.front_end = front_end
        self.ntlm_names = TargetNames.for_front_end(context.config, front_end)
        self.files = files
        # Device log uploads are taken only when there is a log store.
        self.logs = logs
        self.context = context
        self.ssl_context = ssl_context
        self.mode = Mode.PRODUCTION
        self.transfers: set[Transfer] = set()
        # Since start: image bytes sent, and transfers that sent their file whole or not.
        self.bytes_sent = 0
        self.transfers_done = 0
        self.transfers_cut = 0
        self.internal: TLSSite | None = None
        self.external: TLSSite | None = None
        self._make_handler = make_handler
        self._admit_internal = admit_internal
        self._shutdown_timeout = shutdown_timeout
        self._runners: list[web.BaseRunner] = []
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def name(self) -> str:
        """The front end's short name."""
        return self.front_end.name

    async def start(self, internal_sock: socket.socket, external_sock: socket.socket) -> None:
        """Serve both sites on the given listening sockets."""
        try:
            self.internal = await self._site(
                self._make_handler(self, Role.INTERNAL), internal_sock, admit=self._admit_internal
            )
            self.external = await self._site(
                self._make_handler(self, Role.EXTERNAL),
                external_sock,
                admit=self._admit_external,
                per_address=False,
            )
        except BaseException:
            await self.stop()
            raise

    async def _site(
        self,
        handler: SiteHandler,
        sock: socket.socket,
        admit: Callable[[str], bool] | None = None,
        per_address: bool = True,
    ) -> TLSSite:
        # aiohttp's low-level server: the handler routes itself (lab.service.handlers).
        runner = web.ServerRunner(web.Server(handler), shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        self._runners.append(runner)
        site = TLSSite(
            runner,
            sock,
            self.ssl_context,
            limits=self.context.config.limits,
            budget=self.context.budget,
            per_address=per_address,
            admit=admit,
            on_refused=self._refused,
            handler_class=DiagnosedRequestHandler,
            handler_options=HANDLER_OPTIONS,
        )
        await site.start()
        return site

    def _admit_external(self, peer: str) -> bool:
        # Phones reach the external site through the edge only, as behind a reverse proxy;
        # anyone else is dropped before TLS, as the internal site drops outside peers.
        edge = self.context.edge_address
        return edge is None or peer == edge

    def _refused(self, peer: str) -> None:
        self.context.events.publish("service.connection_refused", server=self.name, peer=peer)

    async def stop(self) -> None:
        """Stop both sites; transfers still running after the shutdown timeout are cut."""
        runners, self._runners = self._runners, []
        await asyncio.gather(*(runner.cleanup() for runner in runners))

    @property
    def sites(self) -> tuple[TLSSite, ...]:
        """The sites that are up."""
        return tuple(site for site in (self.internal, self.external) if site is not None)

    def site(self, role: Role) -> TLSSite:
        """The site for ``role``."""
        site = self.internal if role is Role.INTERNAL else self.external
        if site is None:
            raise ConnectionResetError(f"the {role} site of {self.name} is not running")
        return site

    def ensure_in_service(self) -> None:
        """Refuse new work with 503 and Retry-After unless in production."""
        if self.mode is not Mode.PRODUCTION:
            raise Problem(
                Diagnostic.IN_MAINTENANCE,
                f"server {self.name} is in maintenance ({self.mode}); try another server",
                headers={"Retry-After": str(self.context.retry_after)},
                close=True,
            )

    @contextmanager
    def transfer(self, peer: str, path: str, size: int) -> Iterator[Transfer]:
        """Track a download for the length of the block."""
        item = Transfer(peer, path, size, started=self.context.now().timestamp())
        self.transfers.add(item)
        self._drained.clear()
        try:
            yield item
        finally:
            self.bytes_sent += item.sent
            if item.sent >= item.size:
                self.transfers_done += 1
            else:
                self.transfers_cut += 1
            self.transfers.discard(item)
            if not self.transfers:
                self._drained.set()
                if self.mode is Mode.DRAINING:
                    self.mode = Mode.MAINTENANCE
                    self.context.events.publish("maintenance.drained", server=self.name)

    def enter_maintenance(self, immediate: bool) -> None:
        """Drain (transfers finish) or stop at once (every connection reset)."""
        if immediate:
            self.mode = Mode.MAINTENANCE
            for site in self.sites:
                site.reset_all()
        elif self.mode is Mode.PRODUCTION:
            self.mode = Mode.DRAINING if self.transfers else Mode.MAINTENANCE

    def exit_maintenance(self) -> None:
        """Back to production."""
        self.mode = Mode.PRODUCTION

    async def wait_drained(self) -> None:
        """Return once no transfer is in progress."""
        await self._drained.wait()

    def status(self) -> ServerStatus:
        """A snapshot of mode, transfers and connections."""
        return ServerStatus(
            name=self.name,
            fqdn=self.front_end.fqdn,
            pool=self.front_end.pool,
            mode=self.mode,
            transfers=tuple(t.as_dict() for t in self.transfers),
            connections=sum(len(site.connections) for site in self.sites),
            limits={
                site_name: site.snapshot()
                for site_name, site in (("internal", self.internal), ("external", self.external))
                if site is not None
            },
        )
