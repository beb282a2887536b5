"""Making a phone: its core and its driver, at its own address, the one way everyone does.

Rules of this module:
- Every emulated phone is made by a `PhoneBuilder`: a fleet's (emulator.fleet), and through
  the public API the lab's (its harness, demo and scenarios). A builder holds what the phones
  of one lease share (the lease, the clock, the network, where downloads go, default
  settings); each phone adds its model and index, where it is plugged in, its seed, its
  faults and whoever watches it.
- One address scheme: the n-th phone of a segment (n from 1) takes x.y.1.n of it, that is
  host 256 + n, clear of the lab's servers on the first 256 addresses. The segments are the
  lease's, named by location (inside, outside): the phone is never told which side of the
  firewall it is on, but whoever plugs it in knows the socket. A lease that names no such
  segment, or a segment too small for the n-th phone, is refused with FleetError.
- Making a phone costs what its parts cost: a segment is parsed once per builder, and a
  fleet of ten thousand makes ten thousand cores and drivers, nothing more.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Sequence
from pathlib import Path

from emulator.clock import Clock
from emulator.core import Phone
from emulator.driver import LARGE_IMAGE, ChangeObserver, LeaseNetwork, Network, PhoneDriver
from emulator.errors import FleetError
from emulator.faults import AnyFault
from emulator.lease import Lease
from emulator.models import PhoneModel, get_model
from emulator.settings import PhoneSettings

SERVER_HOSTS = 256
"""Host numbers of a segment below this are the lab's (x.y.0.* in a /16); phone n takes
host ``SERVER_HOSTS + n`` (x.y.1.n)."""

Segment = ipaddress.IPv4Network | ipaddress.IPv6Network


class Location(enum.StrEnum):
    """Which side of the firewall a phone is plugged in on (the lease's segment of that name)."""

    INSIDE = "inside"
    OUTSIDE = "outside"


class PhoneBuilder:
    """Makes the phones of one lease and clock: each one's core and driver, at its address.

    ``network`` is what the phones talk through; by default the lease's real network
    (one `LeaseNetwork`, at most ``max_clients`` phones in an exchange at once), which a
    caller may wrap (to watch or hold exchanges) and hand back to `phone`.
    """

    def __init__(
        self,
        lease: Lease,
        clock: Clock,
        workdir: Path,
        *,
        network: Network | None = None,
        max_clients: int | None = None,
        settings: PhoneSettings | None = None,
        hash_in_thread_from: int = LARGE_IMAGE,
    ) -> None:
        self.lease = lease
        self.clock = clock
        self.workdir = workdir
        self.network: Network = (
            network if network is not None else LeaseNetwork(lease, clock, max_clients=max_clients)
        )
        self.settings = settings
        self.hash_in_thread_from = hash_in_thread_from
        self._segments: dict[Location, Segment] = {}

    def address(self, location: Location, number: int) -> str:
        """The address of the ``number``-th phone (from 1) of the ``location`` segment: x.y.1.n.

        FleetError when the lease names no such segment or it has no room for that phone.
        """
        if number < 1:
            raise FleetError(f"phones of a segment are counted from 1 (x.y.1.1), not {number}")
        segment = self._segment(location)
        host = SERVER_HOSTS + number
        # The last address of a segment is its broadcast address, no phone's.
        if host >= segment.num_addresses - 1:
            raise FleetError(
                f"the {location.value} segment {segment} has no room for phone {number} of it: "
                f"phone n takes host {SERVER_HOSTS} + n (x.y.1.n, after the lab's servers), "
                f"and the segment's last host is {segment.broadcast_address - 1}"
            )
        return str(segment.network_address + host)

    def phone(
        self,
        model: PhoneModel | str,
        index: int,
        *,
        location: Location = Location.INSIDE,
        number: int | None = None,
        address: str | None = None,
        seed: int | str = 0,
        network: Network | None = None,
        settings: PhoneSettings | None = None,
        faults: Sequence[AnyFault] = (),
        observer: ChangeObserver | None = None,
        hash_in_thread_from: int | None = None,
    ) -> PhoneDriver:
        """Phone ``index`` of ``model``, powered off, with its driver on the running loop.

        Its address is ``address`` if given, else that of the ``number``-th phone (by
        default its index) of its ``location``. Its back-off jitter comes from a RNG seeded
        with ``seed``; ``network``, ``settings`` and ``hash_in_thread_from`` replace the
        builder's for this phone; ``observer`` is told of its every change.
        """
        if isinstance(model, str):
            model = get_model(model)
        if address is None:
            address = self.address(location, index if number is None else number)
        core = Phone(
            model.identity(index),
            rng=random.Random(seed),
            settings=settings if settings is not None else self.settings,
        )
        return PhoneDriver(
            core,
            lease=self.lease,
            clock=self.clock,
            network=network if network is not None else self.network,
            address=address,
            workdir=self.workdir,
            faults=faults,
            hash_in_thread_from=(
                hash_in_thread_from if hash_in_thread_from is not None else self.hash_in_thread_from
            ),
            observer=observer,
        )

    def _segment(self, location: Location) -> Segment:
        segment = self._segments.get(location)
        if segment is None:
            text = self.lease.segments.get(location.value)
            if text is None:
                raise FleetError(
                    f"the lease names no {location.value} segment to give phones addresses in"
                )
            try:
                segment = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise FleetError(
                    f"the lease's {location.value} segment {text!r} is no address range"
                ) from None
            self._segments[location] = segment
        return segment
