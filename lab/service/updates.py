"""What the service asks of the update store on every check.

The handlers depend only on ``Decider``: a server name and a parsed request in, a
``lab.decision.Decision`` out. ``StoreDecider`` is the production one: it takes the
store's snapshot (one ``PRAGMA data_version`` while nothing changed, a reload after any
commit by any process) and runs the pure decision on it, so a change made by the CLI is
seen at the next check without a restart. Decisions are remembered per snapshot: every
phone of a kind at one version (test devices apart) gets the same one, and a new snapshot
starts afresh.
"""

from __future__ import annotations

from typing import Protocol

from lab.decision import Decision, decide
from lab.models import DeviceKind
from lab.service.xmlio import DeviceUpdateRequest
from lab.store import Snapshot, Store

# Distinct (server, kind, version, test device) answers remembered per snapshot; beyond it
# (phones reporting ever new versions) the memory starts over.
DECISION_CACHE_SIZE = 4096


def device_kind(request: DeviceUpdateRequest) -> DeviceKind:
    """The device kind a request reports."""
    return DeviceKind(
        request.device_type, request.vendor, request.model, request.revision, request.locale
    )


class Decider(Protocol):
    """Decides what a phone checking at ``server`` is served."""

    def decide(self, server: str, request: DeviceUpdateRequest) -> Decision:
        """The decision for ``request`` at ``server`` (cheap: called on every check)."""
        ...


class StoreDecider:
    """Decisions from the update store of a state directory."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._snapshot: Snapshot | None = None
        self._decisions: dict[tuple[str, DeviceKind, str, bool], Decision] = {}

    def decide(self, server: str, request: DeviceUpdateRequest) -> Decision:
        """lab.decision.decide on the store's current snapshot for ``server``'s rules."""
        snapshot = self.store.snapshot()
        if snapshot is not self._snapshot or len(self._decisions) >= DECISION_CACHE_SIZE:
            self._snapshot, self._decisions = snapshot, {}
        test_device = snapshot.is_test_device(request.mac, request.serial)
        kind = device_kind(request)
        installed = request.installed_version
        key = (server, kind, installed, test_device)
        decision = self._decisions.get(key)
        if decision is None:
            decision = decide(kind, installed, test_device, snapshot.rules_for(server))
            self._decisions[key] = decision
        return decision
