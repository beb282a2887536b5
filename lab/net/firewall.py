"""The firewall policy: the single source of truth on whether an address is inside or outside.

An address is classified by the configured segments first, then by runtime overrides, the
most specific override winning (a single address beats a range), and finally by the
global flip, which swaps inside and outside for everything. Addresses in neither segment
are outside: the firewall only trusts the corporate LAN. Every change is published as a
``firewall.changed`` event and applies to the very next packet or connection, because
every consumer asks ``classify`` at that moment instead of caching an answer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from lab.errors import FirewallError
from lab.events import EventBus

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Zone(StrEnum):
    """Which side of the corporate firewall an address is on."""

    INSIDE = "inside"
    OUTSIDE = "outside"

    def flipped(self) -> Zone:
        """The other side."""
        return Zone.OUTSIDE if self is Zone.INSIDE else Zone.INSIDE


@dataclass(frozen=True)
class Override:
    """A runtime rule: every address of ``network`` is on ``zone``."""

    network: IPNetwork
    zone: Zone

    def as_dict(self) -> dict[str, str]:
        """A JSON-ready form."""
        return {"network": str(self.network), "zone": self.zone.value}


def parse_network(text: str) -> IPNetwork:
    """An address (``127.10.0.5``) or a range (``127.10.0.0/24``), refused with a reason."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise FirewallError(f"{text!r} is not an IP address or CIDR range") from None


class FirewallPolicy:
    """Classifies addresses as inside or outside from segments plus runtime overrides."""

    def __init__(
        self,
        inside: IPNetwork,
        outside: IPNetwork,
        events: EventBus | None = None,
    ) -> None:
        self.inside = inside
        self.outside = outside
        self.events = events or EventBus()
        self._overrides: dict[IPNetwork, Zone] = {}
        self._flipped = False

    def classify(self, address: str | IPAddress) -> Zone:
        """The zone of ``address`` as the policy stands right now."""
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address.split("%", 1)[0])
            except ValueError:
                return Zone.OUTSIDE
        zone = Zone.INSIDE if address in self.inside else Zone.OUTSIDE
        best = -1
        for network, override in self._overrides.items():
            if address in network and network.prefixlen > best:
                best, zone = network.prefixlen, override
        return zone.flipped() if self._flipped else zone

    def is_inside(self, address: str | IPAddress) -> bool:
        """True when ``address`` is on the corporate side right now."""
        return self.classify(address) is Zone.INSIDE

    @property
    def flipped(self) -> bool:
        """True while everything is flipped."""
        return self._flipped

    @property
    def overrides(self) -> list[Override]:
        """The runtime overrides, most general first."""
        items = sorted(self._overrides.items(), key=lambda item: item[0].prefixlen)
        return [Override(network, zone) for network, zone in items]

    def set_zone(self, target: str | IPNetwork, zone: Zone | str) -> Override:
        """Put an address or range on ``zone`` from the next packet on."""
        network = parse_network(target) if isinstance(target, str) else target
        try:
            zone = Zone(zone)
        except ValueError:
            raise FirewallError(f"{zone!r} is not 'inside' or 'outside'") from None
        self._overrides[network] = zone
        self._changed("set", network=str(network), zone=zone.value)
        return Override(network, zone)

    def clear(self, target: str | IPNetwork | None = None) -> None:
        """Drop one override, or every override and the flip when ``target`` is None."""
        if target is None:
            self._overrides.clear()
            self._flipped = False
            self._changed("reset")
            return
        network = parse_network(target) if isinstance(target, str) else target
        if self._overrides.pop(network, None) is None:
            raise FirewallError(f"no override for {network}")
        self._changed("clear", network=str(network))

    def flip(self, flipped: bool = True) -> None:
        """Swap inside and outside for every address (or undo it)."""
        self._flipped = flipped
        self._changed("flip", flipped=flipped)

    def snapshot(self) -> dict[str, object]:
        """The policy as JSON-ready data."""
        return {
            "inside": str(self.inside),
            "outside": str(self.outside),
            "flipped": self._flipped,
            "overrides": [o.as_dict() for o in self.overrides],
        }

    def _changed(self, action: str, **data: object) -> None:
        self.events.publish("firewall.changed", action=action, **data)
