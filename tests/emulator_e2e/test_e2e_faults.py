"""Faults fed to real phones at a real lab: a power cut while installing, a boot that fails,
a wrong clock. Each leaves the phone on an image that runs, for the reason its log gives."""

from __future__ import annotations

import pytest

from emulator.errors import CertificateProblem
from emulator.events import Purpose
from emulator.faults import BootFailure, PowerCut, WrongClock
from emulator.phonelog import LogCode
from emulator.slots import SlotName, SlotStatus
from emulator.states import PhoneState
from lab.ops.harness import (
    BOOT,
    DAY,
    FACTORY,
    IDLE_WAIT,
    NEW,
    T0,
    Phones,
    RunningLab,
    entered,
    idle_on,
    logged,
    version_at,
)

S = PhoneState


@pytest.mark.looptime
async def test_a_power_cut_while_installing_damages_only_the_slot_being_written(
    device_lab: RunningLab, phones: Phones
) -> None:
    device_lab.publish("CX600", NEW)
    phone = phones.phone(faults=[PowerCut()])  # 10 s into installing, back 60 s later
    phone.power_on()
    await phone.wait_for(idle_on(NEW), until=T0 + 3600)

    cut = T0 + BOOT + 10
    assert entered(phone, S.OFF) == [cut]
    (lost,) = phone.phone.log.coded(LogCode.POWER_CUT_INSTALLING)
    assert (lost.time, lost.facts.version, lost.facts.slot) == (cut, NEW, SlotName.B)
    assert version_at(phone, cut) == FACTORY  # it keeps running its own image
    # Power back: the phone starts its old image, is told of the damaged slot, and
    # fetches the update again.
    assert entered(phone, S.BOOTING) == [T0, cut + 60, cut + 60 + BOOT + IDLE_WAIT]
    assert logged(phone, LogCode.BACKUP_DAMAGED, version=NEW, slot=SlotName.B) == [cut + 60]
    assert phone.files_downloaded == 4
    assert (phone.phone.current_version, phone.phone.backup_version) == (NEW, FACTORY)


@pytest.mark.looptime
async def test_a_new_image_that_does_not_start_sends_the_phone_back_to_its_backup(
    device_lab: RunningLab, phones: Phones
) -> None:
    device_lab.publish("CX600", NEW)
    phone = phones.phone(faults=[BootFailure(after=5.0)])
    phone.power_on()
    restart = T0 + BOOT + IDLE_WAIT  # five minutes after the verified download, installing included
    await phone.wait_for(
        lambda d: d.phone.state is S.IDLE and d.timeline[-1].time > restart,
        until=T0 + 3600,
    )

    core = phone.phone
    assert core.failed_versions == {NEW: restart + 5}
    assert logged(phone, LogCode.BOOT_FAILED, version=NEW) == [restart + 5]
    assert logged(phone, LogCode.RETURNING_TO_BACKUP, version=FACTORY) == [restart + 5]
    assert core.current_version == FACTORY
    assert core.slots[SlotName.B].status is SlotStatus.FAILED
    # The service still offers NEW; the phone does not download it again.
    assert logged(phone, LogCode.NOT_REINSTALLED, version=NEW) == [restart + 5 + BOOT]
    assert phone.files_downloaded == 2


@pytest.mark.looptime
async def test_a_phone_whose_clock_is_wrong_refuses_the_certificates_until_it_is_set_right(
    device_lab: RunningLab, phones: Phones
) -> None:
    device_lab.publish("CX600", NEW)
    phone = phones.phone(faults=[WrongClock(offset=-400 * DAY)])
    phone.power_on()
    gave_up = await phone.wait_for(
        lambda d: d.phone.state is S.IDLE, until=T0 + 3600, what="giving up"
    )

    refusals = logged(
        phone, LogCode.CONNECTION_FAILED, certificate=CertificateProblem.NOT_YET_VALID
    )
    # Every front end, on the first try and on every one of the five retries.
    assert len(refusals) == 2 * (1 + phone.phone.settings.max_retries)
    assert logged(phone, LogCode.GAVE_UP, purpose=Purpose.CHECK) == [gave_up]
    assert phone.phone.current_version == FACTORY
    assert phone.files_downloaded == 0
    assert not device_lab.audit  # nothing reached HTTP: the TLS handshakes were refused

    phone.set_clock_offset(0.0)
    await phone.wait_for(idle_on(NEW), until=T0 + 2 * DAY)
    assert logged(phone, LogCode.OFFERED, version=NEW) == [T0 + BOOT + DAY]
