"""What an update check is answered, and the store snapshot it is decided on.

The request path never reads the store. ``SnapshotWatcher`` holds the store's current
snapshot (lab.store.store.Snapshot: rules, test devices, configuration and a generation
number, all immutable) and a task that refreshes it beside the requests:

- a check takes the snapshot in hand, at once, with no I/O;
- when a check finds it older than ``REFRESH_INTERVAL`` (on the service's monotonic clock)
  it wakes the watcher, which asks the store (one ``PRAGMA data_version``, a reload only
  after a commit); so a change nobody announced is seen within the interval plus one
  check, and an idle lab, or a test on fake loop time, is never woken by a timer;
- a change made in this process (an operation of lab.ops) or announced by the CLI
  through the admin API (``POST /v1/store/refresh``) is taken at once with ``refresh()``,
  so the very next check sees it.

A check is then a pure function of (snapshot, pool, request): ``answer_key`` names what
the answer depends on, ``decide_check`` decides it with lab.store.decision. The check path's
one cache, ``AnswerCache``, keeps built answers by that key for one snapshot generation,
bounded in bytes: phones of one kind at one version share an answer, and nothing is
remembered by object identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lab.errors import ServiceError, StoreError
from lab.events import EventBus
from lab.lifecycle import BackgroundTask
from lab.models import DeviceKind
from lab.service.xmlio import DeviceUpdateRequest
from lab.store.decision import Decision, decide
from lab.store.store import Snapshot, Store

logger = logging.getLogger(__name__)

REFRESH_INTERVAL = 0.5
"""The age at which a check asks for a fresh snapshot (seconds of the service's clock)."""
ANSWER_CACHE_BYTES = 4 * 1024 * 1024
"""What the answer cache may hold: bodies, audit texts and a share for each entry's keeping."""
ENTRY_OVERHEAD = 512
"""An estimate of the bytes an entry costs beside its texts (key, answer and dict slot)."""


class Snapshots(Protocol):
    """Where the check path gets the store's snapshot (``SnapshotWatcher`` in service)."""

    def current(self) -> Snapshot:
        """The snapshot in hand, without I/O."""
        ...


class NoSnapshots:
    """The snapshots of a pool that has not opened its store yet (or has closed it)."""

    def current(self) -> Snapshot:
        raise ServiceError("the update store is not open: start the pool first")


class SnapshotWatcher(BackgroundTask):
    """The update store's current snapshot, refreshed off the request path."""

    task_name = "store snapshot watcher"

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = REFRESH_INTERVAL,
        events: EventBus | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        self._clock = clock
        self._events = events
        self._snapshot = store.snapshot()
        self._taken = clock()
        self._due = asyncio.Event()
        self._failing = False

    @property
    def generation(self) -> int:
        """The generation of the snapshot in hand."""
        return self._snapshot.generation

    def current(self) -> Snapshot:
        """The snapshot in hand; one older than the interval wakes the watcher."""
        if self._clock() - self._taken >= self.interval:
            self._due.set()
        return self._snapshot

    def refresh(self) -> Snapshot:
        """Ask the store now, and hold what it gives (StoreError if it cannot be read)."""
        try:
            snapshot = self.store.snapshot()
        except StoreError as exc:
            self._taken = self._clock()
            if not self._failing:
                self._failing = True
                logger.warning(
                    "the update store cannot be read; serving the last snapshot: %s", exc
                )
                if self._events is not None:
                    self._events.publish("service.store_unreadable", error=str(exc))
            raise
        if self._failing:
            self._failing = False
            logger.info("the update store can be read again")
        moved = snapshot.generation != self._snapshot.generation
        self._snapshot, self._taken = snapshot, self._clock()
        if moved and self._events is not None:
            # Whoever changed the store (the CLI, the admin API, a SQLite shell): a console
            # or a test watching the events sees the service take it.
            self._events.publish("store.reloaded", generation=snapshot.generation)
        return snapshot

    async def run(self) -> None:
        """Refresh whenever a check finds the snapshot old."""
        while True:
            await self._due.wait()
            self._due.clear()
            # An unreadable store was reported by refresh; the next due check tries again.
            with contextlib.suppress(StoreError):
                self.refresh()


@dataclass(frozen=True, kw_only=True)
class AnswerKey:
    """Everything a check's answer depends on, within one snapshot."""

    pool: str
    kind: DeviceKind
    installed: str
    test_device: bool


def answer_key(snapshot: Snapshot, pool: str, request: DeviceUpdateRequest) -> AnswerKey:
    """What the answer to ``request`` at a front end of ``pool`` depends on in ``snapshot``."""
    if request.identity_normalised:
        test_device = request.mac in snapshot.test_macs or request.serial in snapshot.test_serials
    else:
        test_device = snapshot.is_test_device(request.mac, request.serial)
    return AnswerKey(
        pool=pool,
        kind=request.kind,
        installed=request.installed_version,
        test_device=test_device,
    )


def decide_check(snapshot: Snapshot, key: AnswerKey) -> Decision:
    """lab.store.decision.decide for ``key`` on ``snapshot``'s rules of its pool."""
    return decide(key.kind, key.installed, key.test_device, snapshot.rules_for(key.pool))


@dataclass(frozen=True, kw_only=True)
class Answer:
    """What a check is answered, and what its audit line says of it."""

    decision: Decision
    body: bytes
    modules: str
    """The modules returned, space-separated (the audit's ``modules_returned``)."""
    version: str
    """The decision as the audit writes it: a version, ``none``."""

    @property
    def size(self) -> int:
        """What keeping it costs, roughly, in bytes."""
        return len(self.body) + len(self.modules) + len(self.version) + ENTRY_OVERHEAD


class AnswerCache:
    """The check path's one cache: answers by ``AnswerKey`` for one snapshot generation,
    at most ``limit`` bytes, the least recently used dropped first."""

    def __init__(self, limit: int = ANSWER_CACHE_BYTES) -> None:
        self.limit = limit
        self.bytes = 0
        self._generation = 0
        self._entries: OrderedDict[AnswerKey, Answer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def answer(
        self, snapshot: Snapshot, key: AnswerKey, render: Callable[[Decision], Answer]
    ) -> Answer:
        """The answer for ``key`` on ``snapshot``: kept, or decided and rendered now."""
        if snapshot.generation != self._generation:
            self._entries.clear()
            self.bytes = 0
            self._generation = snapshot.generation
        entries = self._entries
        answer = entries.get(key)
        if answer is not None:
            entries.move_to_end(key)
            return answer
        answer = render(decide_check(snapshot, key))
        size = answer.size
        if size <= self.limit:
            entries[key] = answer
            self.bytes += size
            while self.bytes > self.limit:
                _, dropped = entries.popitem(last=False)
                self.bytes -= dropped.size
        return answer
