"""A phone inside updates from a real lab: DNS discovery, download, checks, idle wait, restart.

Everything is real (the lab's DNS, front ends and edge on loopback, TLS, the emulator's
driver and core) and runs on fake loop time, so the times asserted are exact.
"""

from __future__ import annotations

import pytest

from emulator.clock import to_datetime
from emulator.faults import Call, Trigger
from emulator.phonelog import LogCode, format_time
from emulator.routes import RouteKind
from emulator.screens import system_information
from emulator.settings import PhoneSettings
from emulator.slots import SlotName
from emulator.states import PhoneState
from lab.net.dnsprobe import query
from lab.ops.harness import (
    BOOT,
    DAY,
    FACTORY,
    IDLE_WAIT,
    NEW,
    T0,
    HeldNetwork,
    Phones,
    RunningLab,
    entered,
    idle_on,
    logged,
    version_at,
)
from lab.store.decision import Action

S = PhoneState


def screen_date(t: float) -> str:
    return to_datetime(t).strftime("%Y-%m-%d %H:%M UTC")


@pytest.mark.looptime
@pytest.mark.parametrize("flash_time", [0.0, 30.0])
async def test_a_new_phone_inside_updates_and_restarts_five_minutes_after_the_download(
    device_lab: RunningLab, phones: Phones, flash_time: float
) -> None:
    # The five minutes without a call or use start as the download is verified, as on a
    # real phone, and run on while the image is installed (the emulator's default 30 s).
    device_lab.publish("CX600", NEW)
    phone = phones.phone(settings=PhoneSettings(flash_time=flash_time))
    phone.power_on()
    await phone.wait_for(idle_on(NEW), until=T0 + 3600)
    core = phone.phone

    # Discovery: never signed in, so DNS for ucupdates-r2.<lease domain>, asked from
    # the phone's own inside address and answered from the internal view.
    assert core.signed_in_user is None
    discovery = device_lab.lease.discovery_url
    assert discovery.startswith("https://ucupdates-r2.contoso.test:")
    assert logged(phone, LogCode.CHECKING, route=RouteKind.DISCOVERY, url=discovery)
    queries = [q for q in device_lab.lab.dns.query_log.recent() if q["client"] == phone.address]
    assert {q["qname"] for q in queries} >= {"ucupdates-r2.contoso.test"}
    assert {q["view"] for q in queries} == {"internal"}
    sites = {(r.site, r.client_address) for r in device_lab.audit if r.client_address}
    assert sites == {("internal", phone.address)}

    (download_end,) = logged(phone, LogCode.DOWNLOADED, module="CPE.nbt")
    assert download_end == T0 + BOOT
    assert logged(phone, LogCode.IMAGE_VERIFIED, version=NEW) == [download_end]
    assert logged(phone, LogCode.INSTALLED, slot=SlotName.B) == [download_end + flash_time]
    (restart,) = entered(phone, S.BOOTING, after=T0 + 1)
    assert restart == download_end + IDLE_WAIT
    assert logged(phone, LogCode.RESTARTING, version=NEW) == [restart]
    assert core.last_update == restart + BOOT

    screen = system_information(core)
    assert f"Current version: {NEW}\n" in screen
    assert f"Backup version:  {FACTORY}\n" in screen
    assert f"Last update:     {screen_date(restart + BOOT)}\n" in screen
    assert phone.bytes_downloaded == device_lab.stored_bytes("CX600", NEW)


@pytest.mark.looptime
async def test_a_phone_in_a_call_restarts_five_minutes_after_the_call_ends(
    device_lab: RunningLab, phones: Phones
) -> None:
    device_lab.publish("CX600", NEW)
    call = Call(trigger=Trigger(on=S.DOWNLOADING), duration=600.0)
    phone = phones.phone(faults=[call])
    phone.power_on()
    await phone.wait_for(idle_on(NEW), until=T0 + 3600)

    (call_start,) = logged(phone, LogCode.CALL_STARTED)
    (call_end,) = logged(phone, LogCode.CALL_ENDED)
    (download_end,) = logged(phone, LogCode.DOWNLOADED, module="CPE.nbt")
    assert call_start <= download_end < call_end == call_start + 600
    (restart,) = entered(phone, S.BOOTING, after=T0 + 1)
    assert restart == call_end + IDLE_WAIT
    assert entered(phone, S.AWAITING_REBOOT) == [download_end + PhoneSettings().flash_time]


@pytest.mark.looptime
async def test_an_approval_reaches_a_running_phone_at_its_next_24_hour_check(
    device_lab: RunningLab, phones: Phones
) -> None:
    device_lab.publish("CX600", NEW, approve=False)
    # Hashed in a worker thread, as a large image is: looptime waits for the thread.
    phone = phones.phone(hash_in_thread_from=1)
    phone.power_on()
    await phone.wait_for(lambda d: d.phone.state is S.IDLE, until=T0 + 3600)
    assert logged(phone, LogCode.UP_TO_DATE, version=FACTORY) == [T0 + BOOT]

    await phone.wait_until(T0 + 3 * 3600)
    device_lab.change(Action.APPROVE, "CX600")
    await phone.wait_for(idle_on(NEW), until=T0 + 2 * DAY)

    checks = logged(phone, LogCode.CHECKING)
    assert checks[:2] == [T0 + BOOT, T0 + BOOT + DAY]
    assert logged(phone, LogCode.OFFERED, version=NEW) == [T0 + BOOT + DAY]
    assert version_at(phone, T0 + BOOT + DAY - 1) == FACTORY


@pytest.mark.looptime
async def test_restore_sends_a_phone_back_to_its_backup_without_a_download(
    device_lab: RunningLab, phones: Phones
) -> None:
    device_lab.publish("CX600", FACTORY)
    device_lab.publish("CX600", NEW)  # approving it keeps FACTORY as the restore version
    phone = phones.phone()
    phone.power_on()
    updated = await phone.wait_for(idle_on(NEW), until=T0 + 3600)
    downloaded, files = phone.bytes_downloaded, phone.files_downloaded
    assert files == 2

    device_lab.change(Action.RESTORE, "CX600")
    back = await phone.wait_for(idle_on(FACTORY), until=T0 + 2 * DAY)

    # The 24-hour check after the update is answered with the restore version, which
    # the phone holds as its backup: it switches without downloading anything.
    (switch,) = logged(phone, LogCode.BACKUP_OFFERED, version=FACTORY)
    assert switch == updated + DAY
    assert (phone.bytes_downloaded, phone.files_downloaded) == (downloaded, files)
    gets = [r for r in device_lab.audit if r.path.startswith("/DeviceUpdateFiles")]
    assert len(gets) == 2
    assert back == switch + IDLE_WAIT + BOOT
    core = phone.phone
    assert (core.current_version, core.backup_version) == (FACTORY, NEW)
    assert f"Backup version:  {NEW}\n" in system_information(core)


@pytest.mark.looptime
async def test_a_download_cut_by_maintenance_resumes_on_the_other_front_end(
    device_lab: RunningLab, phones: Phones
) -> None:
    # Large enough that the server is still sending when the phone has 1 MiB of it.
    size = 8 * 1024 * 1024
    device_lab.publish("CX600", NEW, size=size)
    cut: list[tuple[str, int]] = []

    def maintenance_half_way(address: str, got: int, total: int | None) -> None:
        if total == size and got >= size // 8 and not cut:
            # An operator takes the serving front end out at once: transfers are cut.
            server = next(fe for fe in device_lab.config.front_ends if str(fe.address) == address)
            device_lab.lab.pool.enter_maintenance(server.name, immediate=True)
            cut.append((address, got))

    assert isinstance(phones.network, HeldNetwork)
    phones.network.watch = maintenance_half_way
    phone = phones.phone()
    phone.power_on()
    await phone.wait_for(idle_on(NEW), until=T0 + 3600)

    ((first, _),) = cut
    (interrupted,) = phone.phone.log.coded(LogCode.DOWNLOAD_CUT)
    assert interrupted.time == T0 + BOOT
    offset = interrupted.facts.offset
    assert offset is not None
    assert size // 8 <= offset < size
    # The phone asked the other front end for the rest (Range, If-Range): 206.
    other = next(fe for fe in device_lab.config.front_ends if str(fe.address) != first)
    images = [r for r in device_lab.audit if r.path.endswith("CPE.nbt")]
    assert [(r.server, r.status) for r in images][-1] == (other.name, 206)
    assert logged(
        phone, LogCode.DOWNLOADED, module="CPE.nbt", size=size, host="pool01.contoso.test"
    )
    # Only the rest came again, and the pieces fit together: the image verified.
    assert phone.bytes_downloaded == device_lab.stored_bytes("CX600", NEW) - offset
    assert logged(phone, LogCode.IMAGE_VERIFIED) == [T0 + BOOT]


@pytest.mark.looptime
async def test_the_image_follows_the_catalog_over_the_connection_the_phone_keeps(
    device_lab: RunningLab, phones: Phones
) -> None:
    # The pool's name is looked up again for the image, and the lab DNS rotates its
    # answer: the second answer names the other front end first. The phone still holds
    # its connection to the server that sent the catalog, so the image comes over it.
    device_lab.publish("CX600", NEW)
    phone = phones.phone()
    phone.power_on()
    await phone.wait_for(idle_on(NEW), until=T0 + 3600)

    pool = "pool01.contoso.test"
    queries = device_lab.lab.dns.query_log.recent()
    asked = [q for q in queries if q["client"] == phone.address and q["qname"] == pool]
    lookups = [e for e in phone.phone.log.coded(LogCode.RESOLVED) if e.facts.host == pool]
    assert len(asked) == len(lookups) == 2
    files = {r.path.rsplit("/", 1)[-1]: r.server for r in device_lab.audit if "/CPE/" in r.path}
    assert files["CPE.cat"] == files["CPE.nbt"]
    server = next(fe for fe in device_lab.config.front_ends if fe.name == files["CPE.cat"])
    # Both times the phone went first to the catalog's server...
    assert [e.facts.address for e in lookups] == [str(server.address)] * 2

    async def leading() -> str:
        with phones.hold.held():  # the answer's real-time wait is no phone time
            answer = await query(pool, device_lab.lab.dns.address, phone.address, tcp=False)
        return str(answer.rr[0].rdata)

    # ...though the DNS, which cycles the pool's two orders, led the second answer with the
    # other one: asked twice more, it leads with the first answer's server, then the other.
    again = [await leading(), await leading()]
    assert again[0] == str(server.address) != again[1]


@pytest.mark.looptime
async def test_a_phone_log_and_the_audit_log_tell_the_same_time(
    device_lab: RunningLab, phones: Phones
) -> None:
    # One clock for the lab and its phones: the front end's audit line of a request and
    # the phone's log line of it carry the same time, to the millisecond on fake time.
    device_lab.publish("CX600", NEW)
    phone = phones.phone()
    phone.power_on()
    await phone.wait_for(idle_on(NEW), until=T0 + 3600)
    checks = phone.phone.log.coded(LogCode.CHECKING)
    downloads = phone.phone.log.coded(LogCode.DOWNLOADING)
    records = device_lab.requests(phone.phone.identity.mac)
    audit_checks = [r.time for r in records if r.path.endswith("ucdevice.upx")]
    # (A download names no phone: this lab has one phone, whose downloads these are.)
    audit_downloads = [r.time for r in device_lab.audit if r.path.endswith("CPE.nbt")]
    assert [format_time(e.time) for e in checks] == audit_checks
    assert format_time(downloads[-1].time) == audit_downloads[-1]
    # ... and it is the phone's time, which starts at T0, not the wall clock's.
    assert audit_checks[0].startswith(to_datetime(T0).strftime("%Y-%m-%dT%H:"))


@pytest.mark.looptime
async def test_lab_and_phone_time_jump_together_only_with_every_phone_unplugged(
    device_lab: RunningLab, phones: Phones
) -> None:
    phone = phones.phone()
    phone.power_on()
    with pytest.raises(ValueError, match="while phones are plugged in"):
        phones.advance(DAY, device_lab.lab.clock)
    phone.power_off()
    before = phones.clock.now()
    phones.advance(60 * DAY, device_lab.lab.clock)
    assert phones.clock.now() - before == pytest.approx(60 * DAY)
    assert device_lab.lab.clock.time() == pytest.approx(phones.clock.now())
