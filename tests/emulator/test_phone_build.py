"""Making a phone: the one address scheme (the n-th phone of a segment at x.y.1.n of the
lease's segment) and what a PhoneBuilder gives each phone it makes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from emulator import FleetError, Location, PhoneBuilder, PhoneSettings
from emulator.clock import LoopClock
from emulator.lease import Lease
from emulator.models import get_model
from emulator.states import PhoneState

SEGMENTS = {"inside": "127.10.0.0/16", "outside": "127.20.0.0/16"}


def lease(**segments: str) -> Lease:
    return Lease(
        "contoso.test",
        "pool01.contoso.test",
        ("127.10.0.2", 53),
        443,
        segments=segments or SEGMENTS,
    )


def builder(
    the_lease: Lease, workdir: Path, *, settings: PhoneSettings | None = None, hash_from: int = 1
) -> PhoneBuilder:
    """A builder on the running loop's time."""
    clock = LoopClock(asyncio.get_running_loop().time)
    return PhoneBuilder(the_lease, clock, workdir, settings=settings, hash_in_thread_from=hash_from)


@pytest.mark.parametrize(
    ("location", "number", "address"),
    [
        (Location.INSIDE, 1, "127.10.1.1"),
        (Location.INSIDE, 7, "127.10.1.7"),
        (Location.OUTSIDE, 1, "127.20.1.1"),
        (Location.OUTSIDE, 255, "127.20.1.255"),
        (Location.INSIDE, 256, "127.10.2.0"),  # then on through the segment, host 256 + n
        (Location.INSIDE, 65_278, "127.10.255.254"),  # the last host of a /16
    ],
)
async def test_the_nth_phone_of_a_segment_takes_x_y_1_n_of_the_leases_segment(
    tmp_path: Path, location: Location, number: int, address: str
) -> None:
    assert builder(lease(), tmp_path).address(location, number) == address


@pytest.mark.parametrize(
    ("segments", "location", "number", "message"),
    [
        (
            {"inside": "10.1.0.0/24"},
            Location.INSIDE,
            1,
            "^the inside segment 10.1.0.0/24 has no room for phone 1 of it: phone n takes host "
            r"256 \+ n \(x.y.1.n, after the lab's servers\), and the segment's last host is "
            "10.1.0.254$",
        ),
        (SEGMENTS, Location.OUTSIDE, 65_279, "outside segment 127.20.0.0/16 has no room"),
        ({"inside": "10.1.0.0/16"}, Location.OUTSIDE, 1, "names no outside segment"),
        ({"inside": "ten.one"}, Location.INSIDE, 1, "segment 'ten.one' is no address range"),
        (SEGMENTS, Location.INSIDE, 0, r"counted from 1 \(x.y.1.1\), not 0"),
    ],
)
async def test_a_phone_a_segment_has_no_address_for_is_refused_saying_why(
    tmp_path: Path, segments: dict[str, str], location: Location, number: int, message: str
) -> None:
    made = builder(lease(**segments), tmp_path)
    with pytest.raises(FleetError, match=message):
        made.address(location, number)
    with pytest.raises(FleetError, match=message):
        made.phone("CX600", number, location=location)


async def test_a_phone_is_made_powered_off_at_its_address_with_its_options(tmp_path: Path) -> None:
    slow = PhoneSettings(boot_time=120.0)
    made = builder(lease(), tmp_path, settings=slow, hash_from=1)

    # By default the phone is the index-th of its segment; a number or an address says otherwise.
    first = made.phone("CX600", 3, location=Location.OUTSIDE)
    second = made.phone(get_model("HP4120"), 3, number=1)
    third = made.phone("CX600", 4, address="127.10.9.9", settings=PhoneSettings())
    assert [d.address for d in (first, second, third)] == ["127.20.1.3", "127.10.1.1", "127.10.9.9"]

    identity = second.phone.identity
    assert (identity.model.name, identity.index, identity.mac) == ("HP4120", 3, "3C-D9-2B-10-00-03")
    assert all(d.phone.state is PhoneState.OFF for d in (first, second, third))
    assert all(d.lease is made.lease and d.clock is made.clock for d in (first, second, third))
    assert first.network is made.network
    assert first.workdir == tmp_path
    # The builder's settings and options, unless the phone is given its own.
    assert first.phone.settings is slow
    assert third.phone.settings == PhoneSettings()
    assert first.hash_in_thread_from == 1
    assert made.phone("CX600", 5, hash_in_thread_from=99).hash_in_thread_from == 99


async def test_a_phone_talks_through_the_network_it_is_given(tmp_path: Path) -> None:
    made = builder(lease(), tmp_path)
    other = builder(lease(), tmp_path)
    observed: list[object] = []
    driver = made.phone("CX600", 1, network=other.network, observer=observed.append)
    assert driver.network is other.network
    assert driver.observer is not None
    driver.power_on()
    assert observed == [driver]
    await driver.aclose()
