"""The phone core, driven event by event through every path of its transition table."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial

import pytest
from defusedxml import ElementTree
from phone_script import (
    ALICE,
    DISCOVERY_URL,
    EDGE,
    EXTERNAL_URL,
    FACTORY,
    FRONT_ENDS,
    INTERNAL_URL,
    LEASE,
    NEW,
    NO_UPDATE,
    T0,
    Script,
    Vendor,
    firmware,
    offer_xml,
    provisioning_xml,
)

from emulator.backoff import BackoffPolicy
from emulator.errors import ProtocolError
from emulator.events import (
    Boot,
    BootFailed,
    CallEnded,
    CallStarted,
    CancelTimer,
    CatalogVerified,
    ClockOffsetChanged,
    ConnectionFailed,
    DiscardDownloads,
    DownloadFinished,
    DownloadInterrupted,
    Event,
    Flash,
    ImageVerified,
    PowerLost,
    PowerOn,
    Purpose,
    ResolutionFailed,
    Resolve,
    Resolved,
    ResponseReceived,
    SendRequest,
    SignIn,
    SignOut,
    StartDownload,
    StartTimer,
    Timer,
    TimerFired,
    UserActivity,
    VerificationFailed,
    VerifyCatalog,
    VerifyImage,
)
from emulator.phonelog import LogCode, LogLevel
from emulator.settings import PhoneSettings
from emulator.slots import SlotName, SlotStatus
from emulator.states import TRANSITIONS, EventKey, PhoneState, allowed_events, diagram, key_name

S = PhoneState


def staged(script: Script, vendor: Vendor) -> Script:
    """Bring a phone from power-on to an installed update waiting for the idle restart."""
    script.boot()
    script.check_with(offer_xml(firmware(vendor)))
    script.install(firmware(vendor))
    assert script.state() is S.AWAITING_REBOOT
    return script


def updated(script: Script, vendor: Vendor) -> Script:
    """Bring a phone to running NEW with FACTORY as its backup, check answered."""
    staged(script, vendor)
    script.fire(Timer.REBOOT)
    script.fire(Timer.BOOT)
    script.check_with(NO_UPDATE)
    return script


def signed_in(script: Script, **provisioning: object) -> Script:
    """Boot with no update, then sign alice in (the sign-in check is left pending)."""
    script.boot()
    script.check_with(NO_UPDATE)
    script.do(SignIn(script.later(), ALICE))
    script.resolve(FRONT_ENDS[0])
    script.respond(200, provisioning_xml(**provisioning))  # type: ignore[arg-type]
    return script


# --- The whole update, first boot to new version ---------------------------------------------


def test_first_boot_discovers_downloads_installs_and_restarts_into_the_new_version(
    script: Script, vendor: Vendor
) -> None:
    phone = script.phone
    assert script.power_on() == [Boot(SlotName.A, FACTORY), StartTimer(Timer.BOOT, T0 + 60)]
    assert script.state() is S.BOOTING

    # Never signed in: the service is found through DNS, ucupdates-r2.<lease domain>.
    assert script.fire(Timer.BOOT) == [
        StartTimer(Timer.CHECK, T0 + 60 + 86_400),
        Resolve("ucupdates-r2.contoso.test", 10443),
    ]
    request = script.resolve(*FRONT_ENDS)[0]
    assert isinstance(request, SendRequest)
    assert (request.purpose, request.target.url, request.target.address) == (
        Purpose.CHECK,
        DISCOVERY_URL,
        FRONT_ENDS[0],
    )

    fw = firmware(vendor)
    assert script.respond(200, offer_xml(fw)) == [Resolve("pool01.contoso.test", 10443)]
    assert script.state() is S.DOWNLOADING
    script.files = dict(fw.files)
    catalog = script.resolve(FRONT_ENDS[0])[0]
    assert isinstance(catalog, StartDownload)
    assert (catalog.module, catalog.offset, catalog.etag) == ("CPE.cat", 0, None)
    assert catalog.target.url.endswith(
        f"/DeviceUpdateFiles_Int/UCPhone/Polycom/CX600/A/ENU/{NEW}/CPE/CPE.cat"
    )
    script.serve_download()
    assert script.resolve(FRONT_ENDS[0])[0].module == "CPE.nbt"  # type: ignore[attr-defined]
    assert script.serve_download() == [
        VerifyCatalog("CPE.cat", "Polycom", "CX600", "A", "ENU", NEW)
    ]

    # Verification: the catalog's signature first, then the image's SHA-256.
    assert script.state() is S.VERIFYING_CATALOG
    sha = hashlib.sha256(fw.image).hexdigest()
    assert script.verify() == [VerifyImage("CPE.nbt", len(fw.image), sha)]
    assert script.verify() == [Flash(SlotName.B, "CPE.nbt", NEW), StartTimer(Timer.FLASH, T0 + 98)]
    assert phone.slots[SlotName.B].status is SlotStatus.WRITING
    verified = T0 + 68  # the image is verified, a second after the catalog

    # Installed into the inactive slot; the restart comes five minutes of inactivity after
    # the download was verified, the 30 s of installing included.
    assert script.fire(Timer.FLASH) == [
        DiscardDownloads(("CPE.cat", "CPE.nbt")),
        StartTimer(Timer.REBOOT, verified + 300),
    ]
    assert script.state() is S.AWAITING_REBOOT
    assert (phone.current_version, phone.staged_version) == (FACTORY, NEW)

    assert script.fire(Timer.REBOOT) == [
        CancelTimer(Timer.CHECK),
        Boot(SlotName.B, NEW),
        StartTimer(Timer.BOOT, T0 + 368 + 60),
    ]
    script.fire(Timer.BOOT)
    assert script.state() is S.CHECKING  # the power-on check of the new image
    assert phone.current_version == NEW
    assert phone.backup_version == FACTORY
    assert phone.active_slot is SlotName.B
    assert phone.last_update == T0 + 428
    assert phone.timers[Timer.CHECK] == T0 + 428 + 86_400
    log = script.log_text()
    assert "update complete: now running 4.0.7577.4372; 4.0.7577.4366 kept as the backup" in log
    assert "2026-01-01T00:07:08.000Z" in log


def test_update_check_body_names_the_phone_and_its_version(script: Script) -> None:
    script.boot()
    request = script.resolve(*FRONT_ENDS)[0]
    assert isinstance(request, SendRequest)
    assert request.content_type == "text/xml"
    root = ElementTree.fromstring(request.body)
    assert root.tag == "DeviceUpdateRequest"
    fields = {child.tag: child.text for child in root if child.tag != "Modules"}
    assert fields == {
        "DeviceType": "UCPhone",
        "Vendor": "Polycom",
        "Model": "CX600",
        "Revision": "A",
        "Locale": "ENU",
        "MacAddress": "00-04-F2-00-00-01",
        "SerialNumber": "CX6A000001",
    }
    module = root.find("Modules/Module")
    assert module is not None
    assert module.attrib == {
        "name": "CPE.nbt",
        "version": FACTORY,
        "timestamp": "2012-11-02T10:00:00Z",
    }


# --- The idle wait --------------------------------------------------------------------------


def test_every_use_of_the_phone_restarts_the_five_minute_wait(
    script: Script, vendor: Vendor
) -> None:
    staged(script, vendor)
    installed_at = script.now
    verified = installed_at - 30  # the download was verified, then 30 s of installing
    assert script.phone.timers[Timer.REBOOT] == verified + 300
    script.now = installed_at + 200
    assert script.do(UserActivity(script.now)) == [StartTimer(Timer.REBOOT, installed_at + 500)]
    script.now = installed_at + 499
    assert script.do(UserActivity(script.now)) == [StartTimer(Timer.REBOOT, installed_at + 799)]
    assert script.fire(Timer.REBOOT)[1] == Boot(SlotName.B, NEW)
    assert script.now == installed_at + 799


@pytest.mark.parametrize(
    ("flash_time", "used_after", "restart_after"),
    [
        (30.0, None, 300.0),  # five quiet minutes from verification, installing included
        (30.0, 10.0, 310.0),  # a use while installing: five minutes from the use
        (30.0, 29.0, 329.0),
        (400.0, None, 400.0),  # installing outlasts the wait: the restart follows it at once
    ],
)
def test_the_five_minutes_count_from_the_verified_download(
    vendor: Vendor, flash_time: float, used_after: float | None, restart_after: float
) -> None:
    script = Script.new(vendor=vendor, settings=PhoneSettings(flash_time=flash_time))
    fw = firmware(vendor)
    script.boot()
    script.check_with(offer_xml(fw))
    script.download_all(fw)
    downloaded = script.now
    script.verify()
    verified = script.later()  # two seconds after the download: the clock the wait runs on
    assert verified == downloaded + 2
    assert script.do(ImageVerified(verified)) == [
        Flash(SlotName.B, "CPE.nbt", NEW),
        StartTimer(Timer.FLASH, verified + flash_time),
    ]
    if used_after is not None:
        assert script.do(UserActivity(verified + used_after)) == []
        assert script.state() is S.FLASHING
    assert Timer.REBOOT not in script.phone.timers  # never before installing finishes
    assert script.fire(Timer.FLASH) == [
        DiscardDownloads(("CPE.cat", "CPE.nbt")),
        StartTimer(Timer.REBOOT, verified + restart_after),
    ]
    assert script.fire(Timer.REBOOT)[1] == Boot(SlotName.B, NEW)
    assert script.now == verified + restart_after


def test_the_installed_line_says_what_the_restart_timer_counts_from(
    script: Script, vendor: Vendor
) -> None:
    staged(script, vendor)
    log = script.phone.log
    (verified,) = log.coded(LogCode.IMAGE_VERIFIED)
    downloaded = log.coded(LogCode.DOWNLOADED)[-1]
    assert downloaded.time < verified.time  # so the two readings differ
    (installed,) = log.coded(LogCode.INSTALLED)
    assert installed.message.endswith(
        "the phone restarts after 5 min without a call or use, counted from when the "
        "download was verified"
    )
    script.fire(Timer.REBOOT)
    assert script.now == verified.time + 300


def test_a_call_holds_the_restart_until_five_minutes_after_it_ends(
    script: Script, vendor: Vendor
) -> None:
    staged(script, vendor)
    installed_at = script.now
    script.now = installed_at + 250
    assert script.do(CallStarted(script.now)) == [CancelTimer(Timer.REBOOT)]
    script.now = installed_at + 5_000  # a long call: no restart meanwhile
    assert script.do(UserActivity(script.now)) == []
    assert Timer.REBOOT not in script.phone.timers
    script.now = installed_at + 6_000
    assert script.do(CallEnded(script.now)) == [StartTimer(Timer.REBOOT, installed_at + 6_300)]
    script.fire(Timer.REBOOT)
    script.fire(Timer.BOOT)
    assert script.phone.current_version == NEW
    assert script.phone.last_update == installed_at + 6_360


def test_a_call_started_during_the_download_holds_the_restart(
    script: Script, vendor: Vendor
) -> None:
    script.boot()
    script.check_with(offer_xml(firmware(vendor)))
    script.do(CallStarted(script.later()))
    script.install(firmware(vendor))
    assert script.state() is S.AWAITING_REBOOT
    assert Timer.REBOOT not in script.phone.timers
    ended = script.later(100)
    assert script.do(CallEnded(ended)) == [StartTimer(Timer.REBOOT, ended + 300)]


# --- Sign-in and in-band provisioning -------------------------------------------------------


def test_sign_in_stores_the_provisioning_and_checks_at_the_internal_url(script: Script) -> None:
    script.boot()
    script.check_with(NO_UPDATE)
    assert script.do(SignIn(script.later(), ALICE)) == [Resolve("pool01.contoso.test", 10443)]
    request = script.resolve(FRONT_ENDS[0])[0]
    assert isinstance(request, SendRequest)
    assert request.purpose is Purpose.SIGN_IN
    assert request.target.url == "https://pool01.contoso.test:10443/Provisioning/signin"
    assert request.credentials == ALICE

    actions = script.respond(200, provisioning_xml(interval=3_600))
    signed_at = script.now
    assert actions == [
        StartTimer(Timer.CHECK, signed_at + 3_600),
        Resolve("pool01.contoso.test", 10443),
    ]
    phone = script.phone
    assert phone.provisioning is not None
    assert (phone.provisioning.internal_url, phone.provisioning.external_url) == (
        INTERNAL_URL,
        EXTERNAL_URL,
    )
    assert phone.signed_in_user == "alice@contoso.test"
    check = script.resolve(*FRONT_ENDS)[0]
    assert isinstance(check, SendRequest)
    assert check.target.url == INTERNAL_URL
    assert check.credentials == ALICE
    user = ElementTree.fromstring(check.body).findtext("LastSignedInUser")
    assert user == "alice@contoso.test"
    assert "signed in as alice@contoso.test" in script.log_text()
    assert "checking for updates (at sign-in) with 4.0.7577.4366" in script.log_text()


def test_the_stored_urls_outlive_a_power_cycle(script: Script) -> None:
    signed_in(script)
    script.check_with(NO_UPDATE)
    script.do(PowerLost(script.later()))
    script.later(600)
    script.boot()
    assert script.actions[-1] == Resolve("pool01.contoso.test", 10443)
    assert script.resolve(*FRONT_ENDS)[0].target.url == INTERNAL_URL  # type: ignore[attr-defined]


def test_provisioning_can_turn_device_update_off(script: Script) -> None:
    signed_in(script, enabled=False)
    assert script.state() is S.IDLE
    assert Timer.CHECK not in script.phone.timers
    assert "device update disabled" in script.log_text()


def test_a_sign_in_during_a_download_waits_for_the_update_pass(
    script: Script, vendor: Vendor
) -> None:
    script.boot()
    script.check_with(offer_xml(firmware(vendor)))
    assert script.do(SignIn(script.later(), ALICE)) == []
    assert script.state() is S.DOWNLOADING
    actions = script.install(firmware(vendor))
    # The pass is over: the sign-in starts before the idle wait does.
    assert actions[-1] == Resolve("pool01.contoso.test", 10443)
    assert script.state() is S.SIGNING_IN
    script.resolve(FRONT_ENDS[0])
    actions = script.respond(200, provisioning_xml())
    assert script.state() is S.AWAITING_REBOOT
    # The sign-in is use: the five minutes count from its end, not from the verification.
    assert actions == [StartTimer(Timer.REBOOT, script.now + 300)]


def test_a_sign_in_during_the_idle_wait_counts_as_use(script: Script, vendor: Vendor) -> None:
    staged(script, vendor)
    assert script.do(SignIn(script.later(10), ALICE)) == [
        CancelTimer(Timer.REBOOT),
        Resolve("pool01.contoso.test", 10443),
    ]
    script.resolve(FRONT_ENDS[0])
    script.respond(200, provisioning_xml())
    assert script.state() is S.AWAITING_REBOOT
    # Held while signing in, like a call: five minutes from its end, not from the verification.
    assert script.phone.timers[Timer.REBOOT] == script.now + 300


def test_a_refused_sign_in_is_logged_and_leaves_the_phone_signed_out(script: Script) -> None:
    script.boot()
    script.check_with(NO_UPDATE)
    script.do(SignIn(script.later(), ALICE))
    script.resolve(FRONT_ENDS[0])
    script.respond(401, diagnostics='28020;reason="The user name or password is wrong"')
    assert script.state() is S.IDLE
    assert script.phone.signed_in_user is None
    assert script.phone.provisioning is None
    assert "The user name or password is wrong" in script.log_text()


def test_signing_out_keeps_the_provisioning_and_checks_without_the_user(script: Script) -> None:
    signed_in(script)
    script.check_with(NO_UPDATE)
    assert script.do(SignOut(script.later())) == []
    phone = script.phone
    assert phone.signed_in_user is None
    assert phone.provisioning is not None  # kept, as a phone keeps it in flash
    assert [e.facts.user for e in phone.log.coded(LogCode.SIGNED_OUT)] == ["alice@contoso.test"]
    # The next check goes to the provisioned URL, with neither credentials nor user.
    script.fire(Timer.CHECK)
    check = script.resolve(*FRONT_ENDS)[0]
    assert isinstance(check, SendRequest)
    assert (check.target.url, check.credentials) == (INTERNAL_URL, None)
    assert ElementTree.fromstring(check.body).findtext("LastSignedInUser") is None


def test_signing_out_drops_a_sign_in_waiting_for_the_update_pass(
    script: Script, vendor: Vendor
) -> None:
    script.boot()
    script.check_with(offer_xml(firmware(vendor)))
    script.do(SignIn(script.later(), ALICE))
    assert script.do(SignOut(script.later())) == []
    assert script.phone.log.coded(LogCode.SIGNED_OUT)[-1].facts.user == ALICE.account
    script.install(firmware(vendor))
    assert script.state() is S.AWAITING_REBOOT  # no sign-in started after the pass


def test_signing_out_with_nobody_signed_in_changes_nothing(script: Script) -> None:
    script.boot()
    script.check_with(NO_UPDATE)
    lines = len(script.phone.log)
    assert script.do(SignOut(script.later())) == []
    assert (script.state(), len(script.phone.log)) == (S.IDLE, lines)


# --- Periodic checks ------------------------------------------------------------------------


def test_the_periodic_check_runs_every_24_hours_at_the_exact_time(script: Script) -> None:
    script.boot()
    booted = T0 + 60
    script.check_with(NO_UPDATE)
    assert script.state() is S.IDLE
    assert script.phone.timers[Timer.CHECK] == booted + 86_400
    actions = script.fire(Timer.CHECK)
    assert script.now == booted + 86_400
    assert actions == [
        StartTimer(Timer.CHECK, booted + 2 * 86_400),
        Resolve("ucupdates-r2.contoso.test", 10443),
    ]
    script.check_with(NO_UPDATE)
    script.fire(Timer.CHECK)
    assert script.now == booted + 2 * 86_400


def test_a_check_falling_due_during_a_download_runs_after_it(
    vendor: Vendor,
) -> None:
    script = Script.new(vendor=vendor, settings=PhoneSettings(check_interval=120))
    script.boot()
    script.check_with(offer_xml(firmware(vendor)))
    script.fire(Timer.CHECK)
    assert script.state() is S.DOWNLOADING
    script.install(firmware(vendor))
    # A staged image wins: the restart checks anyway.
    assert script.state() is S.AWAITING_REBOOT
    script.fire(Timer.REBOOT)
    script.fire(Timer.BOOT)
    assert script.state() is S.CHECKING


# --- Internal first, external when it cannot be reached ----------------------------------------


def test_an_unresolvable_internal_url_falls_back_to_the_external_one(script: Script) -> None:
    signed_in(script)
    assert script.do(
        ResolutionFailed(script.later(), "pool01.contoso.test", "NXDOMAIN (no such name)")
    ) == [Resolve("webext.contoso.test", 10443)]
    request = script.resolve(*EDGE)[0]
    assert isinstance(request, SendRequest)
    assert (request.target.url, request.target.address) == (EXTERNAL_URL, EDGE[0])
    assert request.credentials == ALICE
    log = script.log_text()
    assert "lookup of pool01.contoso.test failed: NXDOMAIN (no such name)" in log
    assert f"internal URL {INTERNAL_URL} cannot be reached; trying external URL" in log


def test_internal_addresses_that_refuse_connections_fall_back_to_external(script: Script) -> None:
    signed_in(script)
    script.resolve(*FRONT_ENDS)
    assert script.refuse("timed out")[0].target.address == FRONT_ENDS[1]  # type: ignore[attr-defined]
    assert script.refuse("timed out") == [Resolve("webext.contoso.test", 10443)]


def test_downloads_from_outside_use_the_external_url(script: Script, vendor: Vendor) -> None:
    signed_in(script)
    script.do(ResolutionFailed(script.later(), "pool01.contoso.test", "NXDOMAIN"))
    script.resolve(*EDGE)
    script.respond(200, offer_xml(firmware(vendor)))
    assert script.actions == [Resolve("webext.contoso.test", 10443)]
    download = script.resolve(*EDGE)[0]
    assert isinstance(download, StartDownload)
    assert "/DeviceUpdateFiles_Ext/" in download.target.url
    assert download.credentials == ALICE


# --- Denials and server errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "diagnostics", "reason"),
    [
        (401, '28020;reason="NTLM authentication required"', "NTLM authentication required"),
        (403, '28021;reason="No user is signed in on this device"', "No user is signed in"),
    ],
)
def test_a_denied_check_is_logged_and_the_image_kept(
    script: Script, status: int, diagnostics: str, reason: str
) -> None:
    script.boot()
    script.resolve(*EDGE)
    assert script.respond(status, diagnostics=diagnostics) == []
    phone = script.phone
    assert script.state() is S.IDLE
    assert Timer.RETRY not in phone.timers  # denial is not retried before the next check
    assert phone.current_version == FACTORY
    assert phone.slots[SlotName.B].status is SlotStatus.EMPTY
    [line] = phone.log.coded(LogCode.DENIED)
    assert (line.facts.purpose, line.facts.status) == (Purpose.CHECK, status)
    assert line.level is LogLevel.ERROR
    # The line is for a support engineer: the status, the service's reason, what is kept.
    assert f"HTTP {status}" in line.message
    assert reason in line.message
    assert "the phone keeps 4.0.7577.4366" in line.message


def test_a_denied_download_keeps_the_image(script: Script, vendor: Vendor) -> None:
    script.boot()
    script.check_with(offer_xml(firmware(vendor)))
    script.resolve(FRONT_ENDS[0])
    script.respond(403, diagnostics='1;reason="Internal path requested from outside"')
    assert script.state() is S.IDLE
    assert script.phone.current_version == FACTORY
    assert "Internal path requested from outside" in script.log_text()


def test_503_moves_to_the_next_address_and_the_retry_honours_retry_after(
    script: Script,
) -> None:
    script.boot()
    script.resolve(*FRONT_ENDS)
    diagnostics = '52001;reason="Server is in maintenance mode"'
    nxt = script.respond(503, diagnostics=diagnostics, retry_after=900)[0]
    assert isinstance(nxt, SendRequest)
    assert nxt.target.address == FRONT_ENDS[1]
    # Both front ends answered: no fallback to another route, a back-off instead.
    actions = script.respond(503, diagnostics=diagnostics, retry_after=900)
    assert script.state() is S.BACKING_OFF
    assert actions == [StartTimer(Timer.RETRY, script.now + 900)]
    assert "Server is in maintenance mode" in script.log_text()
    assert script.fire(Timer.RETRY)[-1] == Resolve("ucupdates-r2.contoso.test", 10443)


def test_a_connection_failure_moves_to_the_next_address(script: Script) -> None:
    script.boot()
    script.resolve(*FRONT_ENDS)
    reason = "TLS: certificate verify failed: Hostname mismatch"
    nxt = script.refuse(reason)[0]
    assert isinstance(nxt, SendRequest)
    assert nxt.target.address == FRONT_ENDS[1]
    line = script.phone.log.coded(LogCode.CONNECTION_FAILED)[0].message
    assert line == f"cannot reach ucupdates-r2.contoso.test at {FRONT_ENDS[0]}:10443: {reason}"


def test_a_malformed_answer_moves_to_the_next_address(script: Script) -> None:
    script.boot()
    script.resolve(*FRONT_ENDS)
    nxt = script.respond(200, b"<DeviceUpdateResponse downloads='2'/>")[0]
    assert nxt.target.address == FRONT_ENDS[1]  # type: ignore[attr-defined]
    assert "says downloads=2 but holds 0" in script.log_text()


def test_back_off_grows_exponentially_with_jitter_and_gives_up(vendor: Vendor) -> None:
    policy = BackoffPolicy(base=30, factor=2, cap=3600, jitter=0.2)

    def delays(seed: int) -> list[float]:
        script = Script.new(vendor=vendor, seed=seed, settings=PhoneSettings(backoff=policy))
        script.boot()
        out = []
        for _ in range(5):
            script.do(ResolutionFailed(script.later(), "ucupdates-r2.contoso.test", "SERVFAIL"))
            out.append(script.phone.timers[Timer.RETRY] - script.now)
            script.fire(Timer.RETRY)
        script.do(ResolutionFailed(script.later(), "ucupdates-r2.contoso.test", "SERVFAIL"))
        # Five back-offs in a row: the sixth failure waits for the next scheduled check.
        assert script.state() is S.IDLE
        assert Timer.RETRY not in script.phone.timers
        assert "update check failed 6 times in a row" in script.log_text()
        return out

    first = delays(seed=1)
    for attempt, delay in enumerate(first):
        low, high = policy.bounds(attempt)
        assert low <= delay <= high
        assert delay != policy.nominal(attempt)
    assert first == sorted(first)
    assert first[-1] > 8 * first[0] * (0.8 / 1.2)
    assert delays(seed=1) == first  # reproducible from the seed
    assert delays(seed=2) != first


# --- Downloads ------------------------------------------------------------------------------


def test_a_cut_download_resumes_from_its_offset_with_its_etag(
    script: Script, vendor: Vendor
) -> None:
    fw = firmware(vendor)
    script.boot()
    script.check_with(offer_xml(fw))
    script.files = dict(fw.files)
    script.resolve(FRONT_ENDS[0])
    script.serve_download()
    script.resolve(*FRONT_ENDS)
    cut = script.do(DownloadInterrupted(script.later(), 1_000, '"v1"', "connection reset by peer"))
    # The next front end is asked for the rest.
    assert cut == [
        StartDownload("CPE.nbt", cut[0].target, 1_000, '"v1"', None)  # type: ignore[attr-defined]
    ]
    assert cut[0].target.address == FRONT_ENDS[1]  # type: ignore[attr-defined]
    script.do(DownloadInterrupted(script.later(), 2_500, '"v1"', "connection reset by peer"))
    assert script.state() is S.BACKING_OFF
    assert script.phone.download_progress("CPE.nbt") == (2_500, '"v1"')
    script.fire(Timer.RETRY)
    resumed = script.resolve(FRONT_ENDS[0])[0]
    assert isinstance(resumed, StartDownload)
    assert (resumed.offset, resumed.etag) == (2_500, '"v1"')
    script.do(DownloadFinished(script.later(), len(fw.image), '"v1"'))
    assert script.state() is S.VERIFYING_CATALOG
    assert "cut at byte 1000: connection reset by peer" in script.log_text()
    assert "resuming at byte 2500" in script.log_text()


def test_a_front_end_without_the_file_sends_the_phone_to_the_next(
    script: Script, vendor: Vendor
) -> None:
    script.boot()
    script.check_with(offer_xml(firmware(vendor)))
    script.resolve(*FRONT_ENDS)
    nxt = script.respond(404, diagnostics='404;reason="File not found on this server"')[0]
    assert isinstance(nxt, StartDownload)
    assert nxt.target.address == FRONT_ENDS[1]


def test_an_open_connection_to_a_server_of_the_answer_is_tried_first(
    script: Script, vendor: Vendor
) -> None:
    script.boot()
    script.check_with(offer_xml(firmware(vendor)))
    script.files = dict(firmware(vendor).files)
    assert script.resolve(*FRONT_ENDS)[0].target.address == FRONT_ENDS[0]  # type: ignore[attr-defined]
    script.serve_download()
    # The next answer leads with the other server; the phone's connection is to the first.
    image = script.resolve(*reversed(FRONT_ENDS), kept=FRONT_ENDS[0])[0]
    assert isinstance(image, StartDownload)
    assert (image.module, image.target.address) == ("CPE.nbt", FRONT_ENDS[0])
    lookup = script.phone.log.coded(LogCode.RESOLVED)[-1]
    assert (lookup.facts.host, lookup.facts.address) == ("pool01.contoso.test", FRONT_ENDS[0])
    # Its words say why the answer's order was not kept.
    assert lookup.message == (
        f"pool01.contoso.test is {FRONT_ENDS[1]}, {FRONT_ENDS[0]}; {FRONT_ENDS[0]} first, "
        "over the connection the phone has open to it"
    )
    # It stays a walk over both: a 404 there sends the phone to the other.
    nxt = script.respond(404, diagnostics='404;reason="File not found on this server"')[0]
    assert nxt.target.address == FRONT_ENDS[1]  # type: ignore[attr-defined]


# Already first, not in the answer (gone from DNS), or no connection: the answer's order.
@pytest.mark.parametrize("kept", [FRONT_ENDS[0], "127.10.0.13", None])
def test_the_answer_order_holds_unless_an_open_connection_is_to_a_later_server(
    script: Script, kept: str | None
) -> None:
    script.boot()
    first = script.resolve(*FRONT_ENDS, kept=kept)[0]
    assert isinstance(first, SendRequest)
    assert first.target.address == FRONT_ENDS[0]
    assert script.refuse("connection refused")[0].target.address == FRONT_ENDS[1]  # type: ignore[attr-defined]
    lookup = script.phone.log.coded(LogCode.RESOLVED)[-1]
    assert (lookup.facts.host, lookup.facts.address) == ("ucupdates-r2.contoso.test", FRONT_ENDS[0])
    assert lookup.message == f"ucupdates-r2.contoso.test is {', '.join(FRONT_ENDS)}"


# --- Verification ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["bad signature", "wrong vendor", "hash mismatch"])
def test_a_failed_verification_keeps_the_image_and_logs_the_reason(
    script: Script, vendor: Vendor, fault: str
) -> None:
    fw = firmware(vendor)
    served = dict(fw.files)
    if fault == "bad signature":
        served["CPE.cat"] = Vendor("Polycom").catalog({"CPE.nbt": fw.image})
    elif fault == "wrong vendor":
        served["CPE.cat"] = vendor.catalog({"CPE.nbt": fw.image}, vendor="Aastra")
    else:
        served["CPE.nbt"] = fw.image[:-1] + bytes([fw.image[-1] ^ 1])
    script.boot()
    script.check_with(offer_xml(fw))
    script.download_all(fw)
    script.files = served
    if fault == "hash mismatch":
        script.verify()
    actions = script.verify()
    phone = script.phone
    assert actions[0] == DiscardDownloads(("CPE.cat", "CPE.nbt"))
    assert script.state() is S.IDLE
    assert phone.current_version == FACTORY
    assert phone.slots[SlotName.B].status is SlotStatus.EMPTY
    assert not script.all(Flash)
    [line] = phone.log.coded(LogCode.UPDATE_REFUSED)
    assert (line.level, line.facts.version, line.facts.previous) == (LogLevel.ERROR, NEW, FACTORY)
    # The line gives the reason in words, for a support engineer.
    expected = {
        "bad signature": "not signed by the vendor key this phone trusts",
        "wrong vendor": "the catalog is for vendor 'Aastra', but this phone needs vendor 'Polycom'",
        "hash mismatch": "CPE.nbt has SHA-256",
    }[fault]
    assert expected in line.message


# --- The backup image -----------------------------------------------------------------------


def test_a_served_version_equal_to_the_backup_is_taken_without_a_download(
    script: Script, vendor: Vendor
) -> None:
    updated(script, vendor)
    downloads_before = len(script.all(StartDownload))
    first_update = script.phone.last_update
    script.fire(Timer.CHECK)
    actions = script.check_with(offer_xml(firmware(vendor, FACTORY)))
    assert actions == [StartTimer(Timer.REBOOT, script.now + 300)]
    assert script.state() is S.AWAITING_REBOOT
    assert script.phone.staged_version == FACTORY
    script.fire(Timer.REBOOT)
    script.fire(Timer.BOOT)
    phone = script.phone
    assert (phone.current_version, phone.backup_version) == (FACTORY, NEW)
    assert phone.last_update is not None
    assert first_update is not None
    assert phone.last_update > first_update
    assert len(script.all(StartDownload)) == downloads_before
    assert "the backup image in slot A: switching to it without a download" in script.log_text()


def test_a_use_long_before_a_switch_to_the_backup_does_not_cut_its_wait(
    script: Script, vendor: Vendor
) -> None:
    updated(script, vendor)
    script.do(UserActivity(script.later(10)))
    script.fire(Timer.CHECK)
    # Nothing to download: the five quiet minutes count from the answer, as after a download.
    actions = script.check_with(offer_xml(firmware(vendor, FACTORY)))
    assert actions == [StartTimer(Timer.REBOOT, script.now + 300)]


def test_power_lost_while_flashing_leaves_the_running_image(script: Script, vendor: Vendor) -> None:
    fw = firmware(vendor)
    script.boot()
    script.check_with(offer_xml(fw))
    script.download_all(fw)
    script.verify()
    script.verify()
    assert script.state() is S.FLASHING
    actions = script.do(PowerLost(script.later(10)))
    assert set(actions) == {
        CancelTimer(Timer.FLASH),
        CancelTimer(Timer.CHECK),
        DiscardDownloads(("CPE.cat", "CPE.nbt")),
    }
    phone = script.phone
    assert script.state() is S.OFF
    assert phone.slots[SlotName.B].status is SlotStatus.CORRUPT
    assert "power lost while writing 4.0.7577.4372 into slot B" in script.log_text()

    script.later(60)
    assert script.power_on()[0] == Boot(SlotName.A, FACTORY)
    script.fire(Timer.BOOT)
    assert phone.current_version == FACTORY
    assert phone.backup_version is None
    assert "slot B holds 4.0.7577.4372 (damaged)" in script.log_text()
    # The damaged slot is no backup: the same offer is downloaded again.
    assert script.check_with(offer_xml(fw)) == [Resolve("pool01.contoso.test", 10443)]
    script.install(fw)
    assert phone.slots[SlotName.B].status is SlotStatus.VALID


def test_a_new_image_that_does_not_start_returns_to_the_backup(
    script: Script, vendor: Vendor
) -> None:
    staged(script, vendor)
    script.fire(Timer.REBOOT)
    failed_at = script.later(20)
    actions = script.do(BootFailed(failed_at, "kernel panic"))
    assert actions == [
        CancelTimer(Timer.BOOT),
        Boot(SlotName.A, FACTORY),
        StartTimer(Timer.BOOT, failed_at + 60),
    ]
    script.fire(Timer.BOOT)
    phone = script.phone
    assert phone.current_version == FACTORY
    assert phone.slots[SlotName.B].status is SlotStatus.FAILED
    assert phone.last_update is None
    assert phone.failed_versions == {NEW: failed_at}
    log = script.log_text()
    assert "image 4.0.7577.4372 in slot B did not start: kernel panic" in log
    assert "returning to the backup image 4.0.7577.4366 in slot A" in log
    # The same version is not installed again.
    assert script.check_with(offer_xml(firmware(vendor))) == []
    assert script.state() is S.IDLE
    assert "did not start on this phone" in script.log_text()


# --- Wrong clock ----------------------------------------------------------------------------


def test_a_wrong_clock_is_recorded_and_handed_to_every_request(script: Script) -> None:
    script.do(ClockOffsetChanged(script.now, -400 * 86_400))
    script.boot()
    request = script.resolve(*FRONT_ENDS)[0]
    assert isinstance(request, SendRequest)
    assert request.target.clock_offset == -400 * 86_400
    assert script.phone.clock_offset == -400 * 86_400
    assert "phone clock now reads 2024-11-27" in script.log_text()


# --- Protocol errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "event", "state", "name"),
    [
        ("off", SignIn(T0, ALICE), "OFF", "SignIn"),
        ("off", UserActivity(T0), "OFF", "UserActivity"),
        ("idle", ImageVerified(T0 + 1e5), "IDLE", "ImageVerified"),
        ("idle", DownloadFinished(T0 + 1e5, 10), "IDLE", "DownloadFinished"),
        ("idle", TimerFired(T0 + 1e6, Timer.REBOOT), "IDLE", "TimerFired(REBOOT)"),
        ("checking", TimerFired(T0 + 1e5, Timer.FLASH), "CHECKING", "TimerFired(FLASH)"),
    ],
)
def test_an_event_the_table_does_not_allow_raises_a_protocol_error(
    script: Script, setup: str, event: object, state: str, name: str
) -> None:
    if setup != "off":
        script.boot()
    if setup == "idle":
        script.check_with(NO_UPDATE)
    before = (script.phone.state, dict(script.phone.timers), dict(script.phone.slots))
    with pytest.raises(ProtocolError) as caught:
        script.phone.handle(event)  # type: ignore[arg-type]
    assert (caught.value.state, caught.value.event) == (state, name)
    assert f"event {name} in state {state}" in str(caught.value)
    assert (script.phone.state, dict(script.phone.timers), dict(script.phone.slots)) == before


def test_events_that_do_not_answer_what_was_asked_are_refused(script: Script) -> None:
    script.boot()
    with pytest.raises(ProtocolError, match=r"answer for pool01\.contoso\.test but the phone"):
        script.do(Resolved(script.now, "pool01.contoso.test", FRONT_ENDS))
    with pytest.raises(ProtocolError, match="no request is in progress"):
        script.respond(200, NO_UPDATE)
    with pytest.raises(ProtocolError, match="no call is in progress"):
        script.do(CallEnded(script.now))
    with pytest.raises(ProtocolError, match="time went backwards"):
        script.do(UserActivity(script.now - 5))
    with pytest.raises(ProtocolError, match="before its time"):
        script.do(TimerFired(script.now, Timer.CHECK))
    # Still waiting for its DNS answer, as if nothing had happened.
    assert script.resolve(*FRONT_ENDS)[0].target.url == DISCOVERY_URL  # type: ignore[attr-defined]


def test_a_failed_sign_in_during_a_back_off_keeps_the_retry(script: Script) -> None:
    script.boot()
    script.do(ResolutionFailed(script.later(), "ucupdates-r2.contoso.test", "SERVFAIL"))
    retry_at = script.phone.timers[Timer.RETRY]
    assert script.do(SignIn(script.later(), ALICE)) == [
        CancelTimer(Timer.RETRY),
        Resolve("pool01.contoso.test", 10443),
    ]
    script.resolve(FRONT_ENDS[0])
    # Inside names fail: the sign-in tries the discovery name, which the edge answers outside.
    assert script.refuse() == [Resolve("ucupdates-r2.contoso.test", 10443)]
    assert script.do(ResolutionFailed(script.later(), "ucupdates-r2.contoso.test", "SERVFAIL")) == [
        StartTimer(Timer.RETRY, retry_at)
    ]
    assert script.state() is S.BACKING_OFF
    assert "sign-in failed: no server could be reached" in script.log_text()


def test_a_url_with_an_address_needs_no_dns(script: Script) -> None:
    signed_in(script, internal="https://127.10.0.11:10443/RequestHandler/ucdevice.upx")
    request = script.actions[-1]
    assert isinstance(request, SendRequest)
    assert (request.target.host, request.target.address) == ("127.10.0.11", "127.10.0.11")


def test_the_table_draws_the_diagram_and_lists_allowed_events() -> None:
    text = diagram()
    assert text.startswith("stateDiagram-v2\n    [*] --> OFF\n")
    assert "    FLASHING --> AWAITING_REBOOT: TimerFired(FLASH)\n" in text
    assert "    AWAITING_REBOOT --> BOOTING: TimerFired(REBOOT)\n" in text
    assert allowed_events(S.OFF) == ["ClockOffsetChanged", "PowerOn"]
    for state in S:
        if state is not S.OFF:
            assert "PowerLost" in allowed_events(state)


def _reach(state: PhoneState, vendor: Vendor) -> Script:
    """A phone in ``state``, by the shortest ordinary path."""
    script = Script.new(vendor=vendor)
    fw = firmware(vendor)
    recipes: dict[PhoneState, list[Callable[[], object]]] = {
        S.OFF: [],
        S.BOOTING: [script.power_on],
        S.CHECKING: [script.boot],
        S.IDLE: [script.boot, lambda: script.check_with(NO_UPDATE)],
        S.SIGNING_IN: [
            script.boot,
            lambda: script.check_with(NO_UPDATE),
            lambda: script.do(SignIn(script.later(), ALICE)),
        ],
        S.BACKING_OFF: [
            script.boot,
            lambda: script.do(ResolutionFailed(script.later(), "ucupdates-r2.contoso.test", "x")),
        ],
        S.DOWNLOADING: [script.boot, lambda: script.check_with(offer_xml(fw))],
        S.VERIFYING_CATALOG: [
            script.boot,
            lambda: script.check_with(offer_xml(fw)),
            lambda: script.download_all(fw),
        ],
        S.VERIFYING_IMAGE: [
            script.boot,
            lambda: script.check_with(offer_xml(fw)),
            lambda: script.download_all(fw),
            script.verify,
        ],
        S.FLASHING: [
            script.boot,
            lambda: script.check_with(offer_xml(fw)),
            lambda: script.download_all(fw),
            script.verify,
            script.verify,
        ],
        S.AWAITING_REBOOT: [lambda: staged(script, vendor)],
    }
    for step in recipes[state]:
        step()
    assert script.state() is state
    return script


def _fired(timer: Timer, t: float) -> Event:
    return TimerFired(t, timer)


SAMPLES: dict[EventKey, Callable[[float], Event]] = {
    PowerOn: lambda t: PowerOn(t, LEASE),
    PowerLost: PowerLost,
    BootFailed: lambda t: BootFailed(t, "x"),
    Resolved: lambda t: Resolved(t, "ucupdates-r2.contoso.test", FRONT_ENDS),
    ResolutionFailed: lambda t: ResolutionFailed(t, "ucupdates-r2.contoso.test", "x"),
    ConnectionFailed: lambda t: ConnectionFailed(t, "x"),
    ResponseReceived: lambda t: ResponseReceived(t, 500),
    DownloadFinished: lambda t: DownloadFinished(t, 1),
    DownloadInterrupted: lambda t: DownloadInterrupted(t, 1, None, "x"),
    CatalogVerified: lambda t: CatalogVerified(t, ()),
    ImageVerified: ImageVerified,
    VerificationFailed: lambda t: VerificationFailed(t, "x"),
    SignIn: lambda t: SignIn(t, ALICE),
    SignOut: SignOut,
    CallStarted: CallStarted,
    CallEnded: CallEnded,
    UserActivity: UserActivity,
    ClockOffsetChanged: lambda t: ClockOffsetChanged(t, 0.0),
}
SAMPLES.update({timer: partial(_fired, timer) for timer in Timer})


@pytest.mark.parametrize("state", list(PhoneState), ids=lambda s: s.name)
def test_every_pair_the_table_leaves_out_is_a_protocol_error(
    state: PhoneState, vendor: Vendor
) -> None:
    script = _reach(state, vendor)
    keys = {key for (_, key) in TRANSITIONS} | set(SAMPLES)
    assert set(SAMPLES) == keys  # every event and timer the table knows has a sample
    refused = [key for key in keys if (state, key) not in TRANSITIONS]
    assert refused  # no state accepts everything
    for key in refused:
        before = (script.state(), dict(script.phone.timers), len(script.phone.log))
        with pytest.raises(ProtocolError) as caught:
            script.phone.handle(SAMPLES[key](script.now + 1))
        assert (caught.value.state, caught.value.event) == (state.name, key_name(key))
        assert (script.state(), dict(script.phone.timers), len(script.phone.log)) == before
