"""What the service asks of the update store on every check.

The handlers depend only on ``Decider``: a server name and a parsed request in, a
``lab.decision.Decision`` out. ``StoreDecider`` is the production one: it takes the
store's snapshot (one ``PRAGMA data_version`` while nothing changed, a reload after any
commit by any process) and runs the pure decision on it, so a change made by the CLI is
seen at the next check without a restart.
"""

from __future__ import annotations

from typing import Protocol

from lab.decision import Decision
from lab.models import DeviceKind
from lab.service.xmlio import DeviceUpdateRequest
from lab.store import Store


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

    def decide(self, server: str, request: DeviceUpdateRequest) -> Decision:
        """lab.decision.decide on the store's current snapshot for ``server``'s rules."""
        return self.store.snapshot().decide(
            server, device_kind(request), request.installed_version, request.mac, request.serial
        )
