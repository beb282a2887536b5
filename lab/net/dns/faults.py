"""Runtime faults per DNS name, for scenarios: what a broken DNS looks like to a phone.

A fault applies to one FQDN (exactly that name, every type, both views) until cleared:

- ``remove``: the name does not exist (NXDOMAIN with the SOA);
- ``servfail``: SERVFAIL;
- ``delay``: the normal answer, sent ``delay`` seconds later without holding up others;
- ``drop``: no answer at all.

Only names inside the lab's zones can carry a fault. Every change is published as a
``dns.faults.changed`` event (``action`` set, clear or reset; with ``name``, ``fault`` and
``delay`` for set, ``name`` for clear) and reported to the server (which forgets cached
answers), so it applies from the very next query.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from lab.errors import DNSError
from lab.events import EventBus
from lab.net.dns.zones import normalize, zone_of

MAX_DELAY = 3600.0


class FaultKind(StrEnum):
    """What a faulty name does to the queries for it."""

    REMOVE = "remove"
    SERVFAIL = "servfail"
    DELAY = "delay"
    DROP = "drop"


@dataclass(frozen=True)
class Fault:
    """One active fault: the name, its kind and, for ``delay``, the seconds."""

    name: str
    kind: FaultKind
    delay: float = 0.0


class FaultTable:
    """The active faults by name; changes are published and take effect at once."""

    def __init__(
        self,
        zones: Iterable[str],
        events: EventBus | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.zones = tuple(zones)
        self.events = events or EventBus()
        self._on_change = on_change
        self._faults: dict[str, Fault] = {}

    def set(self, name: str, kind: FaultKind | str, delay: float = 0) -> Fault:
        """Make ``name`` faulty from the next query on (replacing any fault it had)."""
        fqdn = self._check_name(name)
        try:
            kind = FaultKind(kind)
        except ValueError:
            known = ", ".join(k.value for k in FaultKind)
            raise DNSError(f"unknown DNS fault kind {kind!r} (expected one of {known})") from None
        number = isinstance(delay, int | float) and not isinstance(delay, bool)
        if not number or not math.isfinite(delay) or delay < 0:
            raise DNSError(f"DNS fault delay must be a finite number >= 0, not {delay!r}")
        if delay > MAX_DELAY:
            raise DNSError(f"DNS fault delay {delay} s is longer than {MAX_DELAY:.0f} s")
        if kind is not FaultKind.DELAY and delay:
            raise DNSError(f"a delay only applies to the 'delay' fault, not to {kind.value!r}")
        fault = Fault(fqdn, kind, float(delay))
        self._faults[fqdn] = fault
        # "kind" is the event's own kind on the bus, so the fault's kind travels as "fault".
        self._changed("set", name=fqdn, fault=kind.value, delay=fault.delay)
        return fault

    def clear(self, name: str) -> None:
        """Remove the fault on ``name``; DNSError if it has none."""
        fqdn = normalize(name)
        if self._faults.pop(fqdn, None) is None:
            raise DNSError(f"no DNS fault on {fqdn!r}")
        self._changed("clear", name=fqdn)

    def clear_all(self) -> None:
        """Remove every fault."""
        self._faults.clear()
        self._changed("reset")

    def get(self, name: str) -> Fault | None:
        """The fault on ``name`` (already normalized), if any."""
        return self._faults.get(name)

    def __len__(self) -> int:
        return len(self._faults)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The active faults as JSON-ready data: name -> {"kind", "delay"}, sorted by name."""
        return {
            name: {"kind": self._faults[name].kind.value, "delay": self._faults[name].delay}
            for name in sorted(self._faults)
        }

    def _check_name(self, name: str) -> str:
        fqdn = normalize(name) if isinstance(name, str) else ""
        if not fqdn or zone_of(fqdn, self.zones) is None:
            zones = ", ".join(self.zones)
            raise DNSError(f"cannot put a fault on {name!r}: it is not in a lab zone ({zones})")
        return fqdn

    def _changed(self, action: str, **data: Any) -> None:
        if self._on_change is not None:
            self._on_change()
        self.events.publish("dns.faults.changed", action=action, **data)
