"""Connections against a real `lab up`: starvation, slow senders, the edge-only external
site, TLS alerts, the admin token's form, memory held by large checks.

Every attack runs while a normal client is shown to be served.
"""

from __future__ import annotations

import asyncio
import json
import resource
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clients import Connection, check_body, client_context, reset_before_tls, through_edge
from conftest import INSIDE_PHONE, OUTSIDE_ATTACKER
from labprocess import LabProcess

CHECK = "/RequestHandler/ucdevice.upx"
APPROVED = "4.0.7577.4372"


def pool_name(lab: LabProcess) -> str:
    """The FQDN of pool01 (fe01 and fe02), which their certificates carry."""
    return "pool01.contoso.test"


def inside(lab: LabProcess, server: str = "fe01", source: str = INSIDE_PHONE) -> Connection:
    """A connection from an inside phone to ``server``'s internal site."""
    return Connection(lab, lab.endpoint(server, "internal"), source, pool_name(lab))


def publish_image(lab: LabProcess, tmp: Path) -> str:
    """Build, import and approve a small CX600 image; its internal download path."""
    cab = tmp / "UCUpdates.cab"
    built = lab.lab(
        "cab", "build", "--model", "CX600", "--version", APPROVED, "--image-size", "64K",
        "--output", str(cab),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    for args in (("update", "import", str(cab), "--all-pools"), ("update", "approve", "--all")):
        done = lab.lab(*args)
        assert done.returncode == 0, done.stderr
    with inside(lab) as conn:
        answer = conn.request("POST", CHECK, {"Content-Type": "text/xml"}, check_body())
    assert answer.status == 200, answer.body
    url = answer.body.split(b"<BaseURL>")[1].split(b"</BaseURL>")[0].decode()
    return "/" + url.split("/", 3)[3]


def a_phone_is_served(lab: LabProcess, download: str | None = None) -> None:
    """An inside phone checks (and downloads ``download``) and `lab status` answers."""
    with inside(lab) as conn:
        answer = conn.request("POST", CHECK, {"Content-Type": "text/xml"}, check_body())
        assert answer.status == 200, answer.body
        if download is not None:
            image = conn.request("GET", download)
            assert image.status == 200
            assert len(image.body) == int(image.header("Content-Length")) > 0
    assert lab.status()["alive"] is True


@pytest.fixture
def many_files() -> Iterator[None]:
    """Let this test process hold a few thousand sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def hold_partial_posts(lab: LabProcess, count: int) -> tuple[int, list[asyncio.StreamWriter]]:
    """Open ``count`` TLS connections to the edge from one address, each holding a POST
    whose body never ends; how many the lab took, and the writers to close."""
    host, port = lab.endpoint("edge", "https")
    context = client_context(lab)
    held: list[asyncio.StreamWriter] = []
    semaphore = asyncio.Semaphore(64)

    async def one() -> None:
        async with semaphore:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        host,
                        port,
                        ssl=context,
                        server_hostname="webext.contoso.test",
                        local_addr=(OUTSIDE_ATTACKER, 0),
                    ),
                    timeout=10,
                )
            except (OSError, TimeoutError, ssl.SSLError):
                return
            writer.write(
                b"POST /RequestHandlerExt/ucdevice.upx HTTP/1.1\r\nHost: webext.contoso.test\r\n"
                b"Content-Length: 60000\r\n\r\n<DeviceUpdateRequest>"
            )
            held.append(writer)

    await asyncio.gather(*(one() for _ in range(count)))
    return len(held), held


def test_one_address_cannot_starve_the_lab_under_a_low_file_limit(
    lab_factory: Callable[..., LabProcess], tmp_path: Path, many_files: None
) -> None:
    lab = lab_factory(nofile=1024)
    download = publish_image(lab, tmp_path)

    async def attack() -> int:
        taken, held = await hold_partial_posts(lab, 1100)
        # While every connection the attacker got is held: a phone is served.
        await asyncio.to_thread(a_phone_is_served, lab, download)
        for writer in held:
            writer.transport.abort()
        return taken

    # A loop of its own that leaves the current one alone: asyncio.run would replace a loop
    # pytest-asyncio set up for the fixtures without closing it (an "unclosed event loop"
    # at the end of the run); left current, tests/conftest.py closes it after the test.
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        taken = runner.run(attack())
    cap = lab.status()["pool"]["connections"]["per_address_cap"]
    assert 0 < taken <= cap
    connections = lab.status()["pool"]["connections"]
    assert connections["refused_per_address"] >= 1100 - cap
    log = lab.stderr_path.read_text()
    assert "Too many open files" not in log
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def impatient_lab(lab_factory: Callable[..., LabProcess]) -> LabProcess:
    return lab_factory(
        {
            "limits": {
                "header_timeout": 1.0,
                "body_timeout": 1.0,
                "body_min_rate": 1000,
                "connections_per_address": 8,
            }
        }
    )


def closed_after(conn: Connection, trickle: bytes = b"", step: float = 0.1) -> float:
    """Seconds until the server closes ``conn``; sends one byte of ``trickle`` each time
    ``step`` seconds pass without anything from the server."""
    start = time.monotonic()
    conn.sock.settimeout(step)
    position = 0
    while time.monotonic() - start < 15:
        try:
            if conn.sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            if position < len(trickle):
                conn.sock.sendall(trickle[position : position + 1])
                position += 1
        except (ConnectionResetError, ssl.SSLError, OSError):
            return time.monotonic() - start
    pytest.fail("the server never closed the connection")


def test_a_connection_that_sends_nothing_is_closed(impatient_lab: LabProcess) -> None:
    with inside(impatient_lab) as conn:
        assert 0.9 <= closed_after(conn) < 4


def test_headers_trickling_in_do_not_keep_a_connection(impatient_lab: LabProcess) -> None:
    headers = b"POST /RequestHandler/ucdevice.upx HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200
    with inside(impatient_lab) as conn:
        # A byte every 0.1 s, never the end of the headers.
        assert 0.9 <= closed_after(conn, headers) < 4


def test_a_body_slower_than_the_minimum_rate_is_cut(impatient_lab: LabProcess) -> None:
    with inside(impatient_lab) as conn:
        conn.sock.sendall(
            b"POST /RequestHandler/ucdevice.upx HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 60000\r\n\r\n"
        )
        # 10 bytes/s against a minimum of 1000: cut after about the body timeout.
        assert 0.9 <= closed_after(conn, b"<" * 200) < 4


def test_normal_phones_are_not_hurt_by_the_deadlines(impatient_lab: LabProcess) -> None:
    body = check_body()
    with inside(impatient_lab) as conn:
        # A body in two parts, and a second request on the kept-alive connection.
        conn.sock.sendall(
            f"POST {CHECK} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:100]
        )
        conn.sock.sendall(body[100:])
        assert conn.read().status == 200
        assert conn.request("POST", CHECK, {}, body).status == 200
    # As many connections as the cap allows, from one address (of its own), all served.
    conns: list[Connection] = []
    try:
        for _ in range(8):
            # Each asks at once: an idle new connection would meet the 1 s header deadline.
            conns.append(inside(impatient_lab, source="127.10.0.61"))
            assert conns[-1].request("POST", CHECK, {}, body).status == 200
        # The next one from that address is reset before TLS; another address is served.
        assert reset_before_tls(impatient_lab.endpoint("fe01", "internal"), "127.10.0.61")
        with inside(impatient_lab, source="127.10.0.62") as other:
            assert other.request("POST", CHECK, {}, body).status == 200
    finally:
        for c in conns:
            c.close()


def test_external_sites_accept_only_the_edge(impatient_lab: LabProcess) -> None:
    external = impatient_lab.endpoint("fe01", "external")
    for source in (OUTSIDE_ATTACKER, INSIDE_PHONE):
        assert reset_before_tls(external, source)
    # Through the edge the same site answers (an NTLM challenge for an anonymous check).
    with through_edge(impatient_lab, OUTSIDE_ATTACKER) as conn:
        answer = conn.request("POST", "/RequestHandlerExt/ucdevice.upx", {}, check_body())
    assert answer.status == 403


@pytest.mark.parametrize(
    ("options", "alert"),
    [
        (["-tls1_1"], "alert protocol version"),
        (["-tls1_2", "-cipher", "AES128-SHA"], "alert handshake failure"),
    ],
)
def test_a_refused_handshake_gets_its_alert(
    impatient_lab: LabProcess, options: list[str], alert: str
) -> None:
    host, port = impatient_lab.endpoint("fe01", "internal")
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-bind", INSIDE_PHONE, *options],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert alert in result.stdout + result.stderr


def test_the_admin_api_takes_only_the_bearer_form(impatient_lab: LabProcess) -> None:
    host, port = impatient_lab.endpoint("admin", "http")
    token = (impatient_lab.state / "admin.token").read_text().strip()

    def status_with(header: str) -> str:
        result = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", header,
             f"http://{host}:{port}/v1/status"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return result.stdout

    assert status_with(f"Authorization: {token}") == "401"
    assert status_with(f"Authorization: Token {token}") == "401"
    assert status_with(f"Authorization: Bearer {token}") == "200"
    assert status_with(f"Authorization: bearer {token}") == "200"


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_large_distinct_checks_do_not_pin_memory(lab_factory: Callable[..., LabProcess]) -> None:
    lab = lab_factory()
    modules = "".join(f'<Module name="M{i:05d}.bin" version="1.0.0.{i}"/>' for i in range(1300))
    with inside(lab) as conn:
        for _ in range(50):  # warm up: what every check needs is made once
            assert conn.request("POST", CHECK, {}, check_body()).status == 200
    before = rss_kib(lab.proc.pid)
    with inside(lab) as conn:
        # Twenty requests at a time on the one connection (HTTP/1.1 pipelining).
        for first in range(0, 1000, 20):
            for n in range(first, first + 20):
                body = check_body(
                    mac=f"00-04-F2-01-{n >> 8:02X}-{n & 255:02X}", serial=f"CX6B{n:06d}"
                )
                body = body.replace(b"<Modules>", b"<Modules>" + modules.encode())
                assert 60_000 < len(body) <= 64 * 1024
                conn.send("POST", CHECK, {}, body)
            assert all(conn.read().status == 200 for _ in range(20))
    grown = rss_kib(lab.proc.pid) - before
    # 1,000 bodies of 62 KiB are 60 MiB; what stays must be a small part of it.
    assert grown < 40 * 1024, f"the lab grew by {grown} KiB"
    json.dumps(lab.status())  # still answers
