"""A phone outside the firewall: refused without a user, then updated through the edge with NTLM."""

from __future__ import annotations

import pytest

from emulator.events import Purpose
from emulator.phonelog import LogCode
from emulator.screens import system_information
from emulator.states import PhoneState
from lab.ops.harness import (
    ALICE,
    EDGE,
    FACTORY,
    NEW,
    T0,
    Phones,
    RunningLab,
    idle_on,
    logged,
)
from lab.service.problems import Diagnostic


@pytest.mark.looptime
async def test_an_outside_phone_is_refused_until_a_user_signs_in_then_updates_through_the_edge(
    device_lab: RunningLab, phones: Phones
) -> None:
    device_lab.publish("6725ip", NEW)
    phone = phones.phone("6725ip", inside=False)
    mac = phone.phone.identity.mac
    phone.power_on()
    refused_at = await phone.wait_for(lambda d: d.phone.state is PhoneState.IDLE, until=T0 + 3600)

    # DNS answers the edge outside; the external site refuses a phone with no user.
    discovery = "ucupdates-r2.contoso.test"
    assert logged(phone, LogCode.RESOLVED, host=discovery, address=EDGE) == [refused_at]
    (refusal,) = phone.phone.log.coded(LogCode.DENIED)
    assert (refusal.facts.purpose, refusal.facts.status) == (Purpose.CHECK, 403)
    assert refusal.facts.diagnostics is not None
    assert refusal.facts.diagnostics.code == Diagnostic.NO_SIGNED_IN_USER.code
    assert phone.phone.current_version == FACTORY
    assert phone.files_downloaded == 0
    checks = device_lab.requests(mac)
    assert [(r.site, r.client_address, r.status) for r in checks] == [("external", EDGE, 403)]

    phone.sign_in(ALICE)
    await phone.wait_for(idle_on(NEW), until=refused_at + 3600)

    core = phone.phone
    assert core.signed_in_user == "alice@contoso.test"
    assert logged(phone, LogCode.SIGNED_IN, user="alice@contoso.test")
    # Everything after the refusal came through the edge to the external sites, and
    # the external site serves checks and files only to an NTLM-authenticated user.
    later = device_lab.audit[len(checks) :]
    assert {(r.site, r.client_address) for r in later} == {("external", EDGE)}
    served = [r for r in later if r.status == 200]
    assert [r.path.split("/")[1] for r in served] == [
        "Provisioning",
        "RequestHandlerExt",
        "DeviceUpdateFiles_Ext",
        "DeviceUpdateFiles_Ext",
        "RequestHandlerExt",
    ]
    assert {r.last_signed_in_user for r in served if r.mac} == {"alice@contoso.test"}
    # Each authenticated request was first challenged (401), as NTLM does per connection.
    assert any(r.status == 401 for r in later)
    screen = system_information(core)
    assert f"Current version: {NEW}\n" in screen
    assert f"Backup version:  {FACTORY}\n" in screen
    assert "Update server:   https://webext.contoso.test:" in screen
    assert "Signed-in user:  alice@contoso.test\n" in screen
