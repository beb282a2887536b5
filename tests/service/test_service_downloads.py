"""Image downloads: resume with Range and If-Range, stale ETags, conditional requests, odd
Range headers, 404s, and what checks serve: each pool's own rules, at its own URLs."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
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

from lab.models import phone_model
from lab.net.config import LabConfig
from lab.net.firewall import FirewallPolicy
from lab.net.pki import LabPKI, verify_vendor_signature
from lab.service import ServicePool, file_store_path
from lab.service.audit import AuditRecord
from lab.service.files import Precondition, evaluate_preconditions, parse_range
from lab.service.problems import Problem
from lab.service.updates import REFRESH_INTERVAL
from lab.store.cab import build_cab
from lab.store.decision import Action
from lab.store.importer import import_cab, read_cab_file
from lab.store.store import Selection, Store

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
    # A phone may resume on another server of its pool than the one it started with.
    tags = set()
    for fe in phones.pool.config.pool("pool01").front_ends:
        conn = await phones.inside(fe.name)
        head = await conn.request("HEAD", URL)
        assert head.status == 200
        tags.add(head.header("etag"))
    assert len(tags) == 1


async def test_every_answer_names_the_front_end_that_gave_it(phones: Phones) -> None:
    # Every front end of every pool (se01's store holds the same versions).
    for server in (fe.name for fe in phones.pool.config.front_ends):
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


@pytest.fixture
def state(service_state: Path, tmp_path: Path) -> Path:
    """A copy of the service's state directory that this test changes."""
    copy = tmp_path / "state"
    shutil.copytree(service_state, copy, symlinks=True)
    return copy


async def test_a_store_change_is_served_at_the_next_check_without_a_restart(
    service_config: LabConfig,
    state: Path,
    pki: LabPKI,
    firewall: FirewallPolicy,
    client_context: ssl.SSLContext,
) -> None:
    records: list[AuditRecord] = []
    async with ServicePool(
        service_config, state, firewall=firewall, pki=pki, on_request=records.append
    ) as pool:
        phones = Phones(pool, client_context)
        try:
            conn = await phones.inside()
            before = await conn.request("POST", CHECK, body=check_body(version=APPROVED))
            assert b'downloads="0"' in before.body
            # An administrator approves the pending version meanwhile, and announces it
            # (as the CLI's store commands do through the admin API).
            with Store.open(state) as store:
                store.change(Action.APPROVE, Selection(all_=True))
            generation = pool.refresh_store()
            assert generation == 2
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
    assert [r.served_from for r in records] == ["", "approved", ""]
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


async def test_an_unannounced_store_change_is_taken_once_the_snapshot_is_old(
    service_config: LabConfig,
    state: Path,
    pki: LabPKI,
    firewall: FirewallPolicy,
    client_context: ssl.SSLContext,
) -> None:
    """A writer that does not announce its change (another tool on the store) is seen
    beside the request path: the first check after REFRESH_INTERVAL wakes the watcher and
    is answered from the snapshot in hand; the watcher takes the change before the next."""
    now = [1000.0]
    async with ServicePool(
        service_config, state, firewall=firewall, pki=pki, clock=lambda: now[0]
    ) as pool:
        phones = Phones(pool, client_context)
        try:
            conn = await phones.inside()
            body = check_body(version=APPROVED)
            assert b'downloads="0"' in (await conn.request("POST", CHECK, body=body)).body
            with Store.open(state) as store:
                store.change(Action.APPROVE, Selection(all_=True))
            # Younger than the interval: the snapshot in hand is used and nobody asks.
            now[0] += REFRESH_INTERVAL / 2
            assert b'downloads="0"' in (await conn.request("POST", CHECK, body=body)).body
            assert pool.snapshots is not None
            assert pool.snapshots.generation == 1
            # Older: this check is still answered at once, and wakes the watcher.
            now[0] += REFRESH_INTERVAL
            assert b'downloads="0"' in (await conn.request("POST", CHECK, body=body)).body
            after = await conn.request("POST", CHECK, body=body)
            assert f'version="{PENDING}"'.encode() in after.body
            assert pool.snapshots.generation == 2
        finally:
            await phones.close()


def downloads(body: bytes) -> list[ET.Element]:
    root = ET.fromstring(body)  # noqa: S314 - our own service's answer in a test
    assert root.get("downloads") == str(len(root.findall("Download")))
    return root.findall("Download")


async def test_each_pool_answers_from_its_own_rules_and_names_itself_in_its_urls(
    service_config: LabConfig,
    state: Path,
    pki: LabPKI,
    firewall: FirewallPolicy,
    client_context: ssl.SSLContext,
) -> None:
    """A cab imported into pool01 only (as `lab update import --pool pool01` does) is
    offered by pool01's front ends and not by se01, whose rules are its own."""
    version = "4.0.7577.4500"
    cab = state.parent / "UCUpdates.cab"
    cab.write_bytes(build_cab([(phone_model("CX3000"), version)], pki.vendor, 4096))
    contents = read_cab_file(
        cab, lambda vendor: pki.vendor(vendor).certificate_pem(), verify_vendor_signature
    )
    result = import_cab(state, contents, ["pool01.contoso.test"])
    assert result.pools == ("pool01.contoso.test",)
    [update] = contents.updates
    files = [str(file.path) for file in update.files]  # the catalog, then the image
    with Store.open(state) as store:
        approved = store.change(
            Action.APPROVE, Selection(pool="pool01.contoso.test", model="CX3000")
        )
        assert [c.rule.identity.split("/")[0] for c in approved] == [
            "service:WebServer:pool01.contoso.test"
        ]
        assert store.rules(pool="se01.contoso.test", model="CX3000") == []
    cx3000 = check_body(model="CX3000", version="4.0.7577.4000")

    async with ServicePool(service_config, state, firewall=firewall, pki=pki) as pool:
        port = pool.https_port
        phones = Phones(pool, client_context)
        try:
            for server in ("fe01", "fe02"):
                conn = await phones.inside(server)
                offered = downloads((await conn.request("POST", CHECK, body=cx3000)).body)
                assert [d.get("version") for d in offered] == [version, version]
                # Named by the pool, not by the front end that answered.
                assert [d.findtext("BaseURL") for d in offered] == [
                    f"https://pool01.contoso.test:{port}/DeviceUpdateFiles_Int/{path}"
                    for path in files
                ]
                assert [d.findtext("ExternalBaseURL") for d in offered] == [
                    f"https://webext.contoso.test:{port}/DeviceUpdateFiles_Ext/{path}"
                    for path in files
                ]
                for download, path in zip(offered, files, strict=True):
                    served = await conn.request("GET", f"/DeviceUpdateFiles_Int/{path}")
                    assert served.status == 200
                    sha256 = hashlib.sha256(served.body).hexdigest()
                    assert sha256 == download.get("sha256")

            se01 = await phones.inside("se01")
            nothing = await se01.request("POST", CHECK, body=cx3000)
            assert nothing.status == 200
            assert downloads(nothing.body) == []
            assert nothing.header("x-ms-server-fqdn") == "se01.contoso.test"
            for path in files:  # nor are its files in se01's store
                assert (await se01.request("GET", f"/DeviceUpdateFiles_Int/{path}")).status == 404

            # What se01 has (CX600, imported into every pool) it names by its own FQDN; no
            # edge publishes se01, so its answer has no external URL.
            own = downloads((await se01.request("POST", CHECK, body=check_body())).body)
            assert [d.get("version") for d in own] == [APPROVED, APPROVED]
            assert [d.findtext("BaseURL") for d in own] == [
                f"https://se01.contoso.test:{port}/DeviceUpdateFiles_Int/{image.relative}"
                for image in APPROVED_IMAGES
            ]
            assert [d.find("ExternalBaseURL") for d in own] == [None, None]
        finally:
            await phones.close()


# -- conditional requests (RFC 9110 section 13) -------------------------------------------

CAT = APPROVED_IMAGES[0]
CAT_URL = f"/DeviceUpdateFiles_Int/{CAT.relative}"
OTHER_ETAG = '"0123456789abcdef0123456789abcdef"'
LONG_AGO = "Sun, 01 Jan 2006 00:00:00 GMT"


def file_date(pool: ServicePool, relative: str = CAT.relative) -> str:
    """The Last-Modified fe01 must send for a file of its pool's store."""
    path = file_store_path(pool.state_dir, pool.server("fe01").front_end.pool) / relative
    return formatdate(int(path.stat().st_mtime), usegmt=True)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_conditional_requests_answer_304_and_412_in_the_rfcs_order(
    phones: Phones, method: str
) -> None:
    conn = await phones.inside()
    first = await conn.request("HEAD", CAT_URL)
    etag, date = first.header("etag"), file_date(phones.pool)
    assert etag is not None
    assert first.header("last-modified") == date
    cases: list[tuple[dict[str, str], int]] = [
        ({"If-None-Match": etag}, 304),
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": f"{OTHER_ETAG}, W/{etag}"}, 304),  # weak comparison
        ({"If-None-Match": OTHER_ETAG}, 200),
        ({"If-Modified-Since": date}, 304),
        ({"If-Modified-Since": LONG_AGO}, 200),
        ({"If-None-Match": OTHER_ETAG, "If-Modified-Since": date}, 200),  # ETag decides
        ({"If-Match": OTHER_ETAG}, 412),
        ({"If-Match": f"W/{etag}"}, 412),  # strong comparison
        ({"If-Match": f"{OTHER_ETAG}, {etag}"}, 200),
        ({"If-Match": "*"}, 200),
        ({"If-Unmodified-Since": LONG_AGO}, 412),
        ({"If-Unmodified-Since": date}, 200),
        ({"If-Match": etag, "If-Unmodified-Since": LONG_AGO}, 200),  # ETag decides
        ({"If-Match": etag, "If-None-Match": etag}, 304),
        ({"If-Match": OTHER_ETAG, "If-None-Match": etag}, 412),  # If-Match first
        ({"If-Modified-Since": "Mon, 01 Jan 999999999999999999999999999 00:00:00 GMT"}, 200),
        ({"If-Unmodified-Since": "not a date"}, 200),
    ]
    for headers, status in cases:
        answer = await conn.request(method, CAT_URL, headers)
        assert answer.status == status, headers
        assert answer.header("etag") == etag, headers
        assert answer.header("last-modified") == date, headers
        assert answer.header("x-ms-server-fqdn") == "fe01.contoso.test", headers
        if status == 304:
            assert answer.header("content-length") is None
        if status == 412:
            assert (answer.header("x-ms-diagnostics") or "").startswith("41201;"), headers
        if status == 200 and method == "GET":
            assert answer.body == CAT.data, headers
    # The connection is still in step: every answer was framed as it said.
    assert (await conn.request("GET", CAT_URL)).body == CAT.data


async def test_range_positions_take_ascii_digits_only_and_any_length(phones: Phones) -> None:
    conn = await phones.inside()
    size = len(CAT.data)
    huge = "9" * 5000
    cases: list[tuple[str, int, bytes]] = [
        ("bytes=\u00b2-", 200, CAT.data),  # a superscript two is no digit here
        ("bytes=\u0661-\u0662", 200, CAT.data),  # nor are Arabic-Indic digits
        ("bytes=-", 200, CAT.data),
        (f"bytes={huge}-", 416, b""),
        (f"bytes=0-{huge}", 206, CAT.data),
        (f"bytes=-{huge}", 206, CAT.data),
        (f"bytes={'0' * 5000}5-9", 206, CAT.data[5:10]),
        ("BYTES=1-2", 206, CAT.data[1:3]),
        ("byte\u017f=1-2", 200, CAT.data),  # no Unicode case folding either
    ]
    for header, status, body in cases:
        answer = await conn.request("GET", CAT_URL, {"Range": header})
        assert answer.status == status, header[:20]
        assert answer.header("last-modified") == file_date(phones.pool)
        if status == 416:
            assert answer.header("content-range") == f"bytes */{size}"
            assert answer.header("etag") is not None
        else:
            assert answer.body == body, header[:20]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=\u00b2-", None),
        ("bytes=1\u00b2-", None),
        ("bytes=" + "9" * 5000 + "-", "416"),
        ("bytes=0-" + "9" * 5000, (0, 100)),
        ("bytes=-" + "9" * 5000, (0, 100)),
        ("bytes=" + "0" * 5000 + "7-8", (7, 9)),
        ("bytes=" + "9" * 5000 + "-1", None),  # last before first
        ("bytes=-", None),
        (" bytes = 3-4 ", (3, 5)),
        ("bytes=3 -4", None),
    ],
)
def test_ranges_of_any_length_parse_without_failing(
    header: str, expected: tuple[int, int] | str | None
) -> None:
    if expected == "416":
        with pytest.raises(Problem) as caught:
            parse_range(header, 100)
        assert caught.value.diagnostic.status == 416
    else:
        assert parse_range(header, 100) == expected


MODIFIED = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
SAME = "Sun, 22 Nov 2026 10:00:00 GMT"
EARLIER = "Sun, 22 Nov 2026 09:59:59 GMT"


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        ("GET", {}, Precondition.PROCEED),
        ("GET", {"If-None-Match": '"a"'}, Precondition.NOT_MODIFIED),
        ("HEAD", {"If-None-Match": 'W/"a"'}, Precondition.NOT_MODIFIED),
        ("POST", {"If-None-Match": '"a"'}, Precondition.FAILED),
        ("POST", {"If-Modified-Since": SAME}, Precondition.PROCEED),  # GET and HEAD only
        ("GET", {"If-Modified-Since": SAME}, Precondition.NOT_MODIFIED),
        ("GET", {"If-Modified-Since": EARLIER}, Precondition.PROCEED),
        ("GET", {"If-Unmodified-Since": EARLIER}, Precondition.FAILED),
        ("GET", {"If-Unmodified-Since": SAME}, Precondition.PROCEED),
        ("GET", {"If-Match": '"b"', "If-Unmodified-Since": SAME}, Precondition.FAILED),
        ("GET", {"If-Match": "garbage"}, Precondition.FAILED),
        ("GET", {"If-Match": '"*"'}, Precondition.FAILED),  # a quoted star is an ETag
        ("GET", {"If-None-Match": "*", "If-Match": "*"}, Precondition.NOT_MODIFIED),
    ],
)
def test_preconditions_are_evaluated_in_the_rfcs_order(
    method: str, headers: dict[str, str], expected: Precondition
) -> None:
    request = make_mocked_request(method, "/DeviceUpdateFiles_Int/x", headers=headers)
    assert evaluate_preconditions(request, '"a"', MODIFIED) is expected
