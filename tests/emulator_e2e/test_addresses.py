"""One address scheme for every phone: a fleet, the lab's harness and its demo all make
phones with the emulator's PhoneBuilder, so the same phone gets the same address from each
(the n-th phone of a segment at x.y.1.n of the lease's segment)."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from rich.console import Console

from emulator.build import Location
from emulator.errors import FleetError
from emulator.fleet import Fleet, PhoneSpec
from emulator.lease import Lease
from emulator.models import get_model
from lab.errors import ConfigError
from lab.net.config import LabConfig, default_config
from lab.ops.demo import Narrator, demo_fleet, make_drivers
from lab.ops.harness import Phones

DEFAULT_FLEET_ADDRESSES = [
    "127.10.1.1",  # #1 CX600, the first inside phone
    "127.10.1.2",  # #2 CX3000
    "127.20.1.1",  # #3 HP4120, the first outside phone
    "127.20.1.2",  # #4 6725ip
    "127.10.1.3",  # #5 CX500
    "127.10.1.4",  # #6 CX700
]
"""Where the phones of lab/default.toml's demo fleet are plugged in."""


def lease_of(config: LabConfig) -> Lease:
    """The lease a lab of ``config`` publishes, as far as addresses go."""
    segments = {"inside": str(config.inside), "outside": str(config.outside)}
    return Lease("contoso.test", "pool01.contoso.test", ("127.10.0.2", 53), 443, segments=segments)


@pytest_asyncio.fixture
async def config_and_phones(tmp_path: Path) -> AsyncIterator[tuple[LabConfig, Phones]]:
    """The default lab config, and the harness's phones on its lease (no lab needs to run)."""
    config = default_config()
    phones = Phones(lease_of(config), tmp_path / "phones")
    try:
        yield config, phones
    finally:
        await phones.aclose()


def narrator() -> Narrator:
    return Narrator(Console(file=io.StringIO()), [])


async def test_the_demo_a_fleet_and_the_harness_give_each_phone_the_same_address(
    config_and_phones: tuple[LabConfig, Phones], tmp_path: Path
) -> None:
    config, phones = config_and_phones
    demo = demo_fleet(config)
    make_drivers(demo, phones, narrator(), config)
    assert [phone.address for phone in demo] == DEFAULT_FLEET_ADDRESSES

    specs = [
        PhoneSpec(get_model(phone.entry.model), phone.number, Location(phone.entry.location))
        for phone in demo
    ]
    fleet = Fleet(specs, lease=phones.lease, clock=phones.clock, workdir=tmp_path / "fleet")
    assert [driver.address for driver in fleet] == DEFAULT_FLEET_ADDRESSES

    # The harness's phone is the index-th of its segment unless told otherwise.
    more = Phones(phones.lease, tmp_path / "more")
    try:
        assert more.phone("HP4120", index=2, inside=False).address == "127.20.1.2"
        assert more.phone("CX500", index=5, number=3).address == "127.10.1.3"
    finally:
        await more.aclose()


async def test_a_fleet_takes_addresses_after_its_offset_and_refuses_a_shared_one(
    config_and_phones: tuple[LabConfig, Phones], tmp_path: Path
) -> None:
    _, phones = config_and_phones
    cx600 = get_model("CX600")
    specs = [PhoneSpec(cx600, 1), PhoneSpec(cx600, 2, Location.OUTSIDE), PhoneSpec(cx600, 3)]
    # A worker's share of a larger fleet: its phones come after the other workers'.
    fleet = Fleet(
        specs, lease=phones.lease, clock=phones.clock, workdir=tmp_path, address_offset=300
    )
    assert [driver.address for driver in fleet] == ["127.10.2.45", "127.20.2.45", "127.10.2.46"]

    clash = [PhoneSpec(cx600, 1), PhoneSpec(cx600, 2, address="127.10.1.1")]
    with pytest.raises(FleetError, match="two phones of the fleet would share an address"):
        Fleet(clash, lease=phones.lease, clock=phones.clock, workdir=tmp_path)


async def test_a_segment_too_small_for_the_demo_fleet_is_a_config_error_saying_why(
    tmp_path: Path,
) -> None:
    small = ipaddress.IPv4Network("127.20.0.0/24")
    config = dataclasses.replace(default_config(), outside=small)
    phones = Phones(lease_of(config), tmp_path / "phones")
    try:
        message = (
            "fleet: the outside segment 127.20.0.0/24 has no room for phone 1 of it: phone n "
            "takes host 256 + n"
        )
        with pytest.raises(ConfigError, match=re.escape(message)) as refused:
            make_drivers(demo_fleet(config), phones, narrator(), config)
        assert refused.value.key == "fleet"
        # The same words as a fleet on that lease gets.
        with pytest.raises(FleetError, match=re.escape("outside segment 127.20.0.0/24 has no")):
            Fleet(
                [PhoneSpec(get_model("HP4120"), 3, Location.OUTSIDE)],
                lease=phones.lease,
                clock=phones.clock,
                workdir=tmp_path,
            )
    finally:
        await phones.aclose()
