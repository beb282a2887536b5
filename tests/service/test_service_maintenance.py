"""Maintenance: drain lets transfers finish while the edge and new requests go elsewhere;
immediate cuts them; the last server in production of a pool needs force.

The default lab's pools: pool01.contoso.test (fe01, fe02; the edge publishes it) and
se01.contoso.test (a Standard Edition server, a pool of one)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl

import pytest
from service_helpers import APPROVED_IMAGES, HttpConnection, Phones, check_body, ntlm_request

from lab.errors import ServiceError
from lab.events import Event
from lab.service import Mode, ServicePool

NBT = APPROVED_IMAGES[1]
URL = f"/DeviceUpdateFiles_Int/{NBT.relative}"
CHECK = "/RequestHandler/ucdevice.upx"
SIGNIN = "/Provisioning/signin"
STARTED = 64 * 1024
SLOW = 16 * 1024


async def slow_downloads(phones: Phones, count: int) -> list[tuple[HttpConnection, bytes]]:
    """Start ``count`` downloads on fe01 and stop reading each after its first bytes.

    The client reads no further, so with its small receive window the server cannot
    finish: the transfer stays in progress until the test reads on, however long it takes.
    """
    started = []
    for _ in range(count):
        conn = await phones.inside("fe01", receive_buffer=SLOW)
        await conn.send("GET", URL)
        head = await conn.read_head()
        assert head.status == 200
        started.append((conn, await conn.reader.readexactly(STARTED)))
    return started


def recorder(pool: ServicePool) -> list[Event]:
    seen: list[Event] = []
    pool.events.subscribe(lambda e: seen.append(e) if e.kind.startswith("maintenance.") else None)
    return seen


async def served_by_through_edge(phones: Phones, count: int) -> list[str | None]:
    names = []
    for _ in range(count):
        conn = await phones.outside()
        response = await ntlm_request(conn, "POST", SIGNIN, "CONTOSO\\alice", "Passw0rd!")
        assert response.status == 200
        names.append(response.header("x-ms-server-fqdn"))
        await conn.close()
    return names


async def test_drain_lets_transfers_finish_and_sends_new_work_elsewhere(
    pool: ServicePool, phones: Phones
) -> None:
    events = recorder(pool)
    downloads = await slow_downloads(phones, 4)
    fe01 = pool.server("fe01")
    assert fe01.status().in_progress == 4

    status = pool.enter_maintenance("fe01")
    assert status.mode is Mode.DRAINING
    assert status.in_progress == 4

    check = await phones.inside("fe01")
    refused = await check.request("POST", CHECK, body=check_body())
    assert refused.status == 503
    assert refused.header("retry-after") == "30"
    assert refused.header("connection") == "close"
    assert (refused.header("x-ms-diagnostics") or "").startswith("50301;")
    again = await phones.inside("fe01")
    assert (await again.request("GET", URL)).status == 503

    assert await served_by_through_edge(phones, 3) == ["fe02.contoso.test"] * 3

    for conn, first in downloads:
        rest = await conn.reader.readexactly(len(NBT.data) - STARTED)
        assert hashlib.sha256(first + rest).hexdigest() == NBT.sha256
    drained = await pool.wait_drained("fe01")
    assert drained.mode is Mode.MAINTENANCE
    assert drained.in_progress == 0
    assert [(e.kind, e.data.get("mode")) for e in events] == [
        ("maintenance.entered", "draining"),
        ("maintenance.drained", None),
    ]

    back = pool.exit_maintenance("fe01")
    assert back.mode is Mode.PRODUCTION
    assert "fe01.contoso.test" in await served_by_through_edge(phones, 2)
    assert events[-1].kind == "maintenance.exited"


async def test_immediate_cuts_the_transfers_in_progress(
    pool: ServicePool, phones: Phones, caplog: pytest.LogCaptureFixture
) -> None:
    downloads = await slow_downloads(phones, 4)
    status = pool.enter_maintenance("fe01", immediate=True)
    assert status.mode is Mode.MAINTENANCE
    for conn, _ in downloads:
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            await conn.reader.readexactly(len(NBT.data) - STARTED)
    await pool.wait_drained("fe01")
    assert pool.server("fe01").status().connections == 0
    fe02 = await phones.inside("fe02")
    assert (await fe02.request("POST", CHECK, body=check_body())).status == 200
    # A cut transfer is the phone's to resume, not a server error worth a traceback.
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_the_last_server_in_production_needs_force(pool: ServicePool, phones: Phones) -> None:
    assert pool.enter_maintenance("fe01").mode is Mode.MAINTENANCE
    # se01 is in production too, but in another pool: fe02 is pool01's last.
    with pytest.raises(
        ServiceError, match=r"fe02 is the last server in production in pool pool01\.contoso\.test"
    ):
        pool.enter_maintenance("fe02")
    assert pool.server("fe02").mode is Mode.PRODUCTION

    assert pool.enter_maintenance("fe02", force=True).mode is Mode.MAINTENANCE
    # With no server of the pool it publishes in production (se01's is not published) the
    # edge has nowhere to forward: as a reverse proxy it answers the request itself, 503
    # with Retry-After, and closes the connection.
    conn = await phones.outside()
    refused = await conn.request("POST", SIGNIN)
    assert refused.status == 503
    assert refused.header("retry-after") == "30"
    assert refused.header("connection") == "close"
    assert (refused.header("x-ms-diagnostics") or "").startswith("50303;")
    assert await conn.reader.read() == b""

    # A server already out may be asked again; it stays out.
    assert pool.enter_maintenance("fe01").mode is Mode.MAINTENANCE
    pool.exit_maintenance("fe02")
    assert await served_by_through_edge(phones, 2) == ["fe02.contoso.test"] * 2


async def test_status_and_unknown_servers(pool: ServicePool) -> None:
    snapshot = pool.snapshot()
    # Every front end of every pool runs.
    assert set(snapshot["servers"]) == {"fe01", "fe02", "se01"}
    assert snapshot["servers"]["fe01"]["mode"] == "production"
    assert pool.server("fe02.contoso.test").name == "fe02"
    assert pool.server("se01.contoso.test").name == "se01"
    with pytest.raises(ServiceError, match=r"no front end 'fe09'.*fe01, fe02, se01"):
        pool.enter_maintenance("fe09")


async def test_the_last_server_in_production_is_judged_per_pool(
    pool: ServicePool, phones: Phones
) -> None:
    # Every server of both pools is in production; se01 is still the last of its own.
    assert {name: s.mode for name, s in pool.servers.items()} == {
        "fe01": Mode.PRODUCTION,
        "fe02": Mode.PRODUCTION,
        "se01": Mode.PRODUCTION,
    }
    with pytest.raises(
        ServiceError, match=r"se01 is the last server in production in pool se01\.contoso\.test"
    ):
        pool.enter_maintenance("se01")
    assert pool.server("se01").mode is Mode.PRODUCTION
    check = await phones.inside("se01")
    assert (await check.request("POST", CHECK, body=check_body())).status == 200

    # fe02 is in production in pool01: fe01 goes without force.
    assert pool.enter_maintenance("fe01").mode is Mode.MAINTENANCE
    pool.exit_maintenance("fe01")

    # se01 taken out with force counts for nothing in pool01: fe01 may still go, and then
    # fe02 is pool01's last.
    assert pool.enter_maintenance("se01", force=True).mode is Mode.MAINTENANCE
    refused = await (await phones.inside("se01")).request("POST", CHECK, body=check_body())
    assert refused.status == 503
    assert pool.enter_maintenance("fe01").mode is Mode.MAINTENANCE
    with pytest.raises(ServiceError, match=r"in pool pool01\.contoso\.test"):
        pool.enter_maintenance("fe02")
    assert pool.server("fe02").mode is Mode.PRODUCTION
