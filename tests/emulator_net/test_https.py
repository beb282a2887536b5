"""The phone's HTTPS client against a real aiohttp TLS server with the lab PKI on loopback.

The server binds fe01's inside address and presents fe01's certificate (or one of the
PKI's faulty variants); it records every request, so "refused before any request" is
checked on the server's side, not taken on the client's word.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from net_helpers import FE01, FE02, INSIDE_PHONE, UCUPDATES, WebServer

from emulator.clock import Clock, LoopClock
from emulator.errors import (
    CertificateError,
    ConnectError,
    DownloadInterruptedError,
    MalformedAnswerError,
    ResolutionError,
    ServiceStatusError,
)
from emulator.net import DNSResolver, HTTPSClient, PhoneHTTPSClient
from lab.net.config import default_config
from lab.net.dns import DNSServer
from lab.net.firewall import FirewallPolicy
from lab.net.pki import FaultKind, LabPKI

CHECK_PATH = "/RequestHandler/ucdevice.upx"
LOG_PATH = "/RequestHandler/ucdevicelog.upx"
NO_UPDATE = b'<?xml version="1.0" encoding="utf-8"?><DeviceUpdateResponse downloads="0"/>'
IMAGE = random.Random(7).randbytes(300_000)
IMAGE_ETAG = '"' + hashlib.sha256(IMAGE).hexdigest()[:32] + '"'
YEAR = 365 * 86400.0


def image_answer(request: web.Request, data: bytes, etag: str) -> web.StreamResponse:
    """Range and If-Range (by exact ETag) as docs/wire-protocol.md says a front end does."""
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    wanted = request.headers.get("Range", "")
    if not wanted.startswith("bytes=") or request.headers.get("If-Range", etag) != etag:
        return web.Response(body=data, headers=headers)
    start = int(wanted.removeprefix("bytes=").rstrip("-"))
    if start >= len(data):
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
    return web.Response(status=206, body=data[start:], headers=headers)


def problem(status: int, code: int, reason: str, **headers: str) -> web.Response:
    """An error answer the way the service gives it: X-Ms-Diagnostics and a text body."""
    diagnostics = {"X-Ms-Diagnostics": f'{code};reason="{reason}"'}
    return web.Response(status=status, text=reason, headers={**diagnostics, **headers})


def service_app() -> web.Application:
    async def check(request: web.Request) -> web.Response:
        return web.Response(body=NO_UPDATE, content_type="text/xml")

    async def device_log(request: web.Request) -> web.Response:
        return web.Response(text="stored")

    async def image(request: web.Request) -> web.StreamResponse:
        return image_answer(request, IMAGE, IMAGE_ETAG)

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"ETag": IMAGE_ETAG})
        response.content_length = len(IMAGE)
        await response.prepare(request)
        await response.write(IMAGE[:100_000])
        await response.drain()
        assert request.transport is not None
        request.transport.abort()
        return response

    async def busy(request: web.Request) -> web.Response:
        return problem(503, 50301, "fe01 is in maintenance", **{"Retry-After": "120"})

    async def denied(request: web.Request) -> web.Response:
        return problem(403, 40301, "outside request with no signed-in user")

    async def missing(request: web.Request) -> web.Response:
        return problem(404, 40401, "this server has no file CPE.nbt")

    async def closing(request: web.Request) -> web.Response:
        response = web.Response(body=NO_UPDATE, content_type="text/xml")
        response.force_close()
        return response

    async def too_big(request: web.Request) -> web.Response:
        return web.Response(body=b"<DeviceUpdateResponse>" + b" " * 70_000, content_type="text/xml")

    app = web.Application()
    app.router.add_post(CHECK_PATH, check)
    app.router.add_post(LOG_PATH, device_log)
    app.router.add_get("/DeviceUpdateFiles_Int/CPE.nbt", image)
    app.router.add_get("/DeviceUpdateFiles_Int/missing.nbt", missing)
    app.router.add_get("/cut/CPE.nbt", cut)
    app.router.add_post("/busy", busy)
    app.router.add_post("/denied", denied)
    app.router.add_post("/big", too_big)
    app.router.add_post("/closing", closing)
    return app


@pytest.fixture
async def server(pki: LabPKI) -> AsyncIterator[WebServer]:
    async with WebServer(service_app(), FE01, pki.server("fe01").server_context()) as running:
        yield running


@pytest.fixture
async def dns() -> AsyncIterator[DNSServer]:
    config = default_config().with_ports(dns=0)
    async with DNSServer(config, FirewallPolicy(config.inside, config.outside)) as running:
        yield running


PhoneFactory = Callable[..., PhoneHTTPSClient]
"""Makes a phone's client: ``phone_clock=`` and ``connect_timeout=`` may be given."""


@pytest.fixture
async def phone(pki: LabPKI, clock: LoopClock, dns: DNSServer) -> AsyncIterator[PhoneFactory]:
    """Makes phone HTTPS clients (inside, trusting the lab CA, true time); closes them after."""
    made: list[PhoneHTTPSClient] = []

    def make(*, phone_clock: Clock = clock, connect_timeout: float = 10.0) -> PhoneHTTPSClient:
        client = PhoneHTTPSClient(
            source=INSIDE_PHONE,
            resolver=DNSResolver(dns.address, INSIDE_PHONE, timeout=1.0),
            ca_cert=pki.ca_cert,
            clock=phone_clock,
            connect_timeout=connect_timeout,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- success -------------------------------------------------------------------------------


async def test_check_reaches_the_address_given_with_the_name_for_tls_and_host(
    server: WebServer, phone: PhoneFactory
) -> None:
    client: HTTPSClient = phone()  # the real client is what a driver is handed
    answer = await client.post_xml(server.url(CHECK_PATH), b"<DeviceUpdateRequest/>", address=FE01)

    assert (answer.status, answer.body) == (200, NO_UPDATE)
    assert answer.content_type is not None
    assert answer.content_type.startswith("text/xml")
    [seen] = server.requests
    assert (seen.method, seen.path, seen.body) == ("POST", CHECK_PATH, b"<DeviceUpdateRequest/>")
    assert seen.host == f"{UCUPDATES}:{server.port}"
    assert seen.peer[0] == INSIDE_PHONE
    assert seen.headers["Content-Type"] == "text/xml; charset=utf-8"


async def test_connection_is_kept_alive_between_requests(
    server: WebServer, phone: PhoneFactory
) -> None:
    client = phone()
    for _ in range(3):
        await client.post_xml(server.url(CHECK_PATH), b"<x/>", address=FE01)

    assert client.connections_made == 1
    assert len({seen.peer for seen in server.requests}) == 1


async def test_the_kept_connection_is_named_by_host_and_port_while_it_is_open(
    server: WebServer, phone: PhoneFactory
) -> None:
    client = phone()
    port = server.port
    assert client.kept_address(UCUPDATES, port) is None
    await client.post_xml(server.url(CHECK_PATH), b"<x/>", address=FE01)

    assert client.kept_address(UCUPDATES, port) == FE01
    assert client.kept_address(UCUPDATES.upper(), port) == FE01
    assert client.kept_address("pool01.contoso.test", port) is None
    assert client.kept_address(UCUPDATES, port + 1) is None
    await client.drop_connections()
    assert client.kept_address(UCUPDATES, port) is None

    # By name, through the lab DNS (fe01 and fe02; only fe01 listens): where it went.
    await client.post_xml(server.url(CHECK_PATH), b"<x/>")
    assert client.kept_address(UCUPDATES, port) == FE01
    # A server that closes the connection after its answer leaves none kept.
    await client.post_xml(server.url("/closing"), b"<x/>")
    assert client.kept_address(UCUPDATES, port) is None


async def test_of_two_kept_connections_to_a_host_the_one_used_last_is_named(
    server: WebServer, phone: PhoneFactory, pki: LabPKI
) -> None:
    # fe02 on the same port: one host name and port, two servers (as DNS gives them).
    fe02 = WebServer(service_app(), FE02, pki.server("fe02").server_context(), port=server.port)
    async with fe02:
        client = phone()
        for address in (FE01, FE02, FE01, FE02):
            await client.post_xml(server.url(CHECK_PATH), b"<x/>", address=address)
            assert client.kept_address(UCUPDATES, server.port) == address
        assert client.connections_made == 2


async def test_a_kept_connection_the_server_closed_is_not_named(
    server: WebServer, phone: PhoneFactory, pki: LabPKI
) -> None:
    fe02 = WebServer(service_app(), FE02, pki.server("fe02").server_context(), port=server.port)
    async with fe02:
        client = phone()
        await client.post_xml(server.url(CHECK_PATH), b"<x/>", address=FE01)
        # fe02 answers, then closes the connection: the one to fe01, used before, is open.
        await client.post_xml(server.url("/closing"), b"<x/>", address=FE02)

        assert client.kept_address(UCUPDATES, server.port) == FE01
        assert client.connections_made == 2


async def test_name_resolved_through_the_lab_dns_from_the_phone_address(
    server: WebServer, phone: PhoneFactory, dns: DNSServer
) -> None:
    # The lab DNS gives fe01 and fe02; only fe01 listens, so a refused fe02 is skipped.
    answer = await phone().post_xml(server.url(CHECK_PATH), b"<x/>")

    assert answer.body == NO_UPDATE
    assert server.requests[0].peer[0] == INSIDE_PHONE
    assert [(q["client"], q["qname"]) for q in dns.query_log.recent()] == [
        (INSIDE_PHONE, UCUPDATES)
    ]


async def test_an_unknown_name_fails_with_the_dns_answer(
    server: WebServer, phone: PhoneFactory
) -> None:
    with pytest.raises(ResolutionError, match=r"nothere\.contoso\.test does not exist \(NXDOMAIN"):
        await phone().post_xml(server.url(CHECK_PATH, host="nothere.contoso.test"), b"<x/>")
    assert server.requests == []


async def test_log_upload(server: WebServer, phone: PhoneFactory) -> None:
    body = b"CELog device log\n" * 100
    answer = await phone().post_log(server.url(LOG_PATH + "?type=CELog"), body, address=FE01)

    assert (answer.status, answer.body) == (200, b"stored")
    [seen] = server.requests
    assert (seen.body, seen.headers["Content-Type"]) == (body, "application/octet-stream")


# -- the phone's certificate checks ----------------------------------------------------------

FAULTS: dict[FaultKind, str] = {
    "expired": r"certificate expired by the phone's clock \(20\d\d-",
    "not-yet-valid": r"certificate is not yet valid by the phone's clock \(20\d\d-",
    "untrusted-ca": r"issued by contoso Rogue CA, a CA the phone does not trust",
    "no-ucupdates-name": (
        r"name not on the certificate \(names: fe01\.contoso\.test, pool01\.contoso\.test, "
        r"webext\.contoso\.test\)"
    ),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_faulty_certificate_refused_before_any_request(
    fault: FaultKind, pki: LabPKI, phone: PhoneFactory
) -> None:
    async with WebServer(service_app(), FE01, pki.faulty(fault, "fe01").server_context()) as bad:
        with pytest.raises(CertificateError) as caught:
            await phone().post_xml(bad.url(CHECK_PATH), b"<x/>", address=FE01)

        assert bad.requests == []
    message = str(caught.value)
    assert message.startswith(f"certificate for {UCUPDATES}: ")
    assert message.endswith(f"(served by {FE01}:{bad.port})")
    assert re.search(FAULTS[fault], message), message
    assert caught.value.host == UCUPDATES


async def test_by_name_a_refused_certificate_is_reported_over_a_refused_connection(
    pki: LabPKI, phone: PhoneFactory
) -> None:
    # fe02's address refuses the connection, fe01's shows a certificate without the name:
    # whichever the DNS gives first, the certificate is what the phone reports.
    context = pki.faulty("no-ucupdates-name", "fe01").server_context()
    async with WebServer(service_app(), FE01, context) as bad:
        with pytest.raises(CertificateError, match=r"name not on the certificate") as caught:
            await phone().post_xml(bad.url(CHECK_PATH), b"<x/>")

        assert bad.requests == []
    assert str(caught.value).startswith(f"certificate for {UCUPDATES}: name not on")


async def test_phone_clock_in_2010_refuses_a_good_certificate(
    server: WebServer, phone: PhoneFactory
) -> None:
    loop = asyncio.get_running_loop()
    in_2010 = LoopClock(loop.time, start=datetime(2010, 3, 1, tzinfo=UTC).timestamp() - loop.time())

    with pytest.raises(CertificateError) as caught:
        await phone(phone_clock=in_2010).post_xml(server.url(CHECK_PATH), b"<x/>", address=FE01)

    assert (
        f"certificate for {UCUPDATES}: certificate is not yet valid by the phone's clock "
        "(2010-03-01T00:00:" in str(caught.value)
    )
    assert server.requests == []


async def test_a_changed_clock_offset_checks_the_next_connection_again(
    server: WebServer, phone: PhoneFactory
) -> None:
    client = phone()
    await client.post_xml(server.url(CHECK_PATH), b"<x/>", address=FE01)

    with pytest.raises(CertificateError, match=r"certificate expired by the phone's clock"):
        await client.post_xml(server.url(CHECK_PATH), b"<x/>", address=FE01, clock_offset=3 * YEAR)

    assert len(server.requests) == 1


async def test_a_name_the_certificate_lacks_is_refused(
    server: WebServer, phone: PhoneFactory
) -> None:
    url = server.url(CHECK_PATH, host="elsewhere.contoso.test")
    with pytest.raises(CertificateError, match=r"name not on the certificate \(names: fe01"):
        await phone().post_xml(url, b"<x/>", address=FE01)
    assert server.requests == []


async def test_a_phone_without_a_trusted_ca_trusts_no_server(
    server: WebServer, clock: LoopClock, dns: DNSServer
) -> None:
    resolver = DNSResolver(dns.address, INSIDE_PHONE)
    async with PhoneHTTPSClient(
        source=INSIDE_PHONE, resolver=resolver, ca_cert=None, clock=clock
    ) as client:
        with pytest.raises(CertificateError, match="the phone trusts no CA"):
            await client.post_xml(server.url(CHECK_PATH), b"<x/>", address=FE01)
    assert server.requests == []


# -- downloads ---------------------------------------------------------------------------------


async def test_download_whole_file(server: WebServer, phone: PhoneFactory, tmp_path: Path) -> None:
    target = tmp_path / "CPE.nbt"
    seen: list[tuple[int, int | None]] = []

    result = await phone().download(
        server.url("/DeviceUpdateFiles_Int/CPE.nbt"),
        target,
        address=FE01,
        progress=lambda size, total: seen.append((size, total)),
    )

    assert (result.status, result.size, result.received) == (200, len(IMAGE), len(IMAGE))
    assert result.etag == IMAGE_ETAG
    assert not result.resumed
    assert sha256(target) == hashlib.sha256(IMAGE).hexdigest()
    assert result.sha256 == sha256(target)  # hashed as written, kept bytes included
    assert seen[-1] == (len(IMAGE), len(IMAGE))
    assert [size for size, _ in seen] == sorted(size for size, _ in seen)
    assert "Range" not in server.requests[0].headers


async def test_resume_with_the_matching_etag_appends(
    server: WebServer, phone: PhoneFactory, tmp_path: Path
) -> None:
    target = tmp_path / "CPE.nbt"
    target.write_bytes(IMAGE[:120_000])

    result = await phone().download(
        server.url("/DeviceUpdateFiles_Int/CPE.nbt"), target, address=FE01, etag=IMAGE_ETAG
    )

    assert (result.status, result.size, result.received) == (206, len(IMAGE), len(IMAGE) - 120_000)
    assert result.resumed
    assert result.etag == IMAGE_ETAG
    assert sha256(target) == hashlib.sha256(IMAGE).hexdigest()
    assert result.sha256 == sha256(target)  # hashed as written, kept bytes included
    headers = server.requests[0].headers
    assert (headers["Range"], headers["If-Range"]) == ("bytes=120000-", IMAGE_ETAG)


async def test_resume_with_a_stale_etag_restarts_the_file(
    server: WebServer, phone: PhoneFactory, tmp_path: Path
) -> None:
    target = tmp_path / "CPE.nbt"
    target.write_bytes(b"x" * 120_000)  # bytes of an older image

    result = await phone().download(
        server.url("/DeviceUpdateFiles_Int/CPE.nbt"), target, address=FE01, etag='"older"'
    )

    assert (result.status, result.size, result.received) == (200, len(IMAGE), len(IMAGE))
    assert result.etag == IMAGE_ETAG
    assert not result.resumed
    assert sha256(target) == hashlib.sha256(IMAGE).hexdigest()
    assert result.sha256 == sha256(target)  # hashed as written, kept bytes included
    assert server.requests[0].headers["If-Range"] == '"older"'


async def test_offset_given_by_the_core_wins_over_the_file_size(
    server: WebServer, phone: PhoneFactory, tmp_path: Path
) -> None:
    target = tmp_path / "CPE.nbt"
    target.write_bytes(IMAGE[:200_000] + b"garbage after the offset")

    result = await phone().download(
        server.url("/DeviceUpdateFiles_Int/CPE.nbt"),
        target,
        address=FE01,
        offset=200_000,
        etag=IMAGE_ETAG,
    )

    assert (result.status, result.received) == (206, len(IMAGE) - 200_000)
    assert sha256(target) == hashlib.sha256(IMAGE).hexdigest()
    assert result.sha256 == sha256(target)  # hashed as written, kept bytes included


async def test_a_complete_file_is_not_fetched_again(
    server: WebServer, phone: PhoneFactory, tmp_path: Path
) -> None:
    target = tmp_path / "CPE.nbt"
    target.write_bytes(IMAGE)

    result = await phone().download(
        server.url("/DeviceUpdateFiles_Int/CPE.nbt"), target, address=FE01, etag=IMAGE_ETAG
    )

    assert (result.status, result.size, result.received) == (416, len(IMAGE), 0)
    assert sha256(target) == hashlib.sha256(IMAGE).hexdigest()
    assert result.sha256 is None  # nothing was written: verifying reads the file


async def test_a_cut_download_keeps_its_bytes_and_resumes(
    server: WebServer, phone: PhoneFactory, tmp_path: Path
) -> None:
    client = phone()
    target = tmp_path / "CPE.nbt"

    with pytest.raises(DownloadInterruptedError) as caught:
        await client.download(server.url("/cut/CPE.nbt"), target, address=FE01)

    assert (caught.value.offset, caught.value.etag) == (100_000, IMAGE_ETAG)
    assert "was cut at 100000 bytes" in str(caught.value)
    assert target.read_bytes() == IMAGE[:100_000]
    result = await client.download(
        server.url("/DeviceUpdateFiles_Int/CPE.nbt"), target, address=FE01, etag=caught.value.etag
    )
    assert (result.status, result.received) == (206, len(IMAGE) - 100_000)
    assert sha256(target) == hashlib.sha256(IMAGE).hexdigest()
    assert result.sha256 == sha256(target)  # hashed as written, kept bytes included


async def test_download_error_status_carries_the_reason(
    server: WebServer, phone: PhoneFactory, tmp_path: Path
) -> None:
    with pytest.raises(ServiceStatusError) as caught:
        await phone().download(
            server.url("/DeviceUpdateFiles_Int/missing.nbt"), tmp_path / "x", address=FE01
        )

    assert caught.value.status == 404
    assert caught.value.reason == "this server has no file CPE.nbt"


# -- error answers -------------------------------------------------------------------------------


async def test_503_carries_reason_and_retry_after(server: WebServer, phone: PhoneFactory) -> None:
    with pytest.raises(ServiceStatusError) as caught:
        await phone().post_xml(server.url("/busy"), b"<x/>", address=FE01)

    error = caught.value
    assert str(error) == (
        f"{UCUPDATES} answered HTTP 503 Service Unavailable: fe01 is in maintenance "
        "(diagnostic 50301)"
    )
    assert (error.status, error.retry_after, error.body) == (503, 120.0, b"fe01 is in maintenance")
    assert error.diagnostics == '50301;reason="fe01 is in maintenance"'


async def test_403_says_the_services_reason(server: WebServer, phone: PhoneFactory) -> None:
    with pytest.raises(
        ServiceStatusError, match="outside request with no signed-in user"
    ) as caught:
        await phone().post_xml(server.url("/denied"), b"<x/>", address=FE01)
    assert caught.value.status == 403


async def test_an_answer_over_the_limit_is_refused(server: WebServer, phone: PhoneFactory) -> None:
    with pytest.raises(MalformedAnswerError, match="over the 65536-byte limit"):
        await phone().post_xml(server.url("/big"), b"<x/>", address=FE01)


# -- no answer -----------------------------------------------------------------------------------


async def test_connection_refused_names_the_address(
    no_server: tuple[str, int], phone: PhoneFactory
) -> None:
    address, port = no_server
    url = f"https://{UCUPDATES}:{port}{CHECK_PATH}"

    with pytest.raises(ConnectError) as caught:
        await phone().post_xml(url, b"<x/>", address=address)

    assert str(caught.value) == f"connection to {UCUPDATES} at {address}:{port} refused"
    assert caught.value.address == f"{address}:{port}"


async def test_connection_dropped_before_tls(phone: PhoneFactory) -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    dropper = await asyncio.start_server(drop, FE01, 0)
    port = dropper.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectError) as caught:
            await phone().post_xml(f"https://{UCUPDATES}:{port}/", b"<x/>", address=FE01)
    finally:
        dropper.close()
        await dropper.wait_closed()

    assert str(caught.value) == (
        f"{UCUPDATES} at {FE01}:{port} closed the connection before the TLS handshake finished"
    )


async def test_no_tls_answer_times_out(phone: PhoneFactory) -> None:
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    holder = await asyncio.start_server(hold, FE01, 0)
    port = holder.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectError) as caught:
            await phone(connect_timeout=0.2).post_xml(
                f"https://{UCUPDATES}:{port}/", b"<x/>", address=FE01
            )
    finally:
        release.set()
        holder.close()
        await holder.wait_closed()

    assert str(caught.value) == f"could not connect to {UCUPDATES} at {FE01}:{port} within 0.2 s"
