"""The phone inventory: which phones checked for updates, running what, from where; its flags.

Every update check the service answers is a *sighting* of a phone (MAC, serial, device
kind, installed version, peer address, inside or outside, server, time, last user). The
store keeps one record per MAC address: the latest sighting, with the time the phone was
first seen, and its last known user when a later check names none. Checks on the internal
site are *inside*; checks on the external site, which arrive through the edge, are
*outside*, and their address is the edge's, as a server behind a reverse proxy sees it.

Writing is kept off the check path. ``InventoryRecorder.record`` only puts the sighting
in a dict keyed by MAC (the latest wins); every ``FLUSH_INTERVAL`` (0.5 s) and at stop,
what has gathered is written in one transaction, on the recorder's own store connection,
in its own thread, so a check never waits for SQLite. A flush that fails (the store busy
longer than its timeout) keeps its sightings for the next one unless newer ones arrived.
On a crash the sightings not yet written are lost: at most the last half-second (and a
flush in progress); the phones' next checks record them again. Each flush is a commit, so
the service reloads its store snapshot once after it (lab.store): at most one read
transaction per half-second, whatever the rate of checks.

Flags (``assess``), against the rule for the phone's device kind in the pool of the front
end it last checked with:

- ``not-approved``: the installed version differs from the rule's approved version;
- ``left-behind``: not on the approved version, and that version was approved more than
  ``SUPPORT_WINDOW`` (60 days) ago: the phone missed a release for longer than the
  support window.

A phone whose rule has no approved version (or which has no rule) has no flags.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from lab.clock import utc_now
from lab.errors import LabError, ServiceError
from lab.events import EventBus
from lab.lifecycle import Service
from lab.models import DeviceKind, KindKey, canonical_version, same_version
from lab.net.firewall import Zone
from lab.store.store import BUSY_TIMEOUT, Approval, PhoneRecord, Store

SUPPORT_WINDOW = timedelta(days=60)
FLUSH_INTERVAL = 0.5

log = logging.getLogger(__name__)
T = TypeVar("T")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


class Flag(StrEnum):
    """Why a phone needs attention."""

    NOT_APPROVED = "not-approved"
    LEFT_BEHIND = "left-behind"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sighting:
    """One answered update check, as the check path hands it over (built by keyword)."""

    mac: str
    serial: str
    kind: DeviceKind
    version: str
    address: str
    zone: Zone
    server: str
    pool: str
    seen: datetime
    user: str | None = None

    def record(self) -> PhoneRecord:
        """The store record of this sighting (first seen now, unless the store knows better)."""
        stamp = _stamp(self.seen)
        return PhoneRecord(
            mac=self.mac,
            serial=self.serial,
            kind=self.kind,
            version=canonical_version(self.version),
            address=self.address,
            zone=self.zone.value,
            server=self.server,
            first_seen=stamp,
            last_seen=stamp,
            last_user=self.user,
            pool=self.pool,
        )


@dataclass(frozen=True)
class PhoneStatus:
    """A phone of the inventory with its rule's approved version and its flags."""

    phone: PhoneRecord
    approved: str | None
    approved_at: datetime | None
    flags: tuple[Flag, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            **self.phone.as_dict(),
            "approved": self.approved,
            "approved_at": _stamp(self.approved_at) if self.approved_at else None,
            "flags": [flag.value for flag in self.flags],
        }


def assess(
    version: str,
    approval: Approval | None,
    now: datetime,
    window: timedelta = SUPPORT_WINDOW,
) -> tuple[Flag, ...]:
    """The flags of a phone running ``version`` under ``approval`` (see the module rules)."""
    if approval is None or same_version(version, approval.version):
        return ()
    if approval.approved_at is not None and now - approval.approved_at > window:
        return (Flag.NOT_APPROVED, Flag.LEFT_BEHIND)
    return (Flag.NOT_APPROVED,)


def inventory(
    phones: Iterable[PhoneRecord],
    approvals: Iterable[Approval],
    now: datetime,
    window: timedelta = SUPPORT_WINDOW,
) -> list[PhoneStatus]:
    """Every phone with the approved version of its rule in its pool, and its flags."""
    by_rule: dict[tuple[str, KindKey], Approval] = {(a.pool, a.kind.key): a for a in approvals}
    statuses = []
    for phone in phones:
        approval = by_rule.get((phone.pool, phone.kind.key))
        statuses.append(
            PhoneStatus(
                phone,
                approval.version if approval else None,
                approval.approved_at if approval else None,
                assess(phone.version, approval, now, window),
            )
        )
    return statuses


def read_inventory(
    store: Store, now: datetime | None = None, window: timedelta = SUPPORT_WINDOW
) -> list[PhoneStatus]:
    """The inventory of ``store`` assessed at ``now`` (the current time unless given)."""
    return inventory(store.phones(), store.approvals(), now or utc_now(), window)


class InventoryRecorder(Service):
    """Gathers sightings on the event loop and writes them in batches (see the module rules).

    ``flushed`` events (``inventory.flushed`` with the number of phones) follow every
    write, so a test or a live view can wait for one instead of for time.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        events: EventBus | None = None,
        interval: float = FLUSH_INTERVAL,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        self.state_dir = state_dir
        self.events = events
        self.interval = interval
        self.busy_timeout = busy_timeout
        self._pending: dict[str, Sighting] = {}
        self._store: Store | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._recorded = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        """How many phones have sightings not yet written."""
        return len(self._pending)

    def record(self, sighting: Sighting) -> None:
        """Keep ``sighting`` for the next flush (a dict assignment: the check path's cost).

        A sighting equal to the one pending (a phone repeating its check) changes nothing.
        """
        pending = self._pending.get(sighting.mac)
        if pending == sighting:
            return
        self._pending[sighting.mac] = _later(pending, sighting)
        self._recorded.set()

    async def start(self) -> None:
        """Open the recorder's own store connection (in its thread) and start flushing."""
        if self._task is not None:
            raise ServiceError("the inventory recorder is already running")
        # One thread owns the connection: sqlite3 connections stay in their thread.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inventory")
        try:
            self._store = await self._in_thread(
                partial(Store.open, self.state_dir, busy_timeout=self.busy_timeout, recover=False)
            )
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Write what is pending and close the connection."""
        if self._task is None:
            return
        self._stopping.set()
        await self._task
        self._task = None
        store, self._store = self._store, None
        if store is not None:
            await self._in_thread(store.close)
        if self._executor is not None:
            # Nothing is queued any more: the thread is idle and ends at once.
            self._executor.shutdown(wait=True)
            self._executor = None

    async def flush(self) -> int:
        """Write every pending sighting now in one transaction; returns how many phones."""
        async with self._lock:
            store = self._store
            if not self._pending or store is None:
                return 0
            batch, self._pending = self._pending, {}
            try:
                await self._in_thread(partial(_write, store, list(batch.values())))
            except LabError as exc:
                for mac, sighting in batch.items():
                    self._pending[mac] = _later(sighting, self._pending.get(mac))
                self._recorded.set()  # try again next round
                log.warning("inventory: %d phones not written yet: %s", len(batch), exc)
                return 0
        if self.events is not None:
            self.events.publish("inventory.flushed", phones=len(batch))
        return len(batch)

    async def _run(self) -> None:
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                # Sleep until a sighting arrives: an idle lab wakes nobody up (and a test on
                # fake time does not pay for empty flushes), then gather for one interval.
                recorded = asyncio.ensure_future(self._recorded.wait())
                await asyncio.wait({recorded, stopping}, return_when=asyncio.FIRST_COMPLETED)
                recorded.cancel()
                if not self._stopping.is_set():
                    await asyncio.wait({stopping}, timeout=self.interval)
                # Cleared before the flush takes the batch, so a sighting recorded while it
                # is written wakes the next round.
                self._recorded.clear()
                try:
                    await self.flush()
                except Exception:
                    # The loop must outlive one bad batch, or no phone would be recorded again.
                    log.exception("inventory: a flush failed")
        finally:
            stopping.cancel()

    async def _in_thread(self, func: Callable[[], T]) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, func)


def _later(older: Sighting | None, newer: Sighting | None) -> Sighting:
    """``newer``, keeping ``older``'s user when ``newer`` names none."""
    if newer is None:
        assert older is not None
        return older
    if older is None or newer.user is not None or older.user is None:
        return newer
    return replace(newer, user=older.user)


def _write(store: Store, sightings: list[Sighting]) -> None:
    store.record_phones([s.record() for s in sightings])
