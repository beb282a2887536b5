"""Every phone log line carries a typed code and the facts a program judges by.

The sans-IO core is driven by hand (phone_script.Script), as the other core tests do, and
each situation is checked by its codes and facts alone: these are what scenarios, the demo
and tests read, so no assertion here looks at a message.
"""

from __future__ import annotations

import json

import pytest
from phone_script import (
    ALICE,
    DISCOVERY_URL,
    EDGE,
    EXTERNAL_URL,
    FACTORY,
    FRONT_ENDS,
    INTERNAL_URL,
    NEW,
    NO_UPDATE,
    Script,
    Vendor,
    firmware,
    offer_xml,
    provisioning_xml,
)

from emulator import CertificateProblem, CheckTrigger, FirmwareProblem, LogCode, RouteKind
from emulator.codec import Diagnostics
from emulator.events import (
    BootFailed,
    CallEnded,
    CallStarted,
    ConnectionFailed,
    DownloadInterrupted,
    PowerLost,
    Purpose,
    ResolutionFailed,
    SignIn,
    Timer,
    UserActivity,
    VerificationFailed,
)
from emulator.phonelog import LogEntry, LogFacts, LogLevel, PhoneLog
from emulator.settings import PhoneSettings
from emulator.slots import SlotName

C = LogCode


def codes(script: Script) -> list[LogCode]:
    return [entry.code for entry in script.phone.log]


def only(script: Script, code: LogCode) -> LogEntry:
    [entry] = script.phone.log.coded(code)
    return entry


def last(script: Script, code: LogCode) -> LogEntry:
    return script.phone.log.coded(code)[-1]


def test_a_first_boot_update_is_told_code_by_code_with_its_facts(
    script: Script, vendor: Vendor
) -> None:
    fw = firmware(vendor)
    script.boot()
    script.check_with(offer_xml(fw))
    script.install(fw)
    script.fire(Timer.REBOOT)
    script.fire(Timer.BOOT)

    assert codes(script) == [
        C.POWER_ON,
        C.STARTING,
        C.RUNNING,
        C.CHECKING,
        C.RESOLVED,
        C.OFFERED,
        C.DOWNLOADING,
        C.RESOLVED,
        C.DOWNLOADED,
        C.DOWNLOADING,
        C.RESOLVED,
        C.DOWNLOADED,
        C.CATALOG_VERIFIED,
        C.IMAGE_VERIFIED,
        C.INSTALLING,
        C.INSTALLED,
        C.RESTARTING,
        C.STARTING,
        C.UPDATED,
        C.RUNNING,
        C.CHECKING,
    ]
    check = script.phone.log.coded(C.CHECKING)[0].facts
    assert (check.trigger, check.route, check.url, check.version, check.interval) == (
        CheckTrigger.POWER_ON,
        RouteKind.DISCOVERY,
        DISCOVERY_URL,
        FACTORY,
        86_400,
    )
    offer = only(script, C.OFFERED).facts
    assert (offer.version, offer.previous, offer.route, offer.url, offer.address) == (
        NEW,
        FACTORY,
        RouteKind.DISCOVERY,
        DISCOVERY_URL,
        FRONT_ENDS[0],
    )
    assert offer.purpose is Purpose.CHECK
    downloaded = [e.facts for e in script.phone.log.coded(C.DOWNLOADED)]
    assert [(f.module, f.size, f.version) for f in downloaded] == [
        ("CPE.cat", len(fw.catalog), NEW),
        ("CPE.nbt", len(fw.image), NEW),
    ]
    assert only(script, C.INSTALLED).facts == LogFacts(version=NEW, slot=SlotName.B)
    assert only(script, C.RESTARTING).facts == LogFacts(version=NEW, slot=SlotName.B)
    assert only(script, C.UPDATED).facts == LogFacts(version=NEW, previous=FACTORY, slot=SlotName.B)
    assert last(script, C.RUNNING).facts.version == NEW


def test_nothing_to_install_is_up_to_date_with_the_running_version(script: Script) -> None:
    script.boot()
    script.check_with(NO_UPDATE)
    entry = only(script, C.UP_TO_DATE)
    assert (entry.facts.version, entry.facts.address) == (FACTORY, FRONT_ENDS[0])


def test_a_denied_check_carries_the_status_and_the_services_diagnostic(script: Script) -> None:
    script.boot()
    script.resolve(*EDGE)
    script.respond(403, diagnostics='40301;reason="update checks from outside need a user"')
    facts = only(script, C.DENIED).facts
    assert (facts.purpose, facts.status) == (Purpose.CHECK, 403)
    assert facts.diagnostics == Diagnostics(40301, "update checks from outside need a user")


def test_another_4xx_is_a_refused_request(script: Script) -> None:
    script.boot()
    script.resolve(*FRONT_ENDS)
    script.respond(400)
    assert only(script, C.REQUEST_REFUSED).facts.status == 400


def test_a_busy_or_broken_front_end_sends_the_phone_to_the_next(
    script: Script, vendor: Vendor
) -> None:
    script.boot()
    script.resolve(*FRONT_ENDS)
    script.respond(503, retry_after=120)
    script.respond(200, offer_xml(firmware(vendor)))
    unavailable = only(script, C.UNAVAILABLE).facts
    assert (unavailable.status, unavailable.retry_after, unavailable.address) == (
        503,
        120,
        FRONT_ENDS[0],
    )
    script.resolve(*FRONT_ENDS)
    script.respond(404)
    failed = only(script, C.SERVER_FAILED).facts
    assert (failed.status, failed.purpose, failed.address) == (404, Purpose.DOWNLOAD, FRONT_ENDS[0])


def test_lookups_and_connections_that_fail_say_how(script: Script) -> None:
    script.boot()
    script.do(ResolutionFailed(script.later(), "ucupdates-r2.contoso.test", "gone", "NXDOMAIN"))
    failed = only(script, C.DNS_FAILED).facts
    assert (failed.host, failed.dns_answer) == ("ucupdates-r2.contoso.test", "NXDOMAIN")
    scheduled = only(script, C.RETRY_SCHEDULED).facts
    assert scheduled.purpose is Purpose.CHECK
    assert scheduled.at == script.phone.timers[Timer.RETRY]

    script.fire(Timer.RETRY)
    assert last(script, C.CHECKING).facts.trigger is CheckTrigger.RETRY
    script.resolve(*FRONT_ENDS)
    bad_name = CertificateProblem.NAME_MISMATCH
    script.do(ConnectionFailed(script.later(), "certificate", certificate=bad_name))
    script.do(ConnectionFailed(script.later(), "connection refused"))
    refusals = [e.facts for e in script.phone.log.coded(C.CONNECTION_FAILED)]
    assert [(f.host, f.address, f.certificate) for f in refusals] == [
        ("ucupdates-r2.contoso.test", FRONT_ENDS[0], bad_name),
        ("ucupdates-r2.contoso.test", FRONT_ENDS[1], None),
    ]


def test_giving_up_after_the_last_retry_is_its_own_code(vendor: Vendor) -> None:
    script = Script.new(vendor=vendor)
    script.boot()
    for _ in range(script.phone.settings.max_retries):
        script.do(ResolutionFailed(script.later(), "ucupdates-r2.contoso.test", "x", "SERVFAIL"))
        script.fire(Timer.RETRY)
    script.do(ResolutionFailed(script.later(), "ucupdates-r2.contoso.test", "x", "SERVFAIL"))
    assert only(script, C.GAVE_UP).facts.purpose is Purpose.CHECK
    assert len(script.phone.log.coded(C.RETRYING)) == script.phone.settings.max_retries


def test_signed_in_phones_check_in_band_and_fall_back_to_the_external_url(
    script: Script, vendor: Vendor
) -> None:
    script.boot()
    script.check_with(NO_UPDATE)
    script.do(SignIn(script.later(), ALICE))
    assert only(script, C.SIGNING_IN).facts.user == ALICE.account
    script.resolve(FRONT_ENDS[0])
    script.respond(200, provisioning_xml())
    signed_in = only(script, C.SIGNED_IN).facts
    assert (signed_in.user, signed_in.interval) == ("alice@contoso.test", 86_400)

    check = last(script, C.CHECKING).facts
    assert (check.trigger, check.route, check.url) == (
        CheckTrigger.SIGN_IN,
        RouteKind.INTERNAL,
        INTERNAL_URL,
    )
    script.do(ResolutionFailed(script.later(), "pool01.contoso.test", "x", "NXDOMAIN"))
    fallback = only(script, C.FALLING_BACK).facts
    assert (fallback.route, fallback.url) == (RouteKind.EXTERNAL, EXTERNAL_URL)
    script.check_with(offer_xml(firmware(vendor)), EDGE)
    offer = only(script, C.OFFERED).facts
    assert (offer.route, offer.url, offer.address) == (RouteKind.EXTERNAL, EXTERNAL_URL, EDGE[0])


def test_the_periodic_check_says_so_with_its_interval(script: Script) -> None:
    script.boot()
    script.check_with(NO_UPDATE)
    script.fire(Timer.CHECK)
    check = last(script, C.CHECKING).facts
    assert (check.trigger, check.interval) == (CheckTrigger.PERIODIC, 86_400)


def test_a_periodic_check_that_falls_due_during_a_download_is_due_not_periodic(
    vendor: Vendor,
) -> None:
    script = Script.new(vendor=vendor, settings=PhoneSettings(check_interval=120))
    script.boot()
    script.check_with(offer_xml(firmware(vendor)))
    script.fire(Timer.CHECK)
    assert only(script, C.CHECK_POSTPONED).time == script.now
    script.download_all(firmware(vendor))
    script.do(VerificationFailed(script.later(), "catalog signature does not verify"))
    # Nothing was installed, so the check owed runs as the update pass ends.
    check = last(script, C.CHECKING)
    assert (check.time, check.facts.trigger) == (script.now, CheckTrigger.DUE)


def test_a_periodic_check_due_during_a_sign_in_is_the_sign_ins_check(vendor: Vendor) -> None:
    script = Script.new(vendor=vendor, settings=PhoneSettings(check_interval=120))
    script.boot()
    script.check_with(NO_UPDATE)
    script.now = script.phone.timers[Timer.CHECK] - 1
    script.do(SignIn(script.now, ALICE))
    script.fire(Timer.CHECK)
    assert only(script, C.CHECK_POSTPONED).time == script.now
    script.resolve(FRONT_ENDS[0])
    script.respond(200, provisioning_xml())
    # One check follows the sign-in, not two: the one that fell due is the sign-in's.
    checks = script.phone.log.coded(C.CHECKING)
    assert [e.facts.trigger for e in checks] == [CheckTrigger.POWER_ON, CheckTrigger.SIGN_IN]
    assert checks[-1].time == script.now


def test_a_failed_sign_in_leaves_the_periodic_check_due(vendor: Vendor) -> None:
    script = Script.new(vendor=vendor, settings=PhoneSettings(check_interval=120))
    script.boot()
    script.check_with(NO_UPDATE)
    script.now = script.phone.timers[Timer.CHECK] - 1
    script.do(SignIn(script.now, ALICE))
    script.fire(Timer.CHECK)
    script.resolve(FRONT_ENDS[0])
    script.respond(401, diagnostics='28020;reason="The user name or password is wrong"')
    assert last(script, C.CHECKING).facts.trigger is CheckTrigger.DUE


def test_calls_and_use_around_the_restart(script: Script, vendor: Vendor) -> None:
    fw = firmware(vendor)
    script.boot()
    script.check_with(offer_xml(fw))
    script.install(fw)
    script.do(CallStarted(script.later()))
    script.do(CallEnded(script.later(60)))
    script.do(UserActivity(script.later(10)))
    assert codes(script)[-5:] == [
        C.CALL_STARTED,
        C.RESTART_HELD,
        C.CALL_ENDED,
        C.RESTART_MOVED,
        C.RESTART_MOVED,
    ]
    moved = last(script, C.RESTART_MOVED).facts
    assert moved.at == script.phone.timers[Timer.REBOOT]


def test_a_cut_download_says_where_it_resumes(script: Script, vendor: Vendor) -> None:
    script.boot()
    script.check_with(offer_xml(firmware(vendor)))
    script.resolve(*FRONT_ENDS)
    script.do(DownloadInterrupted(script.later(), 1_000, '"v1"', "connection reset by peer"))
    cut = only(script, C.DOWNLOAD_CUT).facts
    assert (cut.module, cut.version, cut.offset, cut.address) == (
        "CPE.cat",
        NEW,
        1_000,
        FRONT_ENDS[0],
    )
    assert last(script, C.DOWNLOADING).facts.module == "CPE.cat"


@pytest.mark.parametrize("problem", list(FirmwareProblem))
def test_a_refused_update_names_the_kind_of_check_it_failed(
    script: Script, vendor: Vendor, problem: FirmwareProblem
) -> None:
    fw = firmware(vendor)
    script.boot()
    script.check_with(offer_xml(fw))
    script.download_all(fw)
    script.do(VerificationFailed(script.later(), "it does not add up", problem=problem))
    refused = only(script, C.UPDATE_REFUSED).facts
    assert (refused.version, refused.previous, refused.firmware) == (NEW, FACTORY, problem)


def test_a_power_cut_while_installing_and_the_damaged_backup(
    script: Script, vendor: Vendor
) -> None:
    fw = firmware(vendor)
    script.boot()
    script.check_with(offer_xml(fw))
    script.download_all(fw)
    script.verify()
    script.verify()
    script.do(PowerLost(script.later(10)))
    assert only(script, C.POWER_CUT_INSTALLING).facts == LogFacts(version=NEW, slot=SlotName.B)
    assert not script.phone.log.coded(C.POWER_LOST)
    script.power_on()
    assert only(script, C.BACKUP_DAMAGED).facts == LogFacts(version=NEW, slot=SlotName.B)
    script.fire(Timer.BOOT)
    script.do(PowerLost(script.later()))
    assert len(script.phone.log.coded(C.POWER_LOST)) == 1


def test_a_failed_boot_returns_to_the_backup_and_is_not_installed_again(
    script: Script, vendor: Vendor
) -> None:
    fw = firmware(vendor)
    script.boot()
    script.check_with(offer_xml(fw))
    script.install(fw)
    script.fire(Timer.REBOOT)
    script.do(BootFailed(script.later(20), "kernel panic"))
    assert only(script, C.BOOT_FAILED).facts == LogFacts(version=NEW, slot=SlotName.B)
    returning = only(script, C.RETURNING_TO_BACKUP).facts
    assert returning == LogFacts(version=FACTORY, slot=SlotName.A)
    script.fire(Timer.BOOT)
    script.check_with(offer_xml(fw))
    assert only(script, C.NOT_REINSTALLED).facts.version == NEW


def test_the_backup_offered_again_is_switched_to(script: Script, vendor: Vendor) -> None:
    fw = firmware(vendor)
    script.boot()
    script.check_with(offer_xml(fw))
    script.install(fw)
    script.fire(Timer.REBOOT)
    script.fire(Timer.BOOT)
    script.check_with(NO_UPDATE)
    script.fire(Timer.CHECK)
    script.check_with(offer_xml(firmware(vendor, FACTORY)))
    backup = only(script, C.BACKUP_OFFERED).facts
    assert (backup.version, backup.previous, backup.slot) == (FACTORY, NEW, SlotName.A)


def test_provisioning_that_turns_updates_off_is_its_own_code(script: Script) -> None:
    script.boot()
    script.check_with(NO_UPDATE)
    script.do(SignIn(script.later(), ALICE))
    script.resolve(FRONT_ENDS[0])
    script.respond(200, provisioning_xml(enabled=False))
    script.do(PowerLost(script.later()))
    script.boot()
    assert C.UPDATES_DISABLED in codes(script)


def test_no_line_the_core_writes_is_left_without_a_code(script: Script, vendor: Vendor) -> None:
    fw = firmware(vendor)
    script.boot()
    script.check_with(offer_xml(fw))
    script.install(fw)
    script.do(CallStarted(script.later()))
    script.do(CallEnded(script.later()))
    script.fire(Timer.REBOOT)
    script.fire(Timer.BOOT)
    script.check_with(NO_UPDATE)
    script.do(SignIn(script.later(), ALICE))
    script.resolve(FRONT_ENDS[0])
    script.respond(200, provisioning_xml())
    assert len(script.phone.log) > 20
    assert C.NOTE not in codes(script)


def test_an_entry_for_json_carries_its_code_and_the_facts_it_sets() -> None:
    log = PhoneLog()
    entry = log.add(
        0.0,
        LogLevel.WARNING,
        "update",
        "words for a person",
        code=LogCode.REQUEST_REFUSED,
        facts=LogFacts(
            status=503,
            route=RouteKind.DISCOVERY,
            diagnostics=Diagnostics(50301, "fe01 is in maintenance"),
        ),
    )
    data = entry.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "time": "1970-01-01T00:00:00.000Z",
        "level": "WARN",
        "topic": "update",
        "code": LogCode.REQUEST_REFUSED.value,
        "facts": {
            "route": RouteKind.DISCOVERY.value,
            "status": 503,
            "diagnostics": {"code": 50301, "reason": "fe01 is in maintenance"},
        },
        "line": entry.render(),
    }
