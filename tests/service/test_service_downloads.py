"""Image downloads: resume with Range and If-Range, stale ETags, 404s, and what checks serve."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import xml.etree.ElementTree as ET
from pathlib import Path

from service_helpers import (
    APPROVED,
    APPROVED_IMAGES,
    INSIDE_PHONE,
    PENDING,
    PENDING_IMAGES,
    TEST_DEVICE_SERIAL,
    Phones,
    check_body,
)

from lab.audit import AuditRecord
from lab.config import LabConfig
from lab.decision import Action
from lab.firewall import FirewallPolicy
from lab.pki import LabPKI
from lab.service import ServicePool
from lab.store import Selection, Store

NBT = APPROVED_IMAGES[1]
URL = f"/DeviceUpdateFiles_Int/{NBT.relative}"
CHECK = "/RequestHandler/ucdevice.upx"


async def test_a_download_cut_at_half_resumes_to_the_same_sha256(phones: Phones) -> None:
    half = len(NBT.data) // 2
    cut = await phones.inside()
    await cut.send("GET", URL)
    head = await cut.read_head()
    assert head.status == 200
    etag = head.header("etag")
    assert etag is not None
    assert etag.startswith('"')
    assert int(head.header("content-length") or 0) == len(NBT.data)
    first = await cut.reader.readexactly(half)
    await cut.close()

    resumed = await phones.inside()
    rest = await resumed.request("GET", URL, {"Range": f"bytes={half}-", "If-Range": etag})
    assert rest.status == 206
    assert rest.header("content-range") == f"bytes {half}-{len(NBT.data) - 1}/{len(NBT.data)}"
    assert rest.header("etag") == etag
    assert hashlib.sha256(first + rest.body).hexdigest() == NBT.sha256


async def test_a_stale_etag_gets_the_whole_file_never_a_mix(phones: Phones) -> None:
    conn = await phones.inside()
    stale = await conn.request(
        "GET", URL, {"Range": "bytes=1000-", "If-Range": '"0123456789abcdef0123456789abcdef"'}
    )
    assert stale.status == 200
    assert stale.header("content-range") is None
    assert stale.body == NBT.data
    weak = await conn.request("GET", URL, {"Range": "bytes=1000-", "If-Range": "W/" + '"x"'})
    assert weak.status == 200
    assert weak.body == NBT.data


async def test_the_etag_is_the_same_on_every_front_end(phones: Phones) -> None:
    # A phone may resume on another server than the one it started with.
    tags = set()
    for server in ("fe01", "fe02"):
        conn = await phones.inside(server)
        head = await conn.request("HEAD", URL)
        assert head.status == 200
        tags.add(head.header("etag"))
    assert len(tags) == 1


async def test_every_answer_names_the_front_end_that_gave_it(phones: Phones) -> None:
    for server in ("fe01", "fe02"):
        fqdn = phones.pool.server(server).front_end.fqdn
        conn = await phones.inside(server)
        answers = [
            await conn.request("POST", CHECK, {"Content-Type": "text/xml"}, check_body()),
            await conn.request("GET", URL),
            await conn.request("HEAD", URL),
            await conn.request("GET", "/DeviceUpdateFiles_Int/no/such/file"),
            await conn.request("GET", CHECK),
        ]
        assert [a.status for a in answers] == [200, 200, 200, 404, 405]
        assert {a.header("x-ms-server-fqdn") for a in answers} == {fqdn}


async def test_range_forms_and_unsatisfiable_ranges(phones: Phones) -> None:
    conn = await phones.inside()
    size = len(NBT.data)
    tail = await conn.request("GET", URL, {"Range": "bytes=-10"})
    assert tail.status == 206
    assert tail.body == NBT.data[-10:]
    middle = await conn.request("GET", URL, {"Range": "bytes=10-19"})
    assert middle.body == NBT.data[10:20]
    beyond = await conn.request("GET", URL, {"Range": f"bytes={size}-"})
    assert beyond.status == 416
    assert beyond.header("content-range") == f"bytes */{size}"
    assert (beyond.header("x-ms-diagnostics") or "").startswith("41601;")
    several = await conn.request("GET", URL, {"Range": "bytes=0-1,5-6"})
    assert several.status == 200
    assert len(several.body) == size


async def test_a_file_this_server_does_not_have_is_404(phones: Phones) -> None:
    conn = await phones.inside()
    missing = await conn.request(
        "GET", "/DeviceUpdateFiles_Int/UCPhone/Polycom/CX600/A/ENU/9.9.9.9/CPE/CPE.nbt"
    )
    assert missing.status == 404
    assert missing.header("content-type") == "text/plain; charset=utf-8"
    assert (missing.header("x-ms-diagnostics") or "").startswith('40401;reason="')
    assert missing.body.startswith(b"this server has no file")


async def test_checks_serve_what_the_store_decides(phones: Phones) -> None:
    conn = await phones.inside()
    current = await conn.request("POST", CHECK, body=check_body(version=APPROVED))
    assert current.status == 200
    assert b'downloads="0"' in current.body

    older = await conn.request("POST", CHECK, body=check_body(version="4.0.7577.4000"))
    assert b'downloads="2"' in older.body

    tester = await conn.request(
        "POST", CHECK, body=check_body(version=APPROVED, serial=TEST_DEVICE_SERIAL)
    )
    root = ET.fromstring(tester.body)  # noqa: S314 - our own service's answer in a test
    assert root.get("downloads") == "2"
    versions = {d.get("version") for d in root.iter("Download")}
    assert versions == {PENDING}
    hashes = [d.get("sha256") for d in root.iter("Download")]
    assert hashes == [image.sha256 for image in PENDING_IMAGES]

    no_rule = await conn.request("POST", CHECK, body=check_body(model="CX500"))
    assert no_rule.status == 200
    assert b'downloads="0"' in no_rule.body


async def test_a_store_change_is_served_at_the_next_check_without_a_restart(
    service_config: LabConfig,
    service_state: Path,
    pki: LabPKI,
    firewall: FirewallPolicy,
    client_context: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    shutil.copytree(service_state, state, symlinks=True)
    records: list[AuditRecord] = []
    async with ServicePool(
        service_config, state, firewall=firewall, pki=pki, on_request=records.append
    ) as pool:
        phones = Phones(pool, client_context)
        try:
            conn = await phones.inside()
            before = await conn.request("POST", CHECK, body=check_body(version=APPROVED))
            assert b'downloads="0"' in before.body
            # Another process (the CLI) approves the pending version meanwhile.
            with Store.open(state) as store:
                store.change(Action.APPROVE, Selection(all_=True))
            after = await conn.request("POST", CHECK, body=check_body(version=APPROVED))
            assert f'version="{PENDING}"'.encode() in after.body
            missing = await conn.request("GET", "/DeviceUpdateFiles_Int/UCPhone/nothing")
            assert missing.status == 404
        finally:
            await phones.close()

    # Every request reached the audit seam with what the audit log needs.
    assert [(r.path, r.status) for r in records] == [
        (CHECK, 200),
        (CHECK, 200),
        ("/DeviceUpdateFiles_Int/UCPhone/nothing", 404),
    ]
    served = records[1]
    assert served.server == "fe01"
    assert served.site == "internal"
    assert served.client_address == INSIDE_PHONE
    assert (served.mac, served.serial, served.model) == ("00-04-F2-00-00-01", "CX6A000001", "CX600")
    assert served.installed_modules == f"CPE.nbt:{APPROVED}"
    assert served.decision == PENDING
    assert served.modules_returned == "CPE.cat CPE.nbt"
    assert PENDING in served.reason
    assert records[0].decision == "none"
    assert "this server has no file" in records[2].reason
