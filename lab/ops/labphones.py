"""Emulator phones on a lab's lease and clock: the factory, the clock and the network the
harness, the demo, the scenarios and the phone wall share.

It imports nothing of lab.ops.runner, so a running lab can own phones too (the phone wall,
lab.ops.wall) without an import cycle; lab.ops.harness re-exports everything here.

`Phones` makes emulator phones on the lease a lab published with the emulator's
`PhoneBuilder`, each at its own loopback address inside or outside (the n-th phone of a
segment at x.y.1.n, as every phone is), on the lab's clock.

Why lab and phones share the loop under fake time (looptime), and why the clock is held
while a phone talks: looptime moves the clock only when nothing on the loop is ready to
run, and then straight to the next timer. With both ends of a connection on the same loop
most of an exchange is always ready to run, but not all of it: an exchange through the
edge (which opens a second connection to a front end) was seen to leave the loop with
nothing ready for a moment of real time, and looptime then jumped over the phone's
30-second read timeout; on a loaded machine any exchange could. So `HeldNetwork` wraps
the real network and, while any phone's lookup, request or download is on the wire, keeps
one executor job open: looptime waits for executor jobs in real time without moving the
clock. Network I/O thus takes no fake time, however long it takes for real, and the clock
jumps only when everyone waits for a timer (a boot, the 24-hour check, the five minutes
before a restart). A lab in another process could not be held like this.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from emulator import (
    Answer,
    AnyFault,
    Clock,
    Download,
    HTTPSClient,
    Lease,
    Location,
    LoopClock,
    Network,
    PhoneBuilder,
    PhoneDriver,
    PhoneSettings,
    PhoneState,
    Resolver,
    ScaledClock,
    get_model,
)
from lab.clock import LabClock
from lab.errors import IdentityError

T0 = float(math.ceil(time.time() / 3600) * 3600)
"""Phone time at the start of every test: the next whole hour (the lab's certificates are
made for now, and a phone checks them against its own clock)."""


def lab_clock(scale: float | None = None) -> LabClock:
    """A lab clock on the running loop's time, at lab time T0 now: ``scale`` lab seconds
    per loop second, or the loop's own pace when None (tests on looptime)."""
    loop_time = asyncio.get_running_loop().time
    return LabClock.starting(T0, scale if scale is not None else 1.0, loop_time)


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
    real second, and nothing needs holding; the lab's clock may then be on the loop's time
    or on the wall clock (``lab up``), and the phones' clock starts at its time now.
    ``network`` is what the phones made from then on talk through: wrap it to watch them.
    At most ``max_clients`` phones are in an HTTPS exchange at once (the emulator's
    LeaseNetwork; None: no limit).
    """

    def __init__(
        self,
        lease: Lease,
        workdir: Path,
        *,
        scale: float | None = None,
        clock: LabClock | None = None,
        max_clients: int | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.lease = lease
        self.workdir = workdir
        self.clock: Clock
        self.hold = ClockHold()
        # The lab's clock, which the phones share (lab time T0 now when there is no lab).
        lab = clock if clock is not None else lab_clock(scale)
        # Only phones on the loop's own time need the lab's clock on the loop's time too.
        if lab.scale != (scale if scale is not None else 1.0) or (
            scale is None and lab.source != loop.time
        ):
            raise ValueError(
                f"phones at scale {scale} cannot share a lab clock at scale {lab.scale} "
                "or on another time than the loop's"
            )
        if scale is None:
            self.clock = LoopClock(loop.time, start=lab.time() - loop.time())
        else:
            self.clock = ScaledClock(loop.time, start=lab.time(), scale=scale)
        self.builder = PhoneBuilder(lease, self.clock, workdir, max_clients=max_clients)
        self.network: Network = (
            HeldNetwork(self.builder.network, self.hold) if scale is None else self.builder.network
        )
        self.drivers: list[PhoneDriver] = []
        self._macs: set[str] = set()

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
        network: Network | None = None,
    ) -> PhoneDriver:
        """A phone (powered off), the ``number``-th of its segment (by default its index):
        127.10.1.<number> inside or 127.20.1.<number> outside, on the default lab; it talks
        through ``network`` when given (one wrapped for this phone alone), else ``self.network``.

        Each phone is made once: a second phone of the same model and index would share the
        first one's MAC and serial number, which no two real phones do (IdentityError).
        """
        identity = get_model(model).identity(index)
        if identity.mac in self._macs:
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
            network=network if network is not None else self.network,
            settings=settings,
            faults=faults,
            observer=observer,
            hash_in_thread_from=hash_in_thread_from,
        )
        self.drivers.append(driver)
        self._macs.add(identity.mac)
        return driver

    async def remove(self, driver: PhoneDriver) -> None:
        """Stop ``driver``'s phone and forget it: its MAC may be made again."""
        await driver.aclose()
        self.drivers.remove(driver)
        self._macs.discard(driver.phone.identity.mac)

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
