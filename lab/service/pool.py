"""The Device Update Web service of the lab's pools: every front end, the edge, maintenance.

Start-up binds every listener before serving anything, so a lab either comes up whole
or not at all. Ports follow the config; with port 0 a role's port is chosen once and
every front end of that role listens on the same number (``bind_same_port``), and when
the edge's port equals the internal one (as in the default lab, both 10443, or both 0)
the edge shares that number too, so the one ``https_port`` of the lease reaches the
internal sites inside and the edge outside.

This object owns the rules that need several servers at once: the edge only sends new
connections to servers of the pool it publishes that are in production, and the last
server in production of a pool can be taken out only with ``force``. Firewall changes
are applied to open connections the moment they are published. Changes are published on
the EventBus as ``maintenance.entered``, ``maintenance.drained``, ``maintenance.exited``,
``service.started`` and ``service.stopped``.

A pool that opens its own store also records the phone inventory (lab.inventory: checks
are gathered in memory and written in batches) and reads the device-update configuration
for log uploads from it. Every front end of a pool serves the pool's one file store
(``<state>/pools/<pool>/DeviceUpdateFiles``); each front end keeps device logs under
``<state>/servers/<fe>/DeviceLogs`` (lab.service.logs).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from lab.clock import utc_now
from lab.errors import ConfigError, ServiceError
from lab.events import Event, EventBus
from lab.lifecycle import Service
from lab.net.config import LabConfig, Lockout
from lab.net.firewall import FirewallPolicy
from lab.net.guard import ConnectionBudget
from lab.net.pki import LabPKI
from lab.service.audit import AuditRecord
from lab.service.edge import Edge, Upstream
from lab.service.files import ImageFiles
from lab.service.frontend import (
    DEFAULT_CHECK_INTERVAL,
    DEFAULT_RETRY_AFTER,
    FrontEndServer,
    Mode,
    ServerStatus,
    ServiceContext,
)
from lab.service.handlers import make_handler
from lab.service.inventory import FLUSH_INTERVAL, InventoryRecorder
from lab.service.logs import DeviceLogStore, log_store_path
from lab.service.ntlm import Directory
from lab.service.sites import bind_same_port
from lab.service.updates import AnswerCache, NoSnapshots, SnapshotWatcher
from lab.store import filestore
from lab.store.store import Store


class ServerCertificate(Protocol):
    """A certificate and key that can make a TLS server context (lab.net.pki.CertPair)."""

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context presenting the certificate."""
        ...


class CertificateSource(Protocol):
    """Where the pool gets its TLS certificates and the CA the edge trusts (LabPKI)."""

    def server(self, name: str) -> ServerCertificate:
        """The certificate of front end ``name``."""
        ...

    def edge(self) -> ServerCertificate:
        """The edge's certificate (for the external web name)."""
        ...

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context trusting the CA that issued the front ends' certificates."""
        ...


def file_store_path(state_dir: Path, pool: str) -> Path:
    """``<state>/pools/<pool FQDN>/DeviceUpdateFiles``: the file store of one pool, which
    every front end of the pool serves."""
    return filestore.FileStore(state_dir, pool).root


class ServicePool(Service):
    """Every front end of the pool (internal and external site each) and the edge.

    Checks are decided on snapshots of the update store of ``state_dir``
    (lab.service.updates); ``refresh_store`` takes a change made in this process at once.
    Every certificate, and the CA the edge trusts, come from ``pki``.
    """

    def __init__(
        self,
        config: LabConfig,
        state_dir: Path,
        *,
        firewall: FirewallPolicy,
        pki: CertificateSource | None = None,
        events: EventBus | None = None,
        lockout: Lockout | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_after: int = DEFAULT_RETRY_AFTER,
        check_interval: int = DEFAULT_CHECK_INTERVAL,
        on_request: Callable[[AuditRecord], None] | None = None,
        shutdown_timeout: float = 5.0,
        now: Callable[[], datetime] = utc_now,
        inventory_interval: float = FLUSH_INTERVAL,
        budget: ConnectionBudget | None = None,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.firewall = firewall
        self.events = events or firewall.events
        self.pki: CertificateSource = pki if pki is not None else LabPKI(config)
        self.directory = Directory(
            config.users,
            lockout=lockout or config.lockout,
            clock=clock,
            now=now,
            on_lockout=self._locked_out,
        )
        self._store: Store | None = None
        self._clock = clock
        self.snapshots: SnapshotWatcher | None = None
        self.context = ServiceContext(
            config=config,
            directory=self.directory,
            events=self.events,
            retry_after=retry_after,
            check_interval=check_interval,
            on_request=on_request,
            now=now,
            budget=budget or ConnectionBudget.of_its_own(config.limits),
            origin=self._origin,
        )
        self.inventory: InventoryRecorder | None = None
        self._inventory_interval = inventory_interval
        self.servers: dict[str, FrontEndServer] = {}
        self.edge: Edge | None = None
        self._shutdown_timeout = shutdown_timeout
        self._running = False
        self._unsubscribe: Callable[[], None] | None = None
        # Every TLS context of the running pool: the front ends', the edge's two sides.
        self._tls_contexts: list[ssl.SSLContext] = []

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every listener, then serve; on any failure nothing stays bound."""
        if self._running or self.servers:
            raise ServiceError("the service pool is already running")
        contexts = await asyncio.to_thread(self._server_contexts)
        listener, trust = await asyncio.to_thread(self._edge_contexts)
        internal, external, edge_sock = self._bind()
        self._tls_contexts = [*contexts, listener, trust]
        try:
            store = self._store = Store.open(self.state_dir, pool_of=self.config.pool_of())
            self.snapshots = SnapshotWatcher(store, clock=self._clock, events=self.events)
            await self.snapshots.start()
            self.context.snapshots = self.snapshots
            self.context.answers = AnswerCache()
            self.inventory = InventoryRecorder(
                self.state_dir, events=self.events, interval=self._inventory_interval
            )
            await self.inventory.start()
            self.context.on_check = self.inventory.record
            self.context.https_port = internal[0].getsockname()[1]
            for fe, isock, esock, tls in zip(
                self.config.front_ends, internal, external, contexts, strict=True
            ):
                server = FrontEndServer(
                    fe,
                    ImageFiles(file_store_path(self.state_dir, fe.pool)),
                    self.context,
                    tls,
                    make_handler=make_handler,
                    admit_internal=self.firewall.is_inside,
                    shutdown_timeout=self._shutdown_timeout,
                    logs=DeviceLogStore(
                        log_store_path(self.state_dir, fe.name),
                        server=fe.name,
                        events=self.events,
                        now=self.context.now,
                        total=self.config.limits.device_logs_per_front_end,
                    ),
                )
                self.servers[fe.name] = server
                await server.start(isock, esock)
            self.edge = Edge(
                edge_sock,
                self._production,
                source=str(self.config.edge.address),
                certificate=listener,
                trust=trust,
                events=self.events,
                budget=self.context.budget,
                limits=self.config.limits,
                retry_after=self.context.retry_after,
                shutdown_timeout=self._shutdown_timeout,
            )
            self.context.edge_address = self.edge.source
            await self.edge.start()
        except BaseException:
            await self.stop()
            for sock in (*internal, *external, edge_sock):
                sock.close()
            raise
        self._unsubscribe = self.firewall.events.subscribe(
            self._on_event, kinds=("firewall.changed",)
        )
        self._running = True
        self.events.publish("service.started", endpoints=self.endpoints())

    async def stop(self) -> None:
        """Stop the edge and every front end."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.edge is not None:
            await self.edge.stop()
            self.edge = None
        servers, self.servers = list(self.servers.values()), {}
        # Concurrently: each waits up to the shutdown timeout for its transfers.
        await asyncio.gather(*(server.stop() for server in servers))
        if self.inventory is not None:
            # After the servers: no check can come in, so the last flush is complete.
            self.context.on_check = None
            await self.inventory.stop()
            self.inventory = None
        if self.snapshots is not None:
            await self.snapshots.stop()
            self.snapshots = None
            self.context.snapshots = NoSnapshots()
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._running:
            self._running = False
            self.events.publish("service.stopped")

    def log_keys(self, path: Path | None) -> None:
        """Write the TLS session keys of every front end and of the edge (towards phones and
        towards the front ends) to ``path`` in the NSS key log format, from the next
        handshake on; None stops it. With these keys a capture of the traffic decrypts."""
        for context in self._tls_contexts:
            context.keylog_filename = None if path is None else str(path)  # type: ignore[assignment]

    def _server_contexts(self) -> list[ssl.SSLContext]:
        return [self.pki.server(fe.name).server_context() for fe in self.config.front_ends]

    def _edge_contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        return self.pki.edge().server_context(), self.pki.client_context()

    def _bind(self) -> tuple[list[socket.socket], list[socket.socket], socket.socket]:
        ports = self.config.ports
        hosts = [str(fe.address) for fe in self.config.front_ends]
        edge_host = str(self.config.edge.address)
        shared = ports.edge == ports.internal
        internal = bind_same_port(hosts + ([edge_host] if shared else []), ports.internal)
        try:
            external = bind_same_port(hosts, ports.external)
        except BaseException:
            for sock in internal:
                sock.close()
            raise
        if shared:
            edge_sock = internal.pop()
        else:
            try:
                edge_sock = bind_same_port([edge_host], ports.edge)[0]
            except BaseException:
                for sock in (*internal, *external):
                    sock.close()
                raise
        return internal, external, edge_sock

    # -- what is running -------------------------------------------------------------------

    @property
    def https_port(self) -> int:
        """The port of every URL the service hands out (the lease's https_port)."""
        return self.context.https_port

    def server(self, name: str) -> FrontEndServer:
        """The running front end ``name`` (short name or FQDN)."""
        try:
            short = self.config.front_end(name.lower()).name
        except ConfigError:
            short = ""
        server = self.servers.get(short)
        if server is None:
            known = ", ".join(self.servers) or "none running"
            raise ServiceError(f"no front end {name!r} in the running pool (known: {known})")
        return server

    def endpoints(self) -> dict[str, dict[str, str]]:
        """Every listener, as ``{"fe01": {"internal": "127.10.0.11:10443", ...}, "edge": ...}``."""
        result: dict[str, dict[str, str]] = {}
        for name, server in self.servers.items():
            result[name] = {
                site_name: f"{site.address[0]}:{site.address[1]}"
                for site_name, site in (
                    ("internal", server.internal),
                    ("external", server.external),
                )
                if site is not None
            }
        if self.edge is not None:
            result["edge"] = {"https": f"{self.edge.address[0]}:{self.edge.address[1]}"}
        return result

    def status(self) -> dict[str, ServerStatus]:
        """A snapshot of every front end (mode, transfers in progress, connections)."""
        return {name: server.status() for name, server in self.servers.items()}

    def snapshot(self) -> dict[str, Any]:
        """The pool's state as JSON-ready data."""
        return {
            "https_port": self.https_port,
            "servers": {name: status.as_dict() for name, status in self.status().items()},
            "edge": self.edge.snapshot() if self.edge else {},
            "connections": self.context.budget.snapshot(),
            "ntlm": self.directory.snapshot(),
            "store": self._store_status(),
        }

    def _store_status(self) -> dict[str, int]:
        """The snapshot checks are decided on, and what the answer cache holds."""
        if self.snapshots is None:
            return {}
        snapshot = self.snapshots.current()
        answers = self.context.answers
        return {
            "generation": snapshot.generation,
            "rules": len(snapshot.rules),
            "test_devices": len(snapshot.test_macs) + len(snapshot.test_serials),
            "answers_kept": len(answers),
            "answer_bytes": answers.bytes,
        }

    # -- maintenance -------------------------------------------------------------------------

    def enter_maintenance(
        self, server: str, immediate: bool = False, force: bool = False
    ) -> ServerStatus:
        """Take ``server`` out of production: drain, or ``immediate``ly cut what is running.

        The last server in production is refused (ServiceError) unless ``force``.
        """
        target = self.server(server)
        if target.mode is Mode.PRODUCTION and not force:
            pool = target.front_end.pool
            others = [
                s.name
                for s in self.servers.values()
                if s is not target and s.front_end.pool == pool and s.mode is Mode.PRODUCTION
            ]
            if not others:
                raise ServiceError(
                    f"{target.name} is the last server in production in pool {pool}; "
                    "phones would have nowhere to go (force to enter maintenance anyway)"
                )
        in_progress = len(target.transfers)
        target.enter_maintenance(immediate)
        status = target.status()
        self.events.publish(
            "maintenance.entered",
            server=target.name,
            mode=status.mode.value,
            immediate=immediate,
            force=force,
            transfers=in_progress,
        )
        return status

    def exit_maintenance(self, server: str) -> ServerStatus:
        """Put ``server`` back into production."""
        target = self.server(server)
        target.exit_maintenance()
        self.events.publish("maintenance.exited", server=target.name)
        return target.status()

    async def wait_drained(self, server: str) -> ServerStatus:
        """Wait until ``server`` has no transfer in progress."""
        target = self.server(server)
        await target.wait_drained()
        return target.status()

    def _production(self) -> list[Upstream]:
        return [
            Upstream(
                name=server.name,
                fqdn=server.front_end.fqdn,
                host=server.external.address[0],
                port=server.external.address[1],
            )
            for server in self.servers.values()
            if server.front_end.pool == self.config.edge.pool
            and server.mode is Mode.PRODUCTION
            and server.external is not None
        ]

    @property
    def store(self) -> Store | None:
        """The update store the pool reads (None when it is not running)."""
        return self._store

    def refresh_store(self) -> int:
        """Take the store's changes now (made in this process, or announced by the CLI);
        the snapshot generation in force after it. StoreError if the store cannot be read."""
        if self.snapshots is None:
            raise ServiceError("the service pool is not running")
        return self.snapshots.refresh().generation

    def _origin(self, host: str, port: int) -> str:
        # A connection from the edge speaks for the client the edge forwards.
        edge = self.edge
        return edge.origin(host, port) if edge is not None else host

    def _locked_out(self, kind: str, who: str, seconds: float) -> None:
        # An account locked, or an address throttled, by failed NTLM sign-ins.
        name = "service.account_locked" if kind == "account" else "service.address_throttled"
        self.events.publish(name, **{kind: who, "seconds": seconds})

    def _on_event(self, event: Event) -> None:
        if event.kind == "firewall.changed":
            # The policy applies to the very next packet: open connections from addresses
            # now outside are cut as a stateful firewall flushing its table would.
            for server in self.servers.values():
                if server.internal is not None:
                    server.internal.enforce()
