"""A whole running lab: what `lab up` starts, the demo drives and tests use.

The runner owns start-up order and the files a running lab publishes in its state
directory: ``run.json`` (every endpoint it bound, for `lab status` and tools, which read it
with ``read_run_file`` of lab.ops.runfile, re-exported here) and ``lease.json`` (what DHCP
would hand a phone; see docs/wire-protocol.md). Both are written atomically and
``run.json`` is removed again on a clean stop, so its presence means a lab is (or was, if
it crashed) running.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from aiohttp import web

from lab.admintoken import make_token
from lab.clock import LabClock
from lab.errors import LabStateError, PKIError, ServiceError
from lab.events import EventBus
from lab.fileio import write_atomic
from lab.lifecycle import Service
from lab.net.config import LabConfig
from lab.net.dns import DNSServer
from lab.net.firewall import FirewallPolicy
from lab.net.guard import ConnectionBudget
from lab.net.netns import LabNetwork
from lab.net.pki import FAULTS, VENDORS, CertPair, FaultKind, LabPKI
from lab.ops import adminroutes
from lab.ops.metrics import LabMetrics
from lab.ops.netmode import NetworkMode
from lab.ops.runfile import RUN_FILE as RUN_FILE
from lab.ops.runfile import read_run_file as read_run_file
from lab.ops.wall import PhoneWall
from lab.service.admin import SITE_KEY, make_app
from lab.service.audit import AuditLog, AuditRecord
from lab.service.logs import LogCleanUp
from lab.service.pool import ServicePool
from lab.service.run import event_loop_factory, stop_on_signals
from lab.service.sites import TLSSite, bind_same_port

LEASE_FILE = "lease.json"


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    """Write JSON so that readers see the old file or the new one, never half of it."""
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode)


def remove_credential_leftovers() -> int:
    """Remove NT-hash files that earlier versions of the lab wrote to the system temp
    directory (``lab-ntlm-*``, ours only) and a killed lab left behind; how many."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob("lab-ntlm-*"):
        try:
            if path.is_dir() and path.stat().st_uid == os.getuid():
                shutil.rmtree(path)
                removed += 1
        except OSError:
            continue
    return removed


class FaultyCertificates:
    """Every front end's certificate faulty in the same one way (LabPKI.faulty), for scenarios."""

    def __init__(self, pki: LabPKI, fault: FaultKind) -> None:
        if fault not in FAULTS:
            raise PKIError(f"no certificate fault {fault!r} (known: {', '.join(FAULTS)})")
        self.pki = pki
        self.fault = fault

    def server(self, name: str) -> CertPair:
        """The faulty certificate of front end ``name``."""
        return self.pki.faulty(self.fault, name)

    def edge(self) -> CertPair:
        """The edge's own, good certificate (the fault is the front ends')."""
        return self.pki.edge()

    def client_context(self) -> ssl.SSLContext:
        """The edge's trust in the lab CA, as with good certificates."""
        return self.pki.client_context()


class Lab(Service):
    """The lab's services on one event loop: DNS, the pool with its edge, the admin API.

    Started in that order and stopped in reverse; each front end's requests are written to
    its own audit log under ``<state>/servers/<fe>/AuditLogs``. With a ``certificate_fault``
    the front ends serve certificates faulty in that way instead of their good ones.
    """

    def __init__(
        self,
        config: LabConfig,
        state_dir: Path,
        *,
        events: EventBus | None = None,
        pki_dir: Path | None = None,
        certificate_fault: FaultKind | None = None,
        clock: LabClock | None = None,
        network: LabNetwork | None = None,
        capture: str | None = None,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.events = events or EventBus()
        # The lab's one clock (lab.clock): the service's times, the certificates' validity.
        self.clock = clock or LabClock.wall()
        self.firewall = FirewallPolicy(config.inside, config.outside, self.events)
        self.pki = LabPKI(config, pki_dir, now=self.clock.now)
        # One budget of connections for every listener of the process (lab.guard).
        self.budget = ConnectionBudget.for_process(
            config.limits.connections_per_address, config.limits.admin_reserve
        )
        self.certificate_fault = certificate_fault
        certificates: LabPKI | FaultyCertificates = self.pki
        if certificate_fault is not None:
            certificates = FaultyCertificates(self.pki, certificate_fault)
        self.dns = DNSServer(
            config,
            self.firewall,
            events=self.events,
            query_log_path=state_dir / "logs" / "dns-queries.jsonl",
            budget=self.budget,
        )
        self.audit = {
            fe.name: AuditLog(
                fe.name,
                state_dir / "servers" / fe.name / "AuditLogs",
                self.events,
                field_max=config.limits.audit_field_max,
            )
            for fe in config.front_ends
        }
        self.pool = ServicePool(
            config,
            state_dir,
            firewall=self.firewall,
            pki=certificates,
            events=self.events,
            on_request=self._audit,
            budget=self.budget,
            now=self.clock.now,
            clock=self.clock.time,
        )
        # Phones hosted in the lab for the console and `lab phone` (lab.ops.wall).
        self.wall = PhoneWall(
            config=config,
            state_dir=state_dir,
            lease_file=state_dir / LEASE_FILE,
            clock=self.clock,
            firewall=self.firewall,
            events=self.events,
            audit_dirs=[log.directory for log in self.audit.values()],
        )
        # The lab's own network (--netns), built by the caller before the loop started: the
        # servers' sockets are made in its namespaces (lab.net.netns.socket_at).
        self.network = (
            NetworkMode(network, config, self.firewall, self.pool, state_dir, self.events)
            if network is not None
            else None
        )
        self._capture_at_start = capture
        # GET /metrics (lab.ops.metrics): every audit record is counted as it is written.
        self.metrics = LabMetrics(config, state_dir, self.pool, self.dns, self.clock)
        self._stack = AsyncExitStack()
        self.admin_address: tuple[str, int] = ("127.0.0.1", config.ports.admin)
        self.started_at: float | None = None

    async def start(self) -> None:
        """Make the PKI if needed, start every service, publish run.json and lease.json."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        remove_credential_leftovers()
        # Certificates are CPU work; keep the loop free for anything already running.
        await asyncio.to_thread(self.pki.ensure)
        try:
            if self.network is not None:
                # The router's rules first: nothing crosses it before they stand.
                await self._stack.enter_async_context(self.network)
            await self._stack.enter_async_context(self.dns)
            await self._stack.enter_async_context(self.pool)
            self._stack.callback(self._close_audit)
            # Stopped before the audit logs close (the stack unwinds in reverse).
            stores = [s.logs for s in self.pool.servers.values() if s.logs is not None]
            await self._stack.enter_async_context(
                LogCleanUp(
                    stores,
                    list(self.audit.values()),
                    self.pool.context.device_config,
                    now=self.clock.now,
                    sleep=self.clock.sleep,
                    events=self.events,
                )
            )
            await self._start_admin()
            if self.network is not None and self._capture_at_start is not None:
                # Stopped with the network (its stop ends a running capture).
                await self.network.start_capture(self._capture_at_start or None)
        except BaseException:
            await self._stack.aclose()
            raise
        self.started_at = time.time()
        write_json_atomic(self.state_dir / LEASE_FILE, self.lease())
        # After the lease its phones take; stopped first, before the services they use.
        await self._stack.enter_async_context(self.wall)
        write_json_atomic(self.state_dir / RUN_FILE, self.run_info())
        self.events.publish("lab.started", endpoints=self.endpoints())

    async def _start_admin(self) -> None:
        token = make_token(self.state_dir)
        app = make_app(self, token, adminroutes.extensions(self))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        try:
            sock = (
                self.network.network.take_admin_socket()
                if self.network is not None
                else bind_same_port(["127.0.0.1"], self.config.ports.admin)[0]
            )
        except ServiceError as exc:
            raise LabStateError(
                f"the admin API {exc}; is another lab running? (ports.admin in the config)"
            ) from None
        # The admin API may use the budget's reserve: it answers when the rest is full.
        site = TLSSite(
            runner, sock, None, limits=self.config.limits, budget=self.budget, reserved=True
        )
        app[SITE_KEY].site = site
        await site.start()
        self.admin_address = site.address

    def _audit(self, record: AuditRecord) -> None:
        self.audit[record.server].write(record)
        self.metrics.record(record)

    def _close_audit(self) -> None:
        for log in self.audit.values():
            log.close()

    async def stop(self) -> None:
        """Stop every service and withdraw run.json."""
        (self.state_dir / RUN_FILE).unlink(missing_ok=True)
        await self._stack.aclose()
        self.events.publish("lab.stopped")

    def endpoints(self) -> dict[str, Any]:
        """Every endpoint the lab bound, as JSON-ready data."""
        host, port = self.dns.address
        admin_host, admin_port = self.admin_address
        return {
            "dns": {"udp": f"{host}:{port}", "tcp": f"{host}:{port}"},
            **self.pool.endpoints(),
            "admin": {"http": f"{admin_host}:{admin_port}"},
        }

    def status(self) -> dict[str, Any]:
        """What the admin API's status shows: endpoints, lab time, firewall and DNS state."""
        return {
            **self.run_info(),
            "lab_time": self.clock.now().isoformat(timespec="seconds"),
            "firewall": self.firewall.snapshot(),
            "dns": {"stats": self.dns.stats(), "faults": self.dns.faults.snapshot()},
            "pool": self.pool.snapshot(),
            **({"network": self.network.snapshot()} if self.network is not None else {}),
        }

    def run_info(self) -> dict[str, Any]:
        """The content of run.json."""
        return {
            "pid": os.getpid(),
            "started": self.started_at,
            "config": self.config.source,
            "state_dir": str(self.state_dir.resolve()),
            "endpoints": self.endpoints(),
            "clock": self.clock.as_dict(),
            **({"network": self.network.network.describe()} if self.network else {}),
        }

    def lease(self) -> dict[str, Any]:
        """What DHCP hands a phone at this lab (docs/wire-protocol.md)."""
        host, port = self.dns.address
        return {
            "domain": self.config.dhcp_domain,
            "sip_domain": self.config.sip_domain,
            "sip_server": self.config.discovery_pool.fqdn,
            "dns": [host, port],
            "https_port": self.pool.https_port,
            "segments": {"inside": str(self.config.inside), "outside": str(self.config.outside)},
            "ca_cert": str(self.pki.ca_cert.resolve()),
            "vendor_certs": {
                vendor: str(self.pki.vendor(vendor).cert.resolve()) for vendor in VENDORS
            },
            # Phones in other processes follow the lab's clock (none: the wall clock).
            "clock": self.clock.as_dict(),
            # In the lab's own network, where phones make their sockets (emulator/netns.py).
            **({"netns": self.network.network.lease()} if self.network else {}),
        }


async def serve_until_signalled(lab: Lab, on_ready: Callable[[Lab], None]) -> None:
    """Run ``lab`` until SIGINT or SIGTERM, calling ``on_ready`` once it is up."""
    stop = asyncio.Event()
    with stop_on_signals(stop):
        async with lab:
            on_ready(lab)
            await stop.wait()


# The collector's pace for a process that runs long and busy: the young generation every
# 10,000 net allocations, the older ones every 20 of those. It is the phones' pace too
# (emulator/collector.py has the measurement: 7 % less CPU per phone for the lab); the lab
# keeps its own line of it, as the lab and the phones share no code.
LONG_RUN_GC = (10_000, 20, 20)


def run_event_loop(main: Callable[[], Any]) -> Any:
    """Run coroutine function ``main`` on the lab's event loop (lab.service.run), with the
    collector at the pace of a long busy run (LONG_RUN_GC)."""
    before = gc.get_threshold()
    gc.set_threshold(*LONG_RUN_GC)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(main())
    finally:
        gc.set_threshold(*before)
