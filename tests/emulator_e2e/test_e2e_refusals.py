"""Firmware a phone must refuse: an image altered in the file store, a catalog of another vendor."""

from __future__ import annotations

import pytest

from emulator.driver import PhoneDriver
from emulator.errors import FirmwareProblem
from emulator.phonelog import LogCode
from emulator.states import PhoneState
from lab.ops.harness import FACTORY, NEW, T0, Phones, RunningLab, logged


async def refused(phone: PhoneDriver) -> FirmwareProblem | None:
    """Run ``phone`` until it settles after its first check; the check its update failed."""
    phone.power_on()
    await phone.wait_for(lambda d: d.phone.state is PhoneState.IDLE, until=T0 + 3600)
    core = phone.phone
    assert core.current_version == FACTORY
    assert core.backup_version is None
    assert core.staged_version is None
    assert phone.files_downloaded == 2
    assert not phone.directory.exists()  # what it downloaded is gone
    (line,) = core.log.coded(LogCode.UPDATE_REFUSED)
    assert (line.facts.version, line.facts.previous) == (NEW, FACTORY)
    return line.facts.firmware


@pytest.mark.looptime
@pytest.mark.parametrize("in_thread", [False, True], ids=["hashed-on-loop", "hashed-in-thread"])
async def test_an_image_altered_in_the_file_store_is_refused(
    device_lab: RunningLab, phones: Phones, in_thread: bool
) -> None:
    device_lab.publish("CX600", NEW)
    device_lab.tamper("CX600", NEW)
    phone = phones.phone(hash_in_thread_from=1 if in_thread else 1 << 30)
    assert await refused(phone) is FirmwareProblem.ALTERED
    # The catalog itself was fine: only the image failed.
    assert logged(phone, LogCode.CATALOG_VERIFIED, version=NEW)


@pytest.mark.looptime
async def test_a_catalog_signed_by_another_vendor_is_refused(
    device_lab: RunningLab, phones: Phones
) -> None:
    hp = device_lab.lab.pki.vendor("HP")
    # An administrator whose lab trusts the wrong key imports it without complaint.
    device_lab.publish("CX600", NEW, signer=hp, trusted=lambda vendor: hp.certificate_pem())
    phone = phones.phone()
    assert await refused(phone) is FirmwareProblem.NOT_SIGNED
    assert not logged(phone, LogCode.IMAGE_VERIFIED)
