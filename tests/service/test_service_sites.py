"""The internal site behind the firewall, over real sockets and TLS, with curl and our client."""

from __future__ import annotations

import asyncio
import ssl
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from service_helpers import (
    APPROVED,
    APPROVED_IMAGES,
    INSIDE_PHONE,
    OUTSIDE_PHONE,
    HttpConnection,
    Phones,
    check_body,
    curl,
)

from lab.errors import ServiceError
from lab.events import Event
from lab.net.config import LabConfig
from lab.net.firewall import FirewallPolicy
from lab.net.pki import LabPKI
from lab.service import ServicePool
from lab.service.run import event_loop_factory, serve

CHECK = "/RequestHandler/ucdevice.upx"
# curl's exit codes for a connection refused, reset or closed before any HTTP answer.
NO_CONNECTION = {7, 35, 52, 56}


def parse(body: bytes) -> ET.Element:
    return ET.fromstring(body)  # noqa: S314 - our own service's answer in a test


async def test_curl_inside_gets_update_and_outside_gets_no_connection(
    pool: ServicePool, pki: LabPKI
) -> None:
    port = pool.https_port
    # fe01 (at 127.10.0.11) by its pool's FQDN, the name its phones are given.
    fqdn = pool.config.front_end("fe01").pool
    assert fqdn == "pool01.contoso.test"
    url = f"https://{fqdn}:{port}{CHECK}"
    resolve = f"{fqdn}:{port}:127.10.0.11"

    inside = await curl(
        url, source=INSIDE_PHONE, resolve=resolve, cacert=str(pki.ca_cert), data=check_body()
    )
    assert inside.returncode == 0, inside.stderr
    assert inside.status == 200
    root = parse(inside.output.split("\r\n\r\n", 1)[1].encode())
    assert root.get("downloads") == "2"
    downloads = root.findall("Download")
    assert [d.get("module") for d in downloads] == ["CPE.cat", "CPE.nbt"]
    nbt = downloads[1]
    assert nbt.get("version") == APPROVED
    assert nbt.get("sha256") == APPROVED_IMAGES[1].sha256
    assert nbt.findtext("BaseURL") == (
        f"https://{fqdn}:{port}/DeviceUpdateFiles_Int/{APPROVED_IMAGES[1].relative}"
    )
    assert nbt.findtext("ExternalBaseURL") == (
        f"https://{pool.config.edge.external_web}:{port}"
        f"/DeviceUpdateFiles_Ext/{APPROVED_IMAGES[1].relative}"
    )

    refused: list[Event] = []
    unsubscribe = pool.events.subscribe(
        lambda e: refused.append(e) if e.kind == "service.connection_refused" else None
    )
    try:
        outside = await curl(
            url, source=OUTSIDE_PHONE, resolve=resolve, cacert=str(pki.ca_cert), data=check_body()
        )
    finally:
        unsubscribe()
    assert outside.returncode in NO_CONNECTION, outside
    assert outside.status == 0
    assert [e.data["peer"] for e in refused] == [OUTSIDE_PHONE]


async def test_keep_alive_connection_is_cut_when_the_policy_moves_it_outside(
    pool: ServicePool, phones: Phones, firewall: FirewallPolicy
) -> None:
    conn = await phones.inside()
    first = await conn.request("POST", CHECK, body=check_body())
    assert first.status == 200
    second = await conn.request("POST", CHECK, body=check_body(version=APPROVED))
    assert second.status == 200  # same connection, kept alive
    assert pool.server("fe01").status().connections == 1

    firewall.set_zone(INSIDE_PHONE, "outside")

    # The reset is already on its way: the next read sees the connection end, no answer.
    with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
        await conn.request("POST", CHECK, body=check_body())
    assert pool.server("fe01").status().connections == 0
    with pytest.raises((ConnectionError, ssl.SSLError)):
        await phones.inside()

    firewall.clear(INSIDE_PHONE)
    again = await phones.inside()
    assert (await again.request("POST", CHECK, body=check_body())).status == 200


async def test_other_inside_connections_survive_a_change_for_one_address(
    pool: ServicePool, phones: Phones, firewall: FirewallPolicy
) -> None:
    moved = await phones.inside(source="127.10.0.51")
    stays = await phones.inside(source="127.10.0.52")
    for conn in (moved, stays):
        assert (await conn.request("POST", CHECK, body=check_body())).status == 200
    firewall.set_zone("127.10.0.51", "outside")
    with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
        await moved.request("POST", CHECK, body=check_body())
    assert (await stays.request("POST", CHECK, body=check_body())).status == 200


async def test_every_front_end_shares_one_port_per_role(pool: ServicePool) -> None:
    endpoints = pool.endpoints()
    # Every front end of every pool, se01 with them.
    names = [fe.name for fe in pool.config.front_ends]
    assert names == ["fe01", "fe02", "se01"]
    internal = {endpoints[fe]["internal"].split(":")[1] for fe in names}
    external = {endpoints[fe]["external"].split(":")[1] for fe in names}
    assert len(internal) == 1
    assert len(external) == 1
    assert internal != external
    # The edge shares the internal port, so the lease's one https_port works inside and out.
    assert endpoints["edge"]["https"] == f"{pool.config.edge.address}:{pool.https_port}"
    assert internal == {str(pool.https_port)}


async def test_every_front_end_answers_and_names_itself(phones: Phones) -> None:
    # Both of pool01 and se01 of its own pool (the CX600 rules are in every pool).
    for server in ("fe01", "fe02", "se01"):
        conn = await phones.inside(server)
        response = await conn.request("POST", CHECK, body=check_body())
        assert response.status == 200
        assert response.header("x-ms-server-fqdn") == f"{server}.contoso.test"


async def test_a_taken_port_is_reported(
    service_config: LabConfig, service_state: Path, pki: LabPKI, firewall: FirewallPolicy
) -> None:
    async with ServicePool(service_config, service_state, firewall=firewall, pki=pki) as first:
        taken = service_config.with_ports(internal=first.https_port, edge=first.https_port)
        second = ServicePool(taken, service_state, firewall=firewall, pki=pki)
        with pytest.raises(ServiceError, match=r"cannot listen on 127\.10\.0\.11"):
            await second.start()
        assert second.servers == {}
    # Everything of the first pool is released on stop: the same ports bind again.
    async with ServicePool(taken, service_state, firewall=firewall, pki=pki) as third:
        assert third.https_port == first.https_port


def test_the_service_runs_on_uvloop(
    service_config: LabConfig, service_state: Path, pki: LabPKI, client_context: ssl.SSLContext
) -> None:
    """The handoff from start_tls to aiohttp works on the loop production uses."""

    async def main() -> tuple[str, int]:
        firewall = FirewallPolicy(service_config.inside, service_config.outside)
        async with ServicePool(service_config, service_state, firewall=firewall, pki=pki) as pool:
            site = pool.server("fe02").internal
            assert site is not None
            conn = await HttpConnection.open(
                site.address,
                service_config.front_end("fe02").pool,
                client_context,
                source=INSIDE_PHONE,
            )
            try:
                response = await conn.request("POST", CHECK, body=check_body())
            finally:
                await conn.close()
            return type(asyncio.get_running_loop()).__module__, response.status

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        module, status = runner.run(main())
    assert module.startswith("uvloop")
    assert status == 200


async def test_serve_runs_a_pool_until_told_to_stop(
    service_config: LabConfig, service_state: Path
) -> None:
    stop = asyncio.Event()
    seen: list[dict[str, dict[str, str]]] = []

    def ready(pool: ServicePool) -> None:
        seen.append(pool.endpoints())
        stop.set()

    await serve(service_config, service_state, ready=ready, stop=stop)
    assert len(seen) == 1
    assert set(seen[0]) == {"fe01", "fe02", "se01", "edge"}
