"""A phone uploads its log to the service as a CELog: inside anonymously, outside with NTLM.

Real lab and phones on fake loop time (the plugin's fixtures); the stored file is read back
from the front end's DeviceLogs folder and compared byte for byte with the rendered log.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from emulator.driver import PhoneDriver, log_upload_url
from emulator.errors import ServiceStatusError
from emulator.phonelog import LogCode, LogLevel, PhoneLog, celog_file_name, render_celog
from emulator.states import PhoneState
from lab.models import normalise_mac
from lab.ops.harness import ALICE, EDGE, NEW, T0, Phones, RunningLab, idle_on
from lab.service.audit import AuditRecord
from lab.service.problems import Diagnostic

LOG_UPLOADS = ("/RequestHandler/ucdevicelog.upx", "/RequestHandlerExt/ucdevicelog.upx")


def stored_logs(lab: RunningLab, mac: str) -> list[Path]:
    """Every log of the phone with ``mac`` on any front end."""
    return sorted(lab.state_dir.glob(f"servers/*/DeviceLogs/{normalise_mac(mac)}/*"))


def uploads(lab: RunningLab) -> list[AuditRecord]:
    return [r for r in lab.audit if r.path in LOG_UPLOADS]


async def upload_and_expect(phone: PhoneDriver) -> tuple[str, bytes, float]:
    """Upload; the answer, the CELog the phone rendered from its log before, and when."""
    before = phone.phone.log.entries
    where = await phone.upload_log()
    started = phone.phone.log.coded(LogCode.LOG_UPLOADING)[-1].time
    log = PhoneLog()
    for entry in before:
        log.add(entry.time, entry.level, entry.topic, entry.message)
    expected = render_celog(log, phone.phone.identity, started).encode("utf-8")
    return where, expected, started


@pytest.mark.looptime
async def test_an_inside_phone_uploads_its_log_after_an_update(
    device_lab: RunningLab, phones: Phones
) -> None:
    device_lab.publish("CX600", NEW)
    phone = phones.phone()
    identity = phone.phone.identity
    phone.power_on()
    await phone.wait_for(idle_on(NEW), until=T0 + 3600)

    where, expected, started = await upload_and_expect(phone)

    (path,) = stored_logs(device_lab, identity.mac)
    assert path.name.endswith("_" + celog_file_name(identity, started))
    assert path.read_bytes() == expected
    text = path.read_text(encoding="utf-8")
    assert text.startswith("CELog device log\n")
    assert f"MAC address: {identity.mac}\n" in text
    assert "offers an update" in text
    assert "downloaded CPE.nbt" in text
    assert "installed in slot B" in text
    assert where == f"stored {path.name} ({len(expected)} bytes)"
    # Inside, to the internal site, from the phone's own address, with no user.
    (upload,) = uploads(device_lab)
    assert (upload.site, upload.client_address, upload.status) == ("internal", phone.address, 200)
    assert upload.path == "/RequestHandler/ucdevicelog.upx"
    (done,) = phone.phone.log.coded(LogCode.LOG_UPLOADED)
    server = next(fe for fe in device_lab.config.front_ends if fe.name == upload.server)
    assert done.facts.host == "ucupdates-r2.contoso.test"
    assert done.facts.address == str(server.address)
    assert done.level is LogLevel.INFO
    assert done.topic == "log upload"


@pytest.mark.looptime
async def test_an_outside_phone_uploads_its_log_through_the_edge_once_a_user_signed_in(
    device_lab: RunningLab, phones: Phones
) -> None:
    device_lab.publish("6725ip", NEW)
    phone = phones.phone("6725ip", inside=False)
    mac = phone.phone.identity.mac
    phone.power_on()
    await phone.wait_for(lambda d: d.phone.state is PhoneState.IDLE, until=T0 + 3600)

    # No user: the external site wants one, as it does for an update check.
    with pytest.raises(ServiceStatusError) as refused:
        await phone.upload_log()
    assert refused.value.status == 401
    assert str(refused.value).startswith(f"{phone.name}: the service refused its log: ")
    assert "the phone has no credentials to sign in with" in str(refused.value)
    assert stored_logs(device_lab, mac) == []
    assert [e.facts.status for e in phone.phone.log.coded(LogCode.LOG_NOT_UPLOADED)] == [401]

    phone.sign_in(ALICE)
    await phone.wait_for(idle_on(NEW), until=T0 + 2 * 3600)
    assert phone.credentials == ALICE
    before = len(uploads(device_lab))

    where, expected, _ = await upload_and_expect(phone)

    (path,) = stored_logs(device_lab, mac)
    assert path.read_bytes() == expected
    assert "signed in as alice@contoso.test" in path.read_text(encoding="utf-8")
    assert where.startswith(f"stored {path.name} ")
    # Through the edge to the external site, NTLM on one connection: the anonymous try and
    # the NEGOTIATE leg are challenged (401), the AUTHENTICATE leg is served.
    sent = uploads(device_lab)[before:]
    assert [(r.site, r.client_address, r.status) for r in sent] == [
        ("external", EDGE, 401),
        ("external", EDGE, 401),
        ("external", EDGE, 200),
    ]
    assert {r.path for r in sent} == {"/RequestHandlerExt/ucdevicelog.upx"}


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("setting", "diagnostic", "reason"),
    [
        (
            ("ValidLogFileTypes", "Watson"),
            Diagnostic.LOG_TYPE_NOT_ACCEPTED,
            "log type 'CELog' is not accepted",
        ),
        (
            ("MaxLogFileSize", "1024"),
            Diagnostic.BODY_TOO_LARGE,
            "larger than MaxLogFileSize (1024 bytes)",
        ),
    ],
)
async def test_a_refused_log_says_why_in_the_error_and_the_phone_log(
    device_lab: RunningLab,
    phones: Phones,
    setting: tuple[str, str],
    diagnostic: Diagnostic,
    reason: str,
) -> None:
    status = diagnostic.status
    device_lab.publish("CX600", NEW)
    with device_lab.store() as store:
        store.set_settings(dict([setting]))
    phone = phones.phone()
    phone.power_on()
    await phone.wait_for(idle_on(NEW), until=T0 + 3600)

    with pytest.raises(ServiceStatusError) as refused:
        await phone.upload_log()

    error = refused.value
    assert error.status == status
    assert error.reason is not None
    assert reason in error.reason
    assert f"HTTP {status}" in str(error)
    assert reason in str(error)
    assert stored_logs(device_lab, phone.phone.identity.mac) == []
    (line,) = phone.phone.log.coded(LogCode.LOG_NOT_UPLOADED)
    assert line.facts.status == status
    assert line.facts.diagnostics is not None
    assert line.facts.diagnostics.code == diagnostic.code
    # The line is for a support engineer: it gives the service's reason in words.
    assert reason in line.message
    assert (line.level, line.topic) == (LogLevel.ERROR, "log upload")
    (upload,) = uploads(device_lab)
    assert upload.status == status


async def test_emulator_run_uploads_every_phones_log_at_the_end_and_says_where_it_went(
    device_lab: RunningLab,
) -> None:
    device_lab.publish("CX600", NEW)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emulator.cli",
        "run",
        "--state-dir",
        str(device_lab.state_dir),
        "--phones",
        "2",
        "--location",
        "mixed",
        "--scale",
        "1000",
        "--loop",
        "asyncio",
        "--upload-logs",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out_bytes, err_bytes = await process.communicate()
    out, err = out_bytes.decode(), err_bytes.decode()
    assert process.returncode == 0, err

    # The inside phone's log is stored; the outside one, with no user, is refused and the
    # report says why.
    inside, outside = "00-04-F2-00-00-01", "00-04-F2-00-00-02"
    (path,) = stored_logs(device_lab, inside)
    assert "downloaded CPE.nbt" in path.read_text(encoding="utf-8")
    assert stored_logs(device_lab, outside) == []
    assert "log uploads: 1 stored, 1 refused or not delivered\n" in out
    assert f"  {inside} log: stored {path.name} (" in out
    assert ") on ucupdates-r2.contoso.test\n" in out
    (refusal,) = [line for line in out.splitlines() if line.startswith(f"  {outside} log not")]
    assert "HTTP 401 Unauthorized" in refusal
    assert "the phone has no credentials to sign in with" in refusal


@pytest.mark.parametrize(
    ("check_url", "log_url"),
    [
        (
            "https://ucupdates-r2.contoso.test:4443/RequestHandler/ucdevice.upx",
            "https://ucupdates-r2.contoso.test:4443/RequestHandler/ucdevicelog.upx",
        ),
        (
            "https://webext.contoso.test/RequestHandlerExt/ucdevice.upx",
            "https://webext.contoso.test/RequestHandlerExt/ucdevicelog.upx",
        ),
    ],
)
def test_the_log_goes_beside_the_update_check_of_the_same_site(
    check_url: str, log_url: str
) -> None:
    url = log_upload_url(check_url, "0004F2000001_20260101000000.clg", "00-04-F2-00-00-01")
    assert url == (
        f"{log_url}?type=CELog&file=0004F2000001_20260101000000.clg&mac=00-04-F2-00-00-01"
    )
