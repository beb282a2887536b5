"""Hostile HTTP against a front end's downloads, device log uploads and audit log, over real
TLS to a real `lab up`.

Each attack is made with a real client (curl, or aiohttp for a flood of uploads) from an
inside address to fe01's internal site, and each limit is also shown not to hurt a normal
phone: a plain download and a resumed one, an ordinary check whose audit line reads back
whole, an ordinary log that is stored. The lab gets its image the way an administrator
gives it one (`lab cab build`, `lab update import`, against its state directory).
Nothing waits on time: every request's answer comes after its audit line is written
(refusals and checks are reported before they are answered), and curl returns when the
answer is complete.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from conftest import INSIDE_PHONE
from labprocess import LabProcess

from lab.service.audit import read_audit

FRONT_END = "fe01"
HOST = "fe01.contoso.test"
POOL = "pool01.contoso.test"  # fe01's pool, whose file store it serves
VERSION = "4.0.7577.4372"
IMAGE = f"/DeviceUpdateFiles_Int/UCPhone/Polycom/CX600/A/ENU/{VERSION}/CPE/CPE.nbt"
IMAGE_SIZE = 64 * 1024
CHECK = "/RequestHandler/ucdevice.upx"
LOG = "/RequestHandler/ucdevicelog.upx"
LOG_TOTAL = 64 * 1024  # 16 blocks of device logs per front end
FIELD_MAX = 1024  # [limits] audit_field_max, as the default config has it
OTHER_ETAG = '"0123456789abcdef0123456789abcdef"'
LONG_AGO = "Sun, 01 Jan 2006 00:00:00 GMT"
# What no audit line may hold before its end: raw line breaks, NULs, other controls.
RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")
HEADER = b"time,server,client_address,"

CHECK_BODY = """<DeviceUpdateRequest>
  <DeviceType>UCPhone</DeviceType><Vendor>Polycom</Vendor><Model>{model}</Model>
  <Revision>A</Revision><Locale>ENU</Locale>
  <MacAddress>{mac}</MacAddress><SerialNumber>CX6A000001</SerialNumber>
  <Modules>{modules}</Modules>{user}
</DeviceUpdateRequest>"""
PHONE_MODULES = '<Module name="CPE.nbt" version="4.0.7577.4366"/>'


def check_body(
    *,
    model: str = "CX600",
    mac: str = "00-04-F2-00-00-01",
    modules: str = PHONE_MODULES,
    user: str = "",
) -> bytes:
    """A DeviceUpdateRequest; ``model`` and ``user`` go in as XML text, as given."""
    user_xml = f"<LastSignedInUser>{user}</LastSignedInUser>" if user else ""
    return CHECK_BODY.format(model=model, mac=mac, modules=modules, user=user_xml).encode()


@dataclass
class Answer:
    """One HTTP answer as curl saw it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Inside:
    """An inside phone's view of fe01's internal site: its address, CA and curl."""

    lab: LabProcess
    ca: str
    address: str
    port: int
    directory: Path

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"

    def curl(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        """One request with curl from the inside phone's address; the path goes as given."""
        out = self.directory / "curl.body"
        out.unlink(missing_ok=True)
        command = [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--cacert",
            self.ca,
            "--resolve",
            f"{HOST}:{self.port}:{self.address}",
            "--interface",
            INSIDE_PHONE,
            "--dump-header",
            "-",
            "--output",
            # curl writes a HEAD answer's headers as its output: no body can come.
            os.devnull if method == "HEAD" else str(out),
        ]
        if method == "HEAD":
            command.append("--head")
        elif method != "GET":
            command += ["--request", method]
        for name, value in (headers or {}).items():
            command += ["--header", f"{name}: {value}"]
        if body is not None:
            command += ["--data-binary", "@-", "--header", "Expect:"]
        result = subprocess.run(
            [*command, self.url(path)],
            input=body,
            capture_output=True,
            timeout=20,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        # The last block of headers is the answer's (a 100 Continue may come before it).
        block = result.stdout.decode("latin-1").strip().split("\r\n\r\n")[-1]
        status_line, *lines = block.split("\r\n")
        found = {}
        for line in lines:
            name, _, value = line.partition(":")
            found[name.strip().lower()] = value.strip()
        content = out.read_bytes() if out.exists() else b""
        return Answer(int(status_line.split()[1]), found, content)


@pytest.fixture(scope="module")
def http_lab(lab_factory: Callable[..., LabProcess]) -> LabProcess:
    """A lab that keeps little of device logs per front end, with one image imported."""
    running = lab_factory({"limits": {"device_logs_per_front_end": LOG_TOTAL}})
    cab = running.state.parent / "UCUpdates.cab"
    built = running.lab(
        "cab", "build", "--model", "CX600", "--version", VERSION,
        "--image-size", str(IMAGE_SIZE), "--output", str(cab),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    imported = running.lab("update", "import", "--all-pools", str(cab))
    assert imported.returncode == 0, imported.stderr
    return running


@pytest.fixture(scope="module")
def inside(http_lab: LabProcess, tmp_path_factory: pytest.TempPathFactory) -> Inside:
    address, port = http_lab.endpoint(FRONT_END, "internal")
    lease = json.loads((http_lab.state / "lease.json").read_text())
    return Inside(http_lab, lease["ca_cert"], address, port, tmp_path_factory.mktemp("curl"))


def image_file(lab: LabProcess) -> Path:
    return lab.state / "pools" / POOL / "DeviceUpdateFiles" / IMAGE.split("/", 2)[2]


def audit_bytes(lab: LabProcess) -> bytes:
    """Every audit file of the front end, concatenated in name (day) order."""
    folder = lab.state / "servers" / FRONT_END / "AuditLogs"
    return b"".join(path.read_bytes() for path in sorted(folder.glob("*.log")))


def new_audit_lines(lab: LabProcess, before: bytes) -> list[bytes]:
    """The audit lines written since ``before`` was read (the same day's file grows)."""
    after = audit_bytes(lab)
    assert after.startswith(before)
    lines = after[len(before) :].splitlines(keepends=True)
    return [line for line in lines if not line.startswith(HEADER)]  # a new file's header


def no_tracebacks(lab: LabProcess) -> None:
    log = lab.stderr_path.read_text()
    assert "Traceback" not in log, log[-2000:]


# -- Range: ASCII digits, any length; never a 500 ------------------------------------------


def test_odd_range_headers_get_200_or_416_never_a_500(inside: Inside) -> None:
    image = image_file(inside.lab).read_bytes()
    huge = "9" * 5000
    cases = [
        ("bytes=\u00b2-", 200),
        ("bytes=0-\u00b2", 200),
        (f"bytes={huge}-", 416),
        (f"bytes=-{huge}", 206),
        (f"bytes=0-{huge}", 206),
    ]
    for header, status in cases:
        answer = inside.curl(IMAGE, headers={"Range": header})
        assert answer.status == status, header[:20]
        if status == 416:
            assert answer.header("content-range") == f"bytes */{IMAGE_SIZE}"
        else:
            assert answer.body == image, header[:20]
    no_tracebacks(inside.lab)

    # A phone resuming a cut download still gets the rest, and only the rest.
    etag = inside.curl(IMAGE, method="HEAD").header("etag")
    assert etag is not None
    rest = inside.curl(IMAGE, headers={"Range": "bytes=1000-", "If-Range": etag})
    assert rest.status == 206
    assert rest.body == image[1000:]


# -- conditional requests ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_conditional_requests_get_304_and_412(inside: Inside, method: str) -> None:
    plain = inside.curl(IMAGE, method=method)
    etag, date = plain.header("etag"), plain.header("last-modified")
    assert plain.status == 200
    assert etag is not None
    assert date is not None
    cases = [
        ({"If-None-Match": etag}, 304),
        ({"If-None-Match": "*"}, 304),
        ({"If-Modified-Since": date}, 304),
        ({"If-Match": OTHER_ETAG}, 412),
        ({"If-Unmodified-Since": LONG_AGO}, 412),
        # Conditions that hold: the whole image, as for a phone that asks plainly.
        ({"If-None-Match": OTHER_ETAG}, 200),
        ({"If-Modified-Since": LONG_AGO}, 200),
        ({"If-Match": etag}, 200),
        ({"If-Unmodified-Since": date}, 200),
    ]
    image = image_file(inside.lab).read_bytes()
    for headers, status in cases:
        answer = inside.curl(IMAGE, method=method, headers=headers)
        assert answer.status == status, headers
        assert answer.header("etag") == etag, headers
        assert answer.header("last-modified") == date, headers
        if status == 304:
            assert answer.body == b""
        if status == 200 and method == "GET":
            assert answer.body == image
    no_tracebacks(inside.lab)


# -- the audit log: one request, one line, each field capped -------------------------------


def test_cr_lf_and_nul_in_a_url_write_one_audit_line_each(inside: Inside) -> None:
    paths = [
        "/DeviceUpdateFiles_Int/UCPhone%0D%0A2026-01-01T00:00:00.000Z,fe01,forged",
        "/DeviceUpdateFiles_Int/UCPhone%00hidden",
        "/RequestHandler/ucdevice.upx%0Aforged",
        "/DeviceUpdateFiles_Int/UCPhone%E2%80%A8separator",
    ]
    for path in paths:
        before = audit_bytes(inside.lab)
        answer = inside.curl(path)
        assert answer.status in (400, 404)
        [line] = new_audit_lines(inside.lab, before)
        assert RAW_CONTROL.search(line[:-1]) is None, line
        assert "\u2028" not in line.decode()


def test_line_breaks_in_check_fields_write_one_audit_line_per_check(inside: Inside) -> None:
    forged = "CX600&#13;&#10;2026-01-01T00:00:00.000Z,fe01,127.10.0.1,internal,/forged,200"
    # XML 1.0 carries CR and LF (as text or references) but no NUL: these are what can come.
    body = check_body(model=forged, user="alice@contoso.test\nforged,line&#13;")
    before = audit_bytes(inside.lab)
    for _ in range(2):  # the second is the audit log's remembered line: escaped as well
        answer = inside.curl(CHECK, method="POST", body=body)
        assert answer.status < 500
    lines = new_audit_lines(inside.lab, before)
    assert len(lines) == 2
    for line in lines:
        assert RAW_CONTROL.search(line[:-1]) is None, line
        assert b"CX600%0D%0A2026-01-01T00:00:00.000Z" in line
    # A normal phone's check after them is audited whole and reads back as it was.
    before = audit_bytes(inside.lab)
    assert inside.curl(CHECK, method="POST", body=check_body()).status == 200
    [line] = new_audit_lines(inside.lab, before)
    folder = inside.lab.state / "servers" / FRONT_END / "AuditLogs"
    [*_, row] = read_audit(sorted(folder.glob("*.log"))[-1])
    assert (row["model"], row["mac"], row["status"]) == ("CX600", "00-04-F2-00-00-01", "200")
    assert row["installed_modules"] == "CPE.nbt:4.0.7577.4366"


def test_a_huge_installed_modules_list_writes_a_capped_audit_line(inside: Inside) -> None:
    modules = "".join(
        f'<Module name="M{i}.bin" version="1.0.0.{i}"/>' for i in range(1400)
    )  # about 20,000 characters of installed modules in the audit's own form
    body = check_body(modules=PHONE_MODULES + modules)
    assert len(body) < 64 * 1024  # within what a check may send
    before = audit_bytes(inside.lab)
    assert inside.curl(CHECK, method="POST", body=body).status == 200
    [line] = new_audit_lines(inside.lab, before)
    # Each of the 19 columns may write FIELD_MAX characters at most; this line has one
    # long field, the rest are a normal check's.
    assert len(line) < FIELD_MAX + 512
    assert b"CPE.nbt:4.0.7577.4366 M0.bin:1.0.0.0" in line
    assert re.search(rb"\.\.\.\[\+\d+\]", line)


# -- device logs: a total per front end --------------------------------------------------


async def test_uploads_with_new_macs_stay_within_the_front_ends_total(inside: Inside) -> None:
    context = ssl.create_default_context(cafile=inside.ca)
    connector = aiohttp.TCPConnector(ssl=context, local_addr=(INSIDE_PHONE, 0), limit=8)
    log = b"x" * 10_000
    base = f"https://{inside.address}:{inside.port}{LOG}?type=CELog&file=boot.clg"

    async def upload(session: aiohttp.ClientSession, number: int) -> int:
        mac = f"02-00-00-00-{number // 256:02X}-{number % 256:02X}"
        async with session.post(f"{base}&mac={mac}", data=log, server_hostname=HOST) as answer:
            await answer.read()
            return answer.status

    async with aiohttp.ClientSession(connector=connector) as session:
        statuses = await asyncio.gather(*(upload(session, n) for n in range(200)))
        assert statuses == [200] * 200
        # A normal phone's log after the flood is stored like any other.
        async with session.post(
            f"{base.replace('boot.clg', 'phone.clg')}&mac=00-04-F2-00-00-01",
            data=b"a phone's own log\n",
            server_hostname=HOST,
        ) as answer:
            assert answer.status == 200, await answer.text()
    root = inside.lab.state / "servers" / FRONT_END / "DeviceLogs"
    stored = [path for path in root.glob("*/*") if path.is_file()]
    assert sum(path.stat().st_size for path in stored) <= LOG_TOTAL
    assert len(list(root.iterdir())) <= LOG_TOTAL // 4096  # folders of evicted MACs go too
    [phone] = (root / "00-04-F2-00-00-01").iterdir()
    assert phone.read_bytes() == b"a phone's own log\n"
    no_tracebacks(inside.lab)
