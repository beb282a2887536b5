"""What the service asks of the update store on every check.

The handlers depend only on ``Decider``: a server name and a parsed request in, a
``lab.store.decision.Decision`` out. ``StoreDecider`` is the production one: it takes the
store's snapshot (a reload after any commit by any process) and runs the pure decision on
it, so a change made by the CLI is seen at the next check without a restart. Decisions
are remembered per snapshot: every phone of a kind at one version (test devices apart)
gets the same one, and a new snapshot starts afresh.

Asking SQLite whether anything was committed (``PRAGMA data_version``) takes two file
locks, the largest part of a remembered decision. So the decider first looks at the
header of the store's WAL index (the ``-shm`` file every connection shares; its layout is
SQLite's documented WAL-index format), one ``pread`` and no lock: every commit by any
connection rewrites it (a change counter, the last frame, the salts), so while its bytes
stay the same nothing was committed and the snapshot in hand is current. The store itself
is asked when they differ, at least every ``RECHECK_SECONDS`` whatever they say, and on
every check when the index cannot be opened.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from lab.models import DeviceKind
from lab.service.xmlio import DeviceUpdateRequest
from lab.store.decision import Decision, decide
from lab.store.store import Snapshot, Store

# Distinct (server, kind, version, test device) answers remembered per snapshot; beyond it
# (phones reporting ever new versions) the memory starts over.
DECISION_CACHE_SIZE = 4096
# The longest a snapshot is used without asking the store, whatever the WAL index says.
RECHECK_SECONDS = 0.5
# The WAL-index header: two copies of 48 bytes at the start of the -shm file.
WAL_INDEX_HEADER = 96


class Decider(Protocol):
    """Decides what a phone checking at ``server`` is served."""

    def decide(self, server: str, request: DeviceUpdateRequest) -> Decision:
        """The decision for ``request`` at ``server`` (cheap: called on every check)."""
        ...


class StoreDecider:
    """Decisions from the update store of a state directory."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._decisions: dict[tuple[str, DeviceKind, str, bool], Decision] = {}
        self._index = _open_index(Path(f"{store.path}-shm"))
        if self._index is not None:
            weakref.finalize(self, os.close, self._index)
        # The snapshot the store gave last, the index header read before, and when.
        self._known: Snapshot | None = None
        self._header = b""
        self._asked = 0.0

    def decide(self, server: str, request: DeviceUpdateRequest) -> Decision:
        """lab.store.decision.decide on the store's current snapshot for ``server``'s rules."""
        snapshot = self._current()
        if snapshot is not self._snapshot or len(self._decisions) >= DECISION_CACHE_SIZE:
            self._snapshot, self._decisions = snapshot, {}
        test_device = _is_test_device(snapshot, request)
        kind = request.kind
        installed = request.installed_version
        key = (server, kind, installed, test_device)
        decision = self._decisions.get(key)
        if decision is None:
            decision = decide(kind, installed, test_device, snapshot.rules_for(server))
            self._decisions[key] = decision
        return decision

    def _current(self) -> Snapshot:
        """The store's snapshot, asking the store only when something may have changed."""
        if self._index is None:
            return self.store.snapshot()
        try:
            header = os.pread(self._index, WAL_INDEX_HEADER, 0)
        except OSError:
            return self.store.snapshot()
        now = self._clock()
        snapshot = self._known
        if snapshot is None or header != self._header or now - self._asked >= RECHECK_SECONDS:
            # Read before asking: a commit landing in between is seen at the next check.
            snapshot = self._known = self.store.snapshot()
            self._header, self._asked = header, now
        return snapshot


def _open_index(path: Path) -> int | None:
    """A read-only descriptor of a WAL index; None when there is none."""
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _is_test_device(snapshot: Snapshot, request: DeviceUpdateRequest) -> bool:
    """Snapshot.is_test_device, without normalising again what the parser normalised."""
    if request.identity_normalised:
        return request.mac in snapshot.test_macs or request.serial in snapshot.test_serials
    return snapshot.is_test_device(request.mac, request.serial)
