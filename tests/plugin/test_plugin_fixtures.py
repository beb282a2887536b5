"""The plugin's fixtures: a lab of its own per test, phones and their clock on fake time
(a user's own fixtures on them too), the session's PKI, and everything stopped at teardown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from emulator.clock import Clock
from emulator.driver import PhoneDriver
from emulator.phonelog import LogCode
from emulator.states import PhoneState
from lab.errors import IdentityError
from lab.net.config import LabConfig
from lab.net.pki import LabPKI
from lab.ops.harness import BOOT, DAY, IDLE_WAIT, NEW, T0, Phones, RunningLab, idle_on, logged
from lab.ops.runner import RUN_FILE
from lab.store.store import Store

S = PhoneState


@pytest.mark.looptime
@pytest.mark.parametrize(("model", "other"), [("CX600", "HP4120"), ("HP4120", "CX600")])
async def test_each_test_has_a_fresh_lab_and_sees_only_its_own_rules(
    device_lab: RunningLab, phones: Phones, model: str, other: str
) -> None:
    # Whichever of the two runs second would see the first one's rule if state were shared.
    with Store.open(device_lab.state_dir) as store:
        assert store.rules() == []
    assert device_lab.audit == []
    assert len(device_lab.lab.dns.query_log) == 0

    device_lab.publish(model, NEW)

    with Store.open(device_lab.state_dir) as store:
        rules = {(rule.pool, rule.kind.model, rule.approved) for rule in store.rules()}
    # Published into every pool of the lab.
    assert rules == {("pool01.contoso.test", model, NEW), ("se01.contoso.test", model, NEW)}
    # A phone of the other model is offered nothing: the other test's rule is not here.
    phone = phones.phone(other)
    phone.power_on()
    await phone.wait_for(lambda d: d.phone.state is S.IDLE, until=T0 + 3600)
    assert logged(phone, LogCode.UP_TO_DATE) == [T0 + BOOT]


@pytest.mark.looptime
async def test_the_virtual_clock_reads_t0_as_the_test_starts_and_follows_fake_time(
    device_lab: RunningLab, phones: Phones, virtual_clock: Clock
) -> None:
    # The lab and phones were started on the test's fake time: one clock, no offset.
    assert virtual_clock.now() == T0
    assert virtual_clock is phones.clock
    device_lab.publish("CX600", NEW)
    phone = phones.phone()
    assert phone.clock is virtual_clock
    phone.power_on()
    updated = await phone.wait_for(idle_on(NEW), until=T0 + 3600)
    assert updated > T0 + 300  # five minutes of phone time and more, in no real time
    assert virtual_clock.now() == updated
    loop = asyncio.get_running_loop()
    assert virtual_clock.loop_time(updated) == loop.time()


@pytest_asyncio.fixture
async def updated_phone(device_lab: RunningLab, phones: Phones) -> PhoneDriver:
    """A user's own fixture on the plugin's: a phone that has updated to NEW."""
    device_lab.publish("CX600", NEW)
    phone = phones.phone()
    phone.power_on()
    await phone.wait_for(idle_on(NEW), until=T0 + 3600)
    return phone


@pytest.mark.looptime
async def test_a_users_own_fixture_on_these_shares_the_tests_fake_time(
    updated_phone: PhoneDriver, virtual_clock: Clock
) -> None:
    # The fixture ran on the same fake time as the lab: times exact, and the test goes on
    # from where the fixture left off.
    updated = T0 + BOOT + IDLE_WAIT + BOOT
    assert updated_phone.phone.last_update == updated
    assert virtual_clock.now() == updated
    await updated_phone.wait_until(updated + DAY + 1)
    assert logged(updated_phone, LogCode.CHECKING)[-2:] == [updated, updated + DAY]


@pytest.mark.looptime(False)
async def test_a_test_on_the_real_clock_gets_a_lab_and_phones_on_the_real_clock(
    phones: Phones, virtual_clock: Clock
) -> None:
    assert T0 <= virtual_clock.now() < T0 + 60
    phone = phones.phone()
    phone.power_on()
    assert phone.phone.state is S.BOOTING


@pytest.mark.looptime
async def test_the_lab_uses_the_sessions_pki_and_its_config(
    device_lab: RunningLab, lab_config: LabConfig, lab_pki_dir: Path
) -> None:
    assert device_lab.config is lab_config
    assert lab_config.pki.dir == lab_pki_dir
    assert {lab_config.ports.dns, lab_config.ports.internal, lab_config.ports.edge} == {0}
    # Made when the session's first lab started; this lab found them made.
    assert LabPKI(lab_config).ensure() == []
    assert device_lab.lab.pki.directory == lab_pki_dir
    assert device_lab.lease.ca_cert == (lab_pki_dir / "ca.pem").resolve()


@pytest.mark.looptime
async def test_a_phone_is_made_once_and_a_second_one_with_its_mac_is_refused(
    phones: Phones,
) -> None:
    first = phones.phone("CX600", index=3)
    message = r"^phone CX600 #3 \(MAC 00-04-F2-00-00-03\) is already made on this lab: "
    with pytest.raises(IdentityError, match=message):
        phones.phone("CX600", index=3, inside=False)
    # Another index, or another model at the same index, is another phone.
    others = [phones.phone("CX600", index=4), phones.phone("HP4120", index=3)]
    assert phones.drivers == [first, *others]
    assert len({driver.phone.identity.mac for driver in phones.drivers}) == 3


@pytest_asyncio.fixture
async def afterwards() -> AsyncIterator[list[Callable[[], None]]]:
    """Checks run after the other fixtures' teardown (set up first, so torn down last)."""
    checks: list[Callable[[], None]] = []
    yield checks
    for check in checks:
        check()


@pytest.mark.looptime
async def test_the_lab_and_its_phones_stop_at_teardown(
    afterwards: list[Callable[[], None]], device_lab: RunningLab, phones: Phones
) -> None:
    phone = phones.phone()
    phone.power_on()
    await phone.wait_for(lambda d: d.phone.state is S.BOOTING)
    run_file = device_lab.state_dir / RUN_FILE
    assert run_file.exists()

    def stopped() -> None:
        assert not run_file.exists()  # a lab withdraws run.json as it stops
        phone.power_off()  # a stopped driver feeds its phone nothing more
        assert phone.phone.state is S.BOOTING

    afterwards.append(stopped)
