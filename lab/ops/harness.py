"""A real lab and real phones on one event loop: the end-to-end tests, the pytest plugin,
the scenarios and the demo all stand on this.

This is lab's operations layer, the one place (with what builds on it) where the two
packages meet; it drives phones only through the emulator's public API, as any user would.

`running_lab` starts `lab.ops.runner.Lab` (DNS, the pool's front ends and edge, the admin API)
on port 0 inside the test, and puts firmware in the way an administrator does: a vendor
cab built with lab.store.cab, checked and imported into every front end with lab.store.importer,
approved or restored with lab.store.store. `Phones` makes emulator phones on the lease the lab
published with the emulator's `PhoneBuilder`, each at its own loopback address inside or
outside (the n-th phone of a segment at x.y.1.n, as every phone is). It and the network it
holds under fake time live in lab.ops.labphones (which says why the clock is held), shared
with the phone wall of a running lab, and are re-exported here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator import (
    Credentials,
    Lease,
    LogCode,
    PhoneDriver,
    PhoneSettings,
    PhoneState,
    load_lease,
)
from lab.events import Event
from lab.models import phone_model
from lab.net.config import LabConfig
from lab.net.netns import LabNetwork
from lab.net.pki import verify_vendor_signature
from lab.ops.administer import build_vendor_cab
from lab.ops.labphones import T0 as T0
from lab.ops.labphones import ClockHold as ClockHold
from lab.ops.labphones import DownloadWatch as DownloadWatch
from lab.ops.labphones import ForwardingClient as ForwardingClient
from lab.ops.labphones import HeldClient as HeldClient
from lab.ops.labphones import HeldNetwork as HeldNetwork
from lab.ops.labphones import HeldResolver as HeldResolver
from lab.ops.labphones import Phones as Phones
from lab.ops.labphones import lab_clock as lab_clock
from lab.ops.runner import LEASE_FILE, Lab
from lab.service.audit import AuditRecord
from lab.store.cab import read_cab
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
        built = build_vendor_cab(
            [model], [version], (lambda vendor: signer) if signer else pki.vendor, image_size=size
        )
        contents = read_cab(
            built.data,
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


@contextlib.asynccontextmanager
async def running_lab(
    config: LabConfig,
    state_dir: Path,
    *,
    scale: float | None = None,
    network: LabNetwork | None = None,
    capture: str | None = None,
) -> AsyncIterator[RunningLab]:
    """Start a whole lab on the running loop, on ``lab_clock(scale)``; stop it afterwards.
    ``network``, ``capture``: the lab's own network and a capture from the start (Lab)."""
    lab = Lab(config, state_dir, clock=lab_clock(scale), network=network, capture=capture)
    async with started_lab(lab, scale=scale) as running:
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
