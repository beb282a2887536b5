"""The troubleshooting catalogue: one table of scenarios, each a support case the lab replays.

Every entry names what a support engineer is told (symptom), what is really wrong (cause),
what to do (fix), and the outcome the subject phone must show, in the words of
lab.scenarios.framework.describe_outcome. Runs use the embedded default lab (domain
contoso.test, front ends fe01 and fe02, the edge), whose names the outcomes mention.
"""

from __future__ import annotations

from emulator import (
    BootFailure,
    Call,
    LogCode,
    PhoneState,
    PowerCut,
    Trigger,
    WrongClock,
)
from lab.ops.harness import FACTORY, NEW
from lab.ops.scenarios.framework import (
    DAY,
    HOUR,
    Admin,
    AlteredImage,
    BadCertificate,
    Dependency,
    DNSRecordMissing,
    ForeignSignature,
    Maintenance,
    NameTestDevice,
    NotImportedInto,
    Outside,
    Pass,
    PhoneSpec,
    PhoneTrouble,
    PowerOn,
    Publish,
    Scenario,
    Settle,
    Setup,
    Unplug,
)
from lab.ops.scenarios.proxy import PROXY_SCENARIOS
from lab.service.inventory import SUPPORT_WINDOW
from lab.store.decision import Action

LARGE_IMAGE = 8 * 1024 * 1024
"""Big enough that a front end is still sending when a maintenance fault strikes."""
SUPPORT_DAYS = SUPPORT_WINDOW.total_seconds()
"""Microsoft's support window for the previous release, in seconds (60 days)."""
DAY_LONG = 28_800.0
"""The scale of scenarios that wait for the 24-hour check: a phone day in about 3 s."""

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="first-boot-discovery",
        title="A phone never signed in finds the service through ucupdates-r2 and updates",
        symptom="A new phone, plugged in with nobody signed in: does it get the approved firmware?",
        cause="No user has signed in, so the phone has no in-band provisioning: it looks up "
        "ucupdates-r2 in the domain DHCP gave it and asks the front ends that name points to.",
        fix="Nothing to fix: keep the ucupdates-r2 A record pointing at the pool's front ends "
        "and approve the firmware; the phone restarts after 5 minutes without a call or use, "
        "counted from when the download was verified.",
        expected=f"updated {NEW}",
        evidence=(LogCode.CHECKING, LogCode.OFFERED, LogCode.UPDATED),
        depends_on=Dependency(
            "the ucupdates-r2 A record in the phone's DHCP domain",
            breaks=DNSRecordMissing("ucupdates-r2.contoso.test"),
        ),
    ),
    Scenario(
        name="ucupdates-record-missing",
        title="The ucupdates-r2 record is missing",
        symptom="New phones that nobody has signed in to never update; signed-in phones do.",
        cause="There is no ucupdates-r2.contoso.test record in DNS, so a phone without in-band "
        "provisioning cannot find the Device Update Web service.",
        fix="Create the A record ucupdates-r2.contoso.test for the pool's front ends (internal "
        "DNS; the edge in external DNS), or sign a user in on the phone.",
        expected="not found: ucupdates-r2.contoso.test",
        fault=DNSRecordMissing("ucupdates-r2.contoso.test"),
        evidence=(LogCode.DNS_FAILED, LogCode.GAVE_UP),
    ),
    Scenario(
        name="ucupdates-only-in-sip-domain",
        title="The record exists only in the SIP domain while DHCP hands out another domain",
        symptom="ucupdates-r2.contoso.test resolves, yet phones never signed in do not update.",
        cause="DHCP hands out the domain corp.contoso.test, so phones look up "
        "ucupdates-r2.corp.contoso.test; the record exists only in the SIP domain contoso.test.",
        fix="Create ucupdates-r2 in the zone of the DHCP domain too (corp.contoso.test), or "
        "hand out the SIP domain in DHCP option 15.",
        expected="not found: ucupdates-r2.corp.contoso.test",
        setup=Setup(dhcp_domain="corp.contoso.test"),
        fault=DNSRecordMissing("ucupdates-r2.corp.contoso.test"),
        evidence=(LogCode.POWER_ON, LogCode.DNS_FAILED, LogCode.GAVE_UP),
    ),
    Scenario(
        name="certificate-without-ucupdates-name",
        title="The server certificate lacks the ucupdates-r2 name",
        symptom="Phones find ucupdates-r2 in DNS but never get an answer; the front ends log "
        "no request from them.",
        cause="The front ends' certificate does not carry ucupdates-r2.contoso.test, so the "
        "phone refuses the TLS connection before any HTTP is sent.",
        fix="Reissue the front-end certificates with ucupdates-r2 in every SIP and DHCP domain "
        "phones use (ucupdates-r2.contoso.test) as a subject alternative name.",
        expected="certificate refused: ucupdates-r2.contoso.test is not on it",
        fault=BadCertificate("no-ucupdates-name"),
        evidence=(LogCode.CONNECTION_FAILED, LogCode.GAVE_UP),
    ),
    Scenario(
        name="phone-clock-wrong",
        title="The phone's clock is wrong",
        symptom="One phone refuses every server certificate while other phones update fine.",
        cause="The phone's clock is 400 days behind, so every certificate looks not yet valid "
        "to it.",
        fix="Give the phone the right time (an NTP server in DHCP option 42 or the "
        "_ntp._udp SRV record), then restart it or wait for its next check.",
        expected="certificate refused: not yet valid by the phone's clock",
        fault=PhoneTrouble(WrongClock(offset=-400 * DAY)),
        evidence=(
            LogCode.CLOCK_CHANGED,
            LogCode.CONNECTION_FAILED,
            LogCode.GAVE_UP,
        ),
    ),
    Scenario(
        name="update-pending",
        title="The update is still pending: only test devices get it",
        symptom="The new firmware was imported and the administrator's test phone has it, but "
        "the other phones stay on the old version.",
        cause="The rule is Pending: only test devices receive a pending version; every other "
        "phone is told there is nothing for it.",
        fix="Once the test devices are fine, approve the rule (lab update approve --model "
        "CX600; Approve-CsDeviceUpdateRule).",
        expected=f"stayed on {FACTORY}",
        setup=Setup(admin=(Publish(approve=False), NameTestDevice(phone=0))),
        depends_on=Dependency(
            "the version left pending: approved, every phone gets it",
            replace=((Publish(approve=False), Publish()),),
        ),
        phones=(PhoneSpec(index=1), PhoneSpec(index=2)),
        subject=1,
        evidence=(LogCode.OFFERED, LogCode.UP_TO_DATE, LogCode.UPDATED),
    ),
    Scenario(
        name="outside-no-user",
        title="Outside with no user signed in",
        symptom="A phone at home never updates, although phones in the office do.",
        cause="Outside the firewall the phone reaches the external web service through the "
        "edge, which serves update checks only for a signed-in user.",
        fix="Sign a user in on the phone (the check then carries the user's credentials), or "
        "bring the phone into the office once.",
        expected="refused: no signed-in user",
        fault=Outside(),
        evidence=(LogCode.RESOLVED, LogCode.DENIED),
    ),
    Scenario(
        name="outside-signed-in",
        title="Outside, signed in: the update comes through the edge with NTLM",
        symptom="A remote worker's phone, signed in at home: does it update?",
        cause="Once the user signs in, in-band provisioning gives the external URL; checks "
        "and downloads go through the edge with the user's NTLM credentials.",
        fix="Nothing to fix: publish the external web services (the edge) and keep the "
        "ucupdates-r2 record in external DNS pointing at it.",
        expected=f"updated {NEW} through the edge",
        phones=(PhoneSpec(inside=False, user="alice"),),
        depends_on=Dependency(
            "the user signed in on the phone (NTLM through the edge)",
            replace=((PhoneSpec(inside=False, user="alice"), PhoneSpec(inside=False)),),
        ),
        evidence=(LogCode.SIGNED_IN, LogCode.OFFERED, LogCode.DOWNLOADED, LogCode.UPDATED),
    ),
    Scenario(
        name="imported-into-one-pool-only",
        title="Imported into one pool only: phones homed on the other are told there is nothing",
        symptom="A day after the approval the phone in the lobby (nobody signed in) has "
        "updated; Carol's phone, on the desk next to it, has not, and its log says it is up "
        "to date.",
        cause="The cab was imported into pool01.contoso.test only. Each pool has its own file "
        "store and rules (a rule's identity names its pool: "
        "service:WebServer:pool01.contoso.test/...), which all its front ends serve. A "
        "signed-in phone checks with its user's home pool, as in-band provisioning tells "
        "it: Carol is homed on se01.contoso.test, which has no rule for the model and "
        "answers that there is no update. Phones with no user find pool01 through "
        "ucupdates-r2 and update.",
        fix="Import the cab into every pool that has phones (lab update import FILE "
        "--all-pools, or --pool se01; Import-CsDeviceUpdate -Identity "
        "service:WebServer:se01.contoso.test), approve it there, and check each pool's rules "
        "(lab update list --pool se01).",
        expected=f"stayed on {FACTORY}",
        # The phones run, Carol signed in, before the approval; they see it at their next
        # periodic check, each at the pool it checks with.
        setup=Setup(admin=(Publish(approve=False),)),
        fault=NotImportedInto("se01.contoso.test"),
        phones=(PhoneSpec(user="carol"), PhoneSpec(index=2)),
        script=(PowerOn(), Settle(), Admin(Action.APPROVE), Pass(DAY), Settle()),
        evidence=(LogCode.SIGNED_IN, LogCode.UP_TO_DATE),
        scale=DAY_LONG,
    ),
    Scenario(
        name="maintenance-drain",
        title="Maintenance (drain) during a download",
        symptom="A front end was put into maintenance while phones were downloading: did "
        "their downloads break?",
        cause="Draining lets transfers in progress finish and turns new requests away (503 "
        "with Retry-After) to the other front ends.",
        fix="Nothing to fix: drain the front end and wait until it is drained before working "
        "on it. On a Lync pool that is Stop-CsWindowsService -Graceful on the front end "
        "(Start-CsWindowsService brings it back); in the lab, lab maintenance enter SERVER and "
        "lab maintenance exit SERVER, with the semantics of Cloud Connector's Enter-CcUpdate "
        "(its summary: drain) and Exit-CcUpdate.",
        expected=f"updated {NEW} with the download finished on a draining front end",
        setup=Setup(admin=(Publish(size=LARGE_IMAGE),)),
        fault=Maintenance(immediate=False),
        evidence=(LogCode.DOWNLOADED, LogCode.UPDATED),
    ),
    Scenario(
        name="maintenance-immediate",
        title="Immediate maintenance: the download resumes on the other server",
        symptom="A front end was stopped at once during downloads: do phones start over?",
        cause="Immediate maintenance cuts transfers in progress; the phone asks the next "
        "server for the rest of the file (Range with If-Range), not for all of it.",
        fix="Prefer draining (on a Lync pool Stop-CsWindowsService -Graceful; in the lab lab "
        "maintenance enter SERVER without --immediate); after an immediate stop nothing is "
        "needed: phones resume elsewhere and verify the whole image against its catalog.",
        expected=f"updated {NEW} with the download resumed on another front end",
        setup=Setup(admin=(Publish(size=LARGE_IMAGE),)),
        fault=Maintenance(immediate=True),
        evidence=(LogCode.DOWNLOAD_CUT, LogCode.DOWNLOADED, LogCode.IMAGE_VERIFIED),
    ),
    Scenario(
        name="restore-to-backup",
        title="Restore: roll back to the backup image without a download",
        symptom="The new firmware misbehaves and the administrator restored the rule: will "
        "phones download the old firmware again?",
        cause="Restore makes the previous version the approved one. A phone that still holds "
        "it as its backup image switches to it at its next check, without a download.",
        fix="Nothing to fix: restore the rule (lab update restore --model CX600; "
        "Restore-CsDeviceUpdateRule) and wait for the phones' next check (24 hours at most).",
        expected=f"back on {FACTORY} without a download",
        setup=Setup(admin=(Publish(version=FACTORY), Publish())),
        script=(PowerOn(), Settle(), Admin(Action.RESTORE), Pass(DAY + HOUR), Settle()),
        depends_on=Dependency(
            "the administrator's restore", replace=((Admin(Action.RESTORE), None),)
        ),
        evidence=(LogCode.OFFERED, LogCode.BACKUP_OFFERED, LogCode.UPDATED),
        scale=DAY_LONG,
    ),
    Scenario(
        name="power-cut-while-installing",
        title="Power lost while flashing",
        symptom="A phone lost power in the middle of an update: is it broken?",
        cause="Only the slot being written is damaged; the phone starts its old image, sees "
        "the damaged slot and downloads the update again.",
        fix="Nothing to fix: give the phone power and let it finish; do not pull power "
        "while the screen says it is installing.",
        expected=f"updated {NEW} after a power cut while installing",
        fault=PhoneTrouble(PowerCut()),
        evidence=(LogCode.POWER_CUT_INSTALLING, LogCode.BACKUP_DAMAGED, LogCode.UPDATED),
    ),
    Scenario(
        name="boot-failure",
        title="A new image that does not start: back to the backup",
        symptom="After an update a phone came back on its old version and stays there.",
        cause="The new image did not start; the phone went back to its backup image and will "
        "not install the failed version again.",
        fix="Report the image to the vendor; reset or restore the rule so no other phone "
        "tries it (lab update restore --model CX600).",
        expected=f"back on {FACTORY} after {NEW} did not start",
        fault=PhoneTrouble(BootFailure()),
        evidence=(LogCode.BOOT_FAILED, LogCode.RETURNING_TO_BACKUP, LogCode.NOT_REINSTALLED),
    ),
    Scenario(
        name="tampered-image",
        title="A tampered image",
        symptom="Phones download the update, then keep their old version.",
        cause="The image in the file stores differs from what the vendor's signed catalog "
        "says (size and SHA-256): the phone refuses it.",
        fix="Import the vendor's cab again into the pool (it replaces the files) and "
        "find out what changed them.",
        expected=f"refused {NEW}: image altered",
        fault=AlteredImage(),
        evidence=(LogCode.CATALOG_VERIFIED, LogCode.UPDATE_REFUSED),
    ),
    Scenario(
        name="wrongly-signed-catalog",
        title="A wrongly signed catalog",
        symptom="Phones download the update, then refuse it, saying it is not signed by their "
        "vendor.",
        cause="The catalog is signed with another vendor's key; the phone trusts only its "
        "own vendor's key.",
        fix="Import the cab from the phone's own vendor, and check which signing keys the "
        "import trusts.",
        expected=f"refused {NEW}: catalog not signed by the vendor",
        fault=ForeignSignature(),
        evidence=(LogCode.UPDATE_REFUSED,),
    ),
    Scenario(
        name="busy-in-calls",
        title="A phone busy in a call restarts only after the call",
        symptom="A phone downloaded the update but kept the old version for a long time.",
        cause="A phone restarts into a new image only after five minutes with no call or use; "
        "the call held the restart.",
        fix="Nothing to fix: the phone restarts five minutes after the call ends.",
        expected=f"updated {NEW} once the call ended",
        fault=PhoneTrouble(Call(trigger=Trigger(on=PhoneState.DOWNLOADING), duration=1800.0)),
        scale=1200.0,
        evidence=(
            LogCode.CALL_STARTED,
            LogCode.CALL_ENDED,
            LogCode.RESTARTING,
        ),
    ),
    Scenario(
        name="approved-at-24-hour-check",
        title="The 24-hour check picks up a newly approved version",
        symptom="The administrator approved new firmware hours ago; phones have not updated.",
        cause="Phones check at power-on, at sign-in and every 24 hours: a running phone sees "
        "an approval at its next periodic check.",
        fix="Wait for the next check (24 hours at most), or restart the phones to check at once.",
        expected=f"updated {NEW} at the periodic check (every 24 h)",
        setup=Setup(admin=(Publish(approve=False),)),
        script=(PowerOn(), Settle(), Pass(3 * HOUR), Admin(Action.APPROVE), Pass(DAY), Settle()),
        depends_on=Dependency(
            "the approval while the phone runs", replace=((Admin(Action.APPROVE), None),)
        ),
        evidence=(LogCode.CHECKING, LogCode.UP_TO_DATE, LogCode.OFFERED),
        scale=DAY_LONG,
    ),
    Scenario(
        name="out-of-the-support-window",
        title="A phone left on the previous release for over 60 days is out of support",
        symptom="A phone that was unplugged when new firmware was approved still runs the "
        "old release two months later: is it supported?",
        cause="Microsoft supports the previous release for 60 days after the next one. The "
        "lab applies it per device kind in lab time: 60 days after a version is approved, "
        "a phone of that kind still on an older one is flagged left-behind by lab phones.",
        fix="Find such phones with lab phones (flag left-behind) and plug them in or restart "
        "them: they take the approved version at that check.",
        expected=f"stayed on {FACTORY}, out of the support window",
        setup=Setup(admin=(Publish(approve=False),)),
        script=(PowerOn(), Settle(), Unplug(), Admin(Action.APPROVE), Pass(SUPPORT_DAYS + DAY)),
        depends_on=Dependency(
            "the 60 days of the support window passing",
            replace=((Pass(SUPPORT_DAYS + DAY), Pass(SUPPORT_DAYS - DAY)),),
        ),
        evidence=(LogCode.CHECKING, LogCode.UP_TO_DATE),
    ),
)
SCENARIOS += PROXY_SCENARIOS
