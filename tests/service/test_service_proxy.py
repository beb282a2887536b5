"""The edge as a reverse proxy: its own certificate, pinned connections, maintenance, mistakes.

Real sockets and real TLS on loopback: outside clients talk to the edge, which ends their
TLS and forwards each client connection over a connection of its own to the external site
of a front end of the pool it publishes (pool01: fe01 and fe02; never se01, the lab's
other pool).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
from collections.abc import Callable

import pytest
import spnego
from service_helpers import (
    APPROVED_IMAGES,
    OUTSIDE_PHONE,
    HttpConnection,
    Phones,
    check_body,
    ntlm_request,
)

from lab.events import Event
from lab.net.pki import LabPKI
from lab.service import Mode, ServicePool
from lab.service.edge import Edge, PublishingRule, Upstream
from lab.service.sites import bind_same_port

EXT_CHECK = "/RequestHandlerExt/ucdevice.upx"
SIGNIN = "/Provisioning/signin"
NBT = APPROVED_IMAGES[1]
DOWNLOAD = f"/DeviceUpdateFiles_Ext/{NBT.relative}"
ALICE = ("CONTOSO\\alice", "Passw0rd!")
STARTED = 64 * 1024
SLOW = 16 * 1024


def peer_names(conn: HttpConnection) -> set[str]:
    """The DNS names on the certificate the server presented to ``conn``."""
    ssl_object = conn.writer.get_extra_info("ssl_object")
    assert ssl_object is not None
    cert = ssl_object.getpeercert()
    return {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}


def edge(pool: ServicePool) -> Edge:
    assert pool.edge is not None
    return pool.edge


def upstream_peers(pool: ServicePool) -> dict[tuple[str, int], str]:
    """The edge's connections as the front ends see them: (host, port) -> front end."""
    return {
        (conn.peer, conn.port): name
        for name, server in pool.servers.items()
        for conn in (server.external.connections if server.external else ())
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def settled(condition: Callable[[], bool]) -> None:
    """Let the loop turn until ``condition`` holds: the peers all run on this loop."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail("the condition never held")


async def test_a_client_meets_the_edge_certificate_and_downloads_through_it(
    pool: ServicePool, pki: LabPKI, phones: Phones
) -> None:
    conn = await phones.outside()
    names = peer_names(conn)
    # The edge's own certificate, for the external web name: no front end's name on it,
    # of any pool.
    assert names == set(pki.edge().names)
    assert pool.config.edge.external_web in names
    assert not names & {fe.fqdn for fe in pool.config.front_ends}

    whole = await ntlm_request(conn, "GET", DOWNLOAD, *ALICE)
    assert whole.status == 200
    assert hashlib.sha256(whole.body).hexdigest() == NBT.sha256
    etag = whole.header("etag")
    assert etag
    served_by = whole.header("x-ms-server-fqdn")

    # Range, If-Range and conditional requests pass both ways untouched, on the same
    # (authenticated) connection to the same front end.
    rest = await conn.request("GET", DOWNLOAD, {"Range": "bytes=1000-", "If-Range": etag})
    assert rest.status == 206
    assert rest.header("content-range") == f"bytes 1000-{len(NBT.data) - 1}/{len(NBT.data)}"
    assert rest.header("etag") == etag
    assert rest.body == NBT.data[1000:]
    stale = await conn.request("GET", DOWNLOAD, {"Range": "bytes=1000-", "If-Range": '"old"'})
    assert (stale.status, len(stale.body)) == (200, len(NBT.data))
    unchanged = await conn.request("GET", DOWNLOAD, {"If-None-Match": etag})
    assert (unchanged.status, unchanged.body) == (304, b"")
    head = await conn.request("HEAD", DOWNLOAD)
    assert (head.status, head.header("content-length")) == (200, str(len(NBT.data)))
    assert {r.header("x-ms-server-fqdn") for r in (rest, stale, unchanged, head)} == {served_by}

    check = await conn.request("POST", EXT_CHECK, body=check_body(user="alice@contoso.test"))
    assert check.status == 200
    assert b'downloads="2"' in check.body


async def test_ntlm_goes_through_and_no_two_clients_share_a_front_end_connection(
    pool: ServicePool, phones: Phones
) -> None:
    first = await phones.outside(source="127.20.0.51")
    second = await phones.outside(source="127.20.0.52")

    # The legs of two handshakes interleaved: each answer must come from its own context.
    clients = [
        spnego.client(*ALICE, protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
        for _ in range(2)
    ]
    challenges = []
    for conn, client in zip((first, second), clients, strict=True):
        negotiate = client.step()
        assert negotiate is not None
        answer = await conn.request("POST", SIGNIN, {"Authorization": "NTLM " + b64(negotiate)})
        assert answer.status == 401
        challenges.append(answer.header("www-authenticate") or "")
    for conn, client, challenge in zip((first, second), clients, challenges, strict=True):
        token = client.step(base64.b64decode(challenge.removeprefix("NTLM ")))
        assert token is not None
        signed = await conn.request("POST", SIGNIN, {"Authorization": "NTLM " + b64(token)})
        assert signed.status == 200

    # One connection to a front end per client connection, and the edge knows whose it is.
    peers = upstream_peers(pool)
    assert len(peers) == 2
    assert all(host == str(pool.config.edge.address) for host, _ in peers)
    assert sorted(edge(pool).origin(*peer) for peer in peers) == ["127.20.0.51", "127.20.0.52"]
    assert pool.snapshot()["edge"]["upstream_connections"] == 2

    # Kept for the client connection's life: later requests reuse it, still signed in.
    for _ in range(3):
        again = await first.request("POST", EXT_CHECK, body=check_body(user="alice@contoso.test"))
        assert again.status == 200
    assert upstream_peers(pool) == peers

    # The client goes; so does its connection to the front end, and nothing else.
    await first.close()
    await settled(lambda: len(upstream_peers(pool)) == 1)
    (left,) = upstream_peers(pool)
    assert edge(pool).origin(*left) == "127.20.0.52"
    assert (await second.request("POST", SIGNIN)).status == 200


async def test_a_draining_front_end_finishes_its_pinned_download_and_gets_no_new_client(
    pool: ServicePool, phones: Phones
) -> None:
    conn = await phones.outside(receive_buffer=SLOW)
    signed = await ntlm_request(conn, "POST", SIGNIN, *ALICE)
    assert signed.status == 200
    server = pool.server(signed.header("x-ms-server-fqdn") or "")
    await conn.send("GET", DOWNLOAD)
    head = await conn.read_head()
    assert head.status == 200
    first = await conn.reader.readexactly(STARTED)

    # The client reads no further: the transfer stays in progress on its front end.
    assert pool.enter_maintenance(server.name).mode is Mode.DRAINING
    assert server.status().in_progress == 1
    others = set()
    for _ in range(3):
        fresh = await phones.outside(source="127.20.0.53")
        answer = await ntlm_request(fresh, "POST", SIGNIN, *ALICE)
        assert answer.status == 200
        others.add(answer.header("x-ms-server-fqdn"))
        await fresh.close()
    # The other front ends of the pool the edge publishes.
    published = pool.config.edge_pool.front_ends
    assert others == {fe.fqdn for fe in published if fe.name != server.name}

    rest = await conn.reader.readexactly(len(NBT.data) - STARTED)
    assert hashlib.sha256(first + rest).hexdigest() == NBT.sha256
    assert (await pool.wait_drained(server.name)).mode is Mode.MAINTENANCE

    # The pinned connection still reaches its own front end, which turns new work away
    # and ends it; the client's connection ends with it.
    refused = await conn.request("POST", SIGNIN)
    assert (refused.status, refused.header("connection")) == (503, "close")
    assert (refused.header("x-ms-server-fqdn"), refused.header("retry-after")) == (
        server.front_end.fqdn,
        "30",
    )
    assert await conn.reader.read() == b""


async def test_a_listener_certificate_without_the_external_web_name_is_refused(
    pool: ServicePool, pki: LabPKI, phones: Phones
) -> None:
    faulty = pki.faulty_edge("no-external-web-name")
    assert pool.config.edge.external_web not in faulty.names
    edge(pool).present(faulty.server_context())
    with pytest.raises(ssl.SSLCertVerificationError, match=r"webext\.contoso\.test"):
        await phones.outside()

    edge(pool).present(pki.edge().server_context())
    conn = await phones.outside()
    assert (await ntlm_request(conn, "POST", SIGNIN, *ALICE)).status == 200


@pytest.mark.parametrize(
    ("mistake", "code"),
    [("internal-port", "50201"), ("untrusted-ca", "50202")],
)
async def test_a_front_end_the_edge_cannot_reach_or_trust_is_a_502(
    pool: ServicePool, pki: LabPKI, phones: Phones, mistake: str, code: str
) -> None:
    seen: list[Event] = []
    pool.events.subscribe(seen.append, kinds=("edge.no_server",))
    if mistake == "internal-port":
        edge(pool).rule = PublishingRule(bridge_port=pool.https_port)
    else:
        edge(pool).trust(ssl.create_default_context())

    conn = await phones.outside()
    answer = await conn.request("POST", SIGNIN)
    assert (answer.status, answer.header("connection")) == (502, "close")
    assert (answer.header("x-ms-diagnostics") or "").startswith(f"{code};reason=")
    (event,) = seen
    # Every front end of the pool it publishes (pool01) was tried, each refusal said where
    # and why.
    assert set(event.data["servers"]) == {"fe01", "fe02"}
    assert pool.snapshot()["edge"]["answered"] == {"502": 1}
    assert upstream_peers(pool) == {}

    edge(pool).rule = PublishingRule()
    edge(pool).trust(pki.client_context())
    healthy = await phones.outside()
    assert (await ntlm_request(healthy, "POST", SIGNIN, *ALICE)).status == 200


async def test_a_rule_that_keeps_the_credentials_from_the_front_end_gives_401_forever(
    pool: ServicePool, phones: Phones
) -> None:
    edge(pool).rule = PublishingRule(client_may_authenticate=False)
    for _ in range(2):
        conn = await phones.outside()
        answer = await ntlm_request(conn, "POST", SIGNIN, *ALICE)
        # The NEGOTIATE never arrived: the front end asks again, with no challenge.
        assert answer.status == 401
        assert answer.header("www-authenticate") == "NTLM"
        assert (answer.header("x-ms-diagnostics") or "").startswith("40101;")

    edge(pool).rule = PublishingRule()
    conn = await phones.outside()
    assert (await ntlm_request(conn, "POST", SIGNIN, *ALICE)).status == 200


@pytest.mark.looptime
async def test_a_front_end_that_does_not_answer_in_time_is_a_504(
    pool: ServicePool, pki: LabPKI, client_context: ssl.SSLContext
) -> None:
    # A stand-in for a hung front end: it takes the connection and the request, and says
    # nothing.
    taken: list[asyncio.StreamWriter] = []

    async def hung(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(writer)
        await reader.readuntil(b"\r\n\r\n")

    fe01 = pool.config.front_ends[0]
    silent = await asyncio.start_server(
        hung, "127.0.0.1", 0, ssl=pki.server(fe01.name).server_context()
    )
    host, port = silent.sockets[0].getsockname()[:2]
    sock = bind_same_port([str(pool.config.edge.address)], 0)[0]
    proxy = Edge(
        sock,
        lambda: [Upstream(name=fe01.name, fqdn=fe01.fqdn, host=host, port=port)],
        source=str(pool.config.edge.address),
        certificate=pki.edge().server_context(),
        trust=pki.client_context(),
        answer_timeout=30.0,
    )
    await proxy.start()
    try:
        loop = asyncio.get_running_loop()
        conn = await HttpConnection.open(
            proxy.address, pool.config.edge.external_web, client_context, source=OUTSIDE_PHONE
        )
        start = loop.time()
        answer = await conn.request("POST", SIGNIN)
        assert loop.time() - start == pytest.approx(30.0, abs=0.5)
        assert answer.status == 504
        assert (answer.header("x-ms-diagnostics") or "").startswith("50401;")
        assert proxy.snapshot()["answered"] == {"504": 1}
        await conn.close()
    finally:
        await proxy.stop()
        for writer in taken:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_immediate_maintenance_cuts_the_download_through_the_edge_too(
    pool: ServicePool, phones: Phones
) -> None:
    conn = await phones.outside(receive_buffer=SLOW)
    signed = await ntlm_request(conn, "POST", SIGNIN, *ALICE)
    server = signed.header("x-ms-server-fqdn") or ""
    await conn.send("GET", DOWNLOAD)
    assert (await conn.read_head()).status == 200
    await conn.reader.readexactly(STARTED)

    pool.enter_maintenance(server, immediate=True)
    # Cut, not ended early: the phone sees its download break and resumes elsewhere.
    with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
        await conn.reader.readexactly(len(NBT.data) - STARTED)
    await settled(lambda: edge(pool).snapshot()["upstream_connections"] == 0)

    other = await phones.outside()
    resumed = await ntlm_request(
        other, "GET", DOWNLOAD, *ALICE, headers={"Range": f"bytes={STARTED}-"}
    )
    assert resumed.status == 206
    assert resumed.header("x-ms-server-fqdn") != server
    assert resumed.body == NBT.data[STARTED:]


async def test_the_edge_answers_expect_100_continue_and_forwards_the_body(
    phones: Phones,
) -> None:
    conn = await phones.outside()
    body = check_body(user=None)
    await conn.send("POST", EXT_CHECK, {"Expect": "100-continue", "Content-Length": str(len(body))})
    interim = await conn.read_head()
    assert interim.status == 100
    conn.writer.write(body)
    answer = await conn.read_head()
    # The front end read the whole body: it knows nobody has signed in on the phone.
    assert answer.status == 403
    assert (answer.header("x-ms-diagnostics") or "").startswith("40301;")


async def test_a_front_end_ending_an_idle_pinned_connection_ends_the_clients(
    pool: ServicePool, phones: Phones
) -> None:
    conn = await phones.outside()
    signed = await ntlm_request(conn, "POST", SIGNIN, *ALICE)
    assert signed.status == 200
    other = await phones.outside(source="127.20.0.54")
    assert (await ntlm_request(other, "POST", SIGNIN, *ALICE)).status == 200

    # Its front end cuts every connection it has; the edge does not open another for this
    # client connection (its NTLM sign-in is gone with it): it closes the client's.
    pool.enter_maintenance(signed.header("x-ms-server-fqdn") or "", immediate=True)
    assert await conn.reader.read() == b""
    assert edge(pool).snapshot()["upstream_connections"] == 1
    assert (await other.request("POST", SIGNIN)).status == 200
