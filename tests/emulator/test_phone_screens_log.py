"""The System Information screen and the phone log a support engineer reads."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from phone_script import (
    ALICE,
    FRONT_ENDS,
    INTERNAL_URL,
    NO_UPDATE,
    T0,
    Script,
    Vendor,
    firmware,
    offer_xml,
    provisioning_xml,
)

from emulator.clock import to_datetime
from emulator.events import ResolutionFailed, SignIn, Timer
from emulator.models import get_model
from emulator.phonelog import (
    LogLevel,
    PhoneLog,
    celog_file_name,
    format_duration,
    format_time,
    render_celog,
)
from emulator.screens import system_information


def test_a_new_phone_shows_its_factory_state() -> None:
    script = Script.new(model="HP4120", index=3)
    assert system_information(script.phone) == (
        "System Information\n"
        "============================================\n"
        "Model:           HP HP4120\n"
        "MAC address:     3C-D9-2B-10-00-03\n"
        "Serial number:   CN4120A000003\n"
        "Current version: 4.0.7577.4366\n"
        "Backup version:  None\n"
        "Last update:     Never\n"
        "Update server:   Not known yet\n"
        "Signed-in user:  Not signed in\n"
    )


def test_after_sign_in_and_an_update_the_screen_shows_both_versions(vendor: Vendor) -> None:
    script = Script.new(vendor=vendor)
    script.boot()
    script.check_with(NO_UPDATE)
    script.do(SignIn(script.later(), ALICE))
    script.resolve(FRONT_ENDS[0])
    script.respond(200, provisioning_xml())
    script.check_with(offer_xml(firmware(vendor)))
    script.install(firmware(vendor))
    screen = system_information(script.phone)
    assert "Pending update:  4.0.7577.4372 (restarts when idle)" in screen
    assert "Current version: 4.0.7577.4366" in screen
    script.fire(Timer.REBOOT)
    script.fire(Timer.BOOT)
    lines = system_information(script.phone).splitlines()
    assert lines[5:] == [
        "Current version: 4.0.7577.4372",
        "Backup version:  4.0.7577.4366",
        "Last update:     2026-01-01 00:07 UTC",
        f"Update server:   {INTERNAL_URL}",
        "Signed-in user:  alice@contoso.test",
    ]


def test_the_log_gives_failures_in_plain_words_with_their_times() -> None:
    script = Script.new()
    script.boot()
    script.do(ResolutionFailed(script.later(), "ucupdates-r2.contoso.test", "NXDOMAIN"))
    lines = script.log_text().splitlines()
    assert lines[0] == (
        "2026-01-01T00:00:00.000Z INFO  power: power on; DHCP lease: domain contoso.test, "
        "DNS server 127.10.0.2:10053, SIP server pool01.contoso.test"
    )
    assert (
        "2026-01-01T00:01:01.000Z ERROR dns: lookup of ucupdates-r2.contoso.test failed: NXDOMAIN"
        in lines
    )
    assert lines[-1].startswith("2026-01-01T00:01:01.000Z WARN  update check: update check failed")


def test_the_celog_body_names_the_phone_and_keeps_the_newest_lines() -> None:
    identity = get_model("CX600").identity(1)
    log = PhoneLog()
    for n in range(100):
        log.add(T0 + n, LogLevel.INFO, "test", f"line {n:03d} " + "x" * 50)
    body = render_celog(log, identity, T0 + 200)
    assert body.startswith(
        "CELog device log\n"
        "Device: Polycom CX600 (UCPhone, revision A, locale ENU)\n"
        "MAC address: 00-04-F2-00-00-01\n"
        "Serial number: CX6A000001\n"
        "Written: 2026-01-01T00:03:20.000Z\n\n"
    )
    assert body.endswith(log.entries[-1].render() + "\n")
    small = render_celog(log, identity, T0, max_bytes=2_000)
    assert len(small.encode()) <= 2_000
    assert "older lines left out to fit 2000 bytes" in small
    assert "line 099" in small
    assert "line 000" not in small
    assert celog_file_name(identity, T0 + 3_723) == "0004F2000001_20260101010203.clg"


def test_the_log_is_bounded_and_searchable() -> None:
    log = PhoneLog(limit=3)
    for n in range(5):
        log.add(T0, LogLevel.ERROR if n % 2 else LogLevel.INFO, "t", f"event {n}")
    assert [e.message for e in log] == ["event 2", "event 3", "event 4"]
    assert [e.message for e in log.matching("event", LogLevel.ERROR)] == ["event 3"]


def test_times_and_durations_in_words() -> None:
    assert format_time(T0 + 0.25) == "2026-01-01T00:00:00.250Z"
    assert [format_duration(s) for s in (86_400, 300, 90, 0.5)] == [
        "24 h",
        "5 min",
        "90 s",
        "0.5 s",
    ]


@given(st.floats(min_value=0, max_value=2**34, allow_nan=False))
def test_format_time_is_the_utc_date_cut_short_to_the_millisecond(t: float) -> None:
    assert format_time(t) == to_datetime(t).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
