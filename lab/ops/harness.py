"""A real lab and real phones on one event loop: the end-to-end tests, the pytest plugin,
the scenarios and the demo all stand on this.

This is lab's operations layer, the one place (with what builds on it) where the two
packages meet; it drives phones only through the emulator's public API, as any user would.

`running_lab` starts `lab.ops.runner.Lab` (DNS, the pool's front ends and edge, the admin API)
on port 0 inside the test, and puts firmware in the way an administrator does: a vendor
cab built with lab.store.cab, checked and imported into every front end with lab.store.importer,
approved or restored with lab.store.store. `Phones` makes emulator phones on the lease the lab
published with the emulator's `PhoneBuilder`, each at its own loopback address inside or
outside (the n-th phone of a segment at x.y.1.n, as every phone is).

Why lab and phones share the test's loop under fake time (looptime), and why the clock is
held while a phone talks: looptime moves the clock only when nothing on the loop is ready
to run, and then straight to the next timer. With both ends of a connection on the same
loop most of an exchange is always ready to run, but not all of it: an exchange through
the edge (which opens a second connection to a front end) was seen to leave the loop with
nothing ready for a moment of real time, and looptime then jumped over the phone's
30-second read timeout; on a loaded machine any exchange could. So `HeldNetwork`
wraps the real network and, while any phone's lookup, request or download is on the wire,
keeps one executor job open: looptime waits for executor jobs in real time without moving
the clock. Network I/O thus takes no fake time, however long it takes for real, and the
clock jumps only when everyone waits for a timer (a boot, the 24-hour check, the five
minutes before a restart). A lab in another process could not be held like this.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator import (
    Answer,
    AnyFault,
    Clock,
    Credentials,
    Download,
    HTTPSClient,
    Lease,
    Location,
    LogCode,
    LoopClock,
    Network,
    PhoneBuilder,
    PhoneDriver,
    PhoneSettings,
    PhoneState,
    Resolver,
    ScaledClock,
    get_model,
    load_lease,
)
from lab.clock import LabClock
from lab.errors import IdentityError
from lab.events import Event
from lab.models import phone_model
from lab.net.config import LabConfig
from lab.net.pki import verify_vendor_signature
from lab.ops.runner import LEASE_FILE, Lab
from lab.service.audit import AuditRecord
from lab.store.cab import build, read_cab
from lab.store.catalog import Signer
from lab.store.decision import Action
from lab.store.filestore import FileStore
from lab.store.importer import import_cab
from lab.store.store import Selection, Store

FACTORY = "4.0.7577.4366"
NEW = "4.0.7577.4372"
IMAGE_SIZE = 64 * 1024
ALICE = Credentials("alice", "CONTOSO", nt_hash="fc525c9683e8fe067095ba2ddc971889")
EDGE = "127.20.0.10"

T0 = float(math.ceil(time.time() / 3600) * 3600)
"""Phone time at the start of every test: the next whole hour (the lab's certificates are
made for now, and a phone checks them against its own clock)."""

BOOT = PhoneSettings().boot_time
FLASH = PhoneSettings().flash_time
IDLE_WAIT = 300.0
DAY = 86_400.0
INVENTORY_INTERVAL = 3600.0


@dataclass
class RunningLab:
    """A lab started by the test, its lease, and what an administrator does to it."""

    lab: Lab
    lease: Lease
    audit: list[AuditRecord] = field(default_factory=list)
    scale: float | None = None
    """Lab seconds per loop second, or None for the loop's own time (tests on looptime);
    phones made on this lab share its clock (``phones_on``)."""

    @property
    def state_dir(self) -> Path:
        """The lab's state directory."""
        return self.lab.state_dir

    @property
    def config(self) -> LabConfig:
        """The lab's configuration."""
        return self.lab.config

    def publish(
        self,
        model: str,
        version: str,
        *,
        approve: bool = True,
        signer: Signer | None = None,
        trusted: Callable[[str], bytes] | None = None,
        size: int = IMAGE_SIZE,
        pools: Sequence[str] | None = None,
    ) -> None:
        """Build a vendor cab for ``model`` at ``version``, import it into ``pools`` (FQDNs;
        every pool when None), approve it.

        ``signer`` signs the catalog instead of the model's vendor; ``trusted`` is what the
        import checks signatures against (an administrator who trusts the wrong key).
        """
        pki = self.lab.pki
        data, _ = build(
            [(phone_model(model), version)],
            (lambda vendor: signer) if signer else pki.vendor,
            size,
        )
        contents = read_cab(
            data,
            "UCUpdates.cab",
            trusted or (lambda vendor: pki.vendor(vendor).certificate_pem()),
            verify_vendor_signature,
        )
        chosen = pools if pools is not None else [pool.fqdn for pool in self.config.pools]
        import_cab(self.state_dir, contents, chosen, now=self.lab.clock.now)
        self.store_changed()
        if approve:
            self.change(Action.APPROVE, model)

    def change(self, action: Action, model: str) -> None:
        """Approve, reset or restore the rules of ``model`` in every pool."""
        with self.store() as store:
            store.change(action, Selection(model=model))

    @contextlib.contextmanager
    def store(self) -> Iterator[Store]:
        """The lab's update store, for an administrator's change; the service takes what
        was changed at once, as the CLI's store commands make it."""
        try:
            with Store.open(
                self.state_dir, now=self.lab.clock.now, pool_of=self.config.pool_of()
            ) as store:
                yield store
        finally:
            self.store_changed()

    def store_changed(self) -> None:
        """Make the service take the store's changes now (the next check sees them)."""
        self.lab.pool.refresh_store()

    def tamper(self, model: str, version: str) -> None:
        """Flip one byte of the image in every pool's file store (after import)."""
        kind = phone_model(model).kind()
        for pool in self.config.pools:
            path = FileStore(self.state_dir, pool.fqdn).path(f"{kind.path}/{version}/CPE/CPE.nbt")
            if not path.exists():
                continue
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))

    def stored_bytes(self, model: str, version: str) -> int:
        """The size of the catalog and image of ``model`` at ``version`` in a file store."""
        files = FileStore(self.state_dir, self.config.pools[0].fqdn)
        folder = f"{phone_model(model).kind().path}/{version}/CPE"
        return sum(files.path(f"{folder}/{name}").stat().st_size for name in ("CPE.cat", "CPE.nbt"))

    def requests(self, mac: str) -> list[AuditRecord]:
        """Every request of the phone with ``mac`` the front ends logged, in order."""
        return [r for r in self.audit if r.mac == mac]


def lab_clock(scale: float | None = None) -> LabClock:
    """A lab clock on the running loop's time, at lab time T0 now: ``scale`` lab seconds
    per loop second, or the loop's own pace when None (tests on looptime)."""
    loop_time = asyncio.get_running_loop().time
    return LabClock.starting(T0, scale if scale is not None else 1.0, loop_time)


@contextlib.asynccontextmanager
async def running_lab(
    config: LabConfig, state_dir: Path, *, scale: float | None = None
) -> AsyncIterator[RunningLab]:
    """Start a whole lab on the running loop, on ``lab_clock(scale)``; stop it afterwards."""
    async with started_lab(Lab(config, state_dir, clock=lab_clock(scale)), scale=scale) as running:
        yield running


@contextlib.asynccontextmanager
async def started_lab(lab: Lab, *, scale: float | None = None) -> AsyncIterator[RunningLab]:
    """Start ``lab`` (made by the caller, with any options, on ``lab_clock(scale)``) and
    follow its audit records."""
    async with lab:
        running = RunningLab(lab, load_lease(lab.state_dir / LEASE_FILE), scale=scale)

        def on_event(event: Event) -> None:
            if event.kind == "audit":
                running.audit.append(AuditRecord(**event.data))

        unsubscribe = lab.events.subscribe(on_event)
        try:
            yield running
        finally:
            unsubscribe()


class ClockHold:
    """Keeps looptime from moving the clock while anything holds it (counted, re-entrant)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="clock-hold")
        self._holders = 0
        self._release: threading.Event | None = None
        self._jobs: set[asyncio.Future[bool]] = set()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the clock for the duration of the block."""
        if self._holders == 0:
            self._release = threading.Event()
            job = self._loop.run_in_executor(self._executor, self._release.wait)
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)
        self._holders += 1
        try:
            yield
        finally:
            self._holders -= 1
            if self._holders == 0 and self._release is not None:
                self._release.set()

    async def aclose(self) -> None:
        """Let go and stop the thread."""
        if self._release is not None:
            self._release.set()
        await asyncio.gather(*self._jobs)
        self._executor.shutdown(wait=True)


class HeldResolver:
    """A phone's resolver that holds the clock while a lookup is on the wire."""

    def __init__(self, inner: Resolver, hold: ClockHold) -> None:
        self.inner = inner
        self.hold = hold

    async def resolve(self, name: str, qtype: str = "A") -> list[str]:
        """The inner resolver's answer."""
        with self.hold.held():
            return await self.inner.resolve(name, qtype)


DownloadWatch = Callable[[str, int, int | None], None]
"""Told as a download grows: the address it comes from, bytes so far, the full size."""


class ForwardingClient:
    """A phone's HTTPS client that hands every call to ``inner``; wrappers override what they
    add (holding the clock, watching downloads)."""

    def __init__(self, inner: HTTPSClient) -> None:
        self.inner = inner

    async def post_xml(self, url: str, body: bytes, **options: Any) -> Answer:
        """The inner client's answer."""
        return await self.inner.post_xml(url, body, **options)

    async def download(self, url: str, path: Path, **options: Any) -> Download:
        """The inner client's download."""
        return await self.inner.download(url, path, **options)

    async def post_log(self, url: str, body: bytes, **options: Any) -> Answer:
        """The inner client's answer."""
        return await self.inner.post_log(url, body, **options)

    def kept_address(self, host: str, port: int) -> str | None:
        """The inner client's kept-alive connection to ``host`` on ``port``."""
        return self.inner.kept_address(host, port)

    async def drop_connections(self) -> None:
        """Drop the inner client's connections."""
        await self.inner.drop_connections()

    async def close(self) -> None:
        """Close the inner client."""
        await self.inner.close()


class HeldClient(ForwardingClient):
    """A phone's HTTPS client that holds the clock while a request or download is on the wire."""

    def __init__(self, inner: HTTPSClient, hold: ClockHold, watch: DownloadWatch | None) -> None:
        super().__init__(inner)
        self.hold = hold
        self.watch = watch

    async def post_xml(self, url: str, body: bytes, **options: Any) -> Answer:
        """The inner client's answer."""
        with self.hold.held():
            return await super().post_xml(url, body, **options)

    async def download(self, url: str, path: Path, **options: Any) -> Download:
        """The inner client's download, reported to ``watch`` as it grows."""
        watch, address = self.watch, options.get("address") or ""
        if watch is not None:
            options["progress"] = lambda size, total: watch(address, size, total)
        with self.hold.held():
            return await super().download(url, path, **options)

    async def post_log(self, url: str, body: bytes, **options: Any) -> Answer:
        """The inner client's answer."""
        with self.hold.held():
            return await super().post_log(url, body, **options)


class HeldNetwork:
    """The real network of the lease, with the clock held during exchanges."""

    def __init__(self, inner: Network, hold: ClockHold) -> None:
        self.inner = inner
        self.hold = hold
        self.watch: DownloadWatch | None = None

    def resolver(self, source: str) -> Resolver:
        """The real resolver, held."""
        return HeldResolver(self.inner.resolver(source), self.hold)

    async def open_client(self, source: str, resolver: Resolver) -> HTTPSClient:
        """A real client, held."""
        return HeldClient(await self.inner.open_client(source, resolver), self.hold, self.watch)

    async def close_client(self, client: HTTPSClient) -> None:
        """Close a client open_client gave."""
        assert isinstance(client, HeldClient)
        await self.inner.close_client(client.inner)

    def vendor_certificate(self, vendor: str) -> bytes:
        """The lease's vendor certificate."""
        return self.inner.vendor_certificate(vendor)


class Phones:
    """Emulator phones on a lab's lease, sharing the lab's clock (``clock``; without one,
    lab time T0 now) and one network.

    With no ``scale`` the phones live on the loop's own time, for tests on fake loop time
    (looptime), and the clock is held while they talk (see the module docstring). With a
    ``scale`` they live on a ScaledClock for real runs: ``scale`` virtual seconds pass per
    real second, and nothing needs holding. ``network`` is what the phones made from then
    on talk through: wrap it to watch them.
    """

    def __init__(
        self,
        lease: Lease,
        workdir: Path,
        *,
        scale: float | None = None,
        clock: LabClock | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.lease = lease
        self.workdir = workdir
        self.clock: Clock
        self.hold = ClockHold()
        # The lab's clock, which the phones share (lab time T0 now when there is no lab).
        lab = clock if clock is not None else lab_clock(scale)
        if lab.source != loop.time or lab.scale != (scale if scale is not None else 1.0):
            raise ValueError(
                f"phones at scale {scale} cannot share a lab clock at scale {lab.scale} "
                "or on another time than the loop's"
            )
        if scale is None:
            self.clock = LoopClock(loop.time, start=lab.time() - loop.time())
        else:
            self.clock = ScaledClock(loop.time, start=lab.time(), scale=scale)
        self.builder = PhoneBuilder(lease, self.clock, workdir)
        self.network: Network = (
            HeldNetwork(self.builder.network, self.hold) if scale is None else self.builder.network
        )
        self.drivers: list[PhoneDriver] = []

    def phone(
        self,
        model: str = "CX600",
        *,
        index: int = 1,
        inside: bool = True,
        number: int | None = None,
        faults: Sequence[AnyFault] = (),
        settings: PhoneSettings | None = None,
        seed: int = 0,
        observer: Callable[[PhoneDriver], None] | None = None,
        hash_in_thread_from: int | None = None,
    ) -> PhoneDriver:
        """A phone (powered off), the ``number``-th of its segment (by default its index):
        127.10.1.<number> inside or 127.20.1.<number> outside, on the default lab.

        Each phone is made once: a second phone of the same model and index would share the
        first one's MAC and serial number, which no two real phones do (IdentityError).
        """
        identity = get_model(model).identity(index)
        if any(driver.phone.identity.mac == identity.mac for driver in self.drivers):
            raise IdentityError(
                f"phone {model} #{index} (MAC {identity.mac}) is already made on this lab: "
                "reuse its driver, or give the new phone another index"
            )
        driver = self.builder.phone(
            identity.model,
            index,
            location=Location.INSIDE if inside else Location.OUTSIDE,
            number=number,
            seed=seed,
            network=self.network,
            settings=settings,
            faults=faults,
            observer=observer,
            hash_in_thread_from=hash_in_thread_from,
        )
        self.drivers.append(driver)
        return driver

    def advance(self, seconds: float, lab: LabClock) -> None:
        """Move the lab's time and the phones' on by ``seconds`` at once (LabClock.advance):
        only while every phone is unplugged, when no phone waits on its clock."""
        plugged = [d.name for d in self.drivers if d.phone.state is not PhoneState.OFF]
        if plugged:
            raise ValueError(f"time cannot jump while phones are plugged in: {plugged}")
        lab.advance(seconds)
        assert isinstance(self.clock, LoopClock | ScaledClock)
        self.clock.start += seconds

    async def aclose(self) -> None:
        """Stop every phone."""
        for driver in self.drivers:
            await driver.aclose()
        await self.hold.aclose()


@contextlib.asynccontextmanager
async def phones_on(lab: RunningLab, workdir: Path) -> AsyncIterator[Phones]:
    """Phones on ``lab``'s lease and clock (see Phones for the scale), stopped at the end."""
    phones = Phones(lab.lease, workdir, scale=lab.scale, clock=lab.lab.clock)
    try:
        yield phones
    finally:
        await phones.aclose()


def idle_on(version: str) -> Callable[[PhoneDriver], bool]:
    """A wait condition: the phone runs ``version`` and has nothing left to do."""
    return lambda d: d.phone.current_version == version and d.phone.state is PhoneState.IDLE


def entered(driver: PhoneDriver, state: PhoneState, after: float = 0.0) -> list[float]:
    """The phone times at which ``driver``'s phone entered ``state`` (from ``after`` on)."""
    return [c.time for c in driver.timeline if c.state is state and c.time >= after]


def version_at(driver: PhoneDriver, t: float) -> str:
    """The version ``driver``'s phone ran at phone time ``t``."""
    return [c.version for c in driver.timeline if c.time <= t][-1]


def logged(driver: PhoneDriver, code: LogCode, **facts: Any) -> list[float]:
    """The phone times of ``driver``'s log lines of ``code`` whose facts include ``facts``
    (``logged(phone, LogCode.DOWNLOADED, module="CPE.nbt")``)."""
    return [
        e.time
        for e in driver.phone.log.coded(code)
        if all(getattr(e.facts, name) == value for name, value in facts.items())
    ]
