"""Outside through the edge: NTLM with curl and pyspnego, lockout, sign-in, routing.

The edge publishes pool01.contoso.test (fe01, fe02) under webext.contoso.test; the lab's
other pool, se01.contoso.test (a Standard Edition server), is not published. alice and bob
are homed on pool01, carol on se01.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from service_helpers import (
    APPROVED_IMAGES,
    INSIDE_PHONE,
    OUTSIDE_PHONE,
    CurlResult,
    Phones,
    check_body,
    curl,
    ntlm_request,
)

from lab.events import Event
from lab.net.pki import LabPKI
from lab.service import ServicePool

EXT_CHECK = "/RequestHandlerExt/ucdevice.upx"
SIGNIN = "/Provisioning/signin"
CAROL = ("CONTOSO\\carol", "Autumn2026!")


async def curl_edge(
    pool: ServicePool, pki: LabPKI, path: str, *extra: str, data: bytes | None = None
) -> CurlResult:
    host = pool.config.edge.external_web
    port = pool.https_port
    return await curl(
        f"https://{host}:{port}{path}",
        source=OUTSIDE_PHONE,
        resolve=f"{host}:{port}:{pool.config.edge.address}",
        cacert=str(pki.ca_cert),
        data=data,
        extra=extra,
    )


def provisioning(document: bytes) -> dict[str | None, str | None]:
    """The properties of an in-band provisioning document, by name."""
    root = ET.fromstring(document)  # noqa: S314 - our own service's answer in a test
    return {p.get("name"): p.text for p in root.iter("property")}


def diagnostics(result: CurlResult) -> str:
    """X-Ms-Diagnostics of the last response curl saw (after any NTLM legs)."""
    found = ""
    for line in result.output.splitlines():
        if line.lower().startswith("x-ms-diagnostics:"):
            found = line.split(":", 1)[1].strip()
    return found


async def test_curl_ntlm_through_the_edge(pool: ServicePool, pki: LabPKI) -> None:
    body = check_body(user="alice@contoso.test")
    served = await curl_edge(
        pool, pki, EXT_CHECK, "--ntlm", "-u", "CONTOSO\\alice:Passw0rd!", data=body
    )
    assert served.returncode == 0, served.stderr
    assert served.status == 200
    assert 'downloads="2"' in served.output

    anonymous = await curl_edge(pool, pki, EXT_CHECK, data=body)
    assert anonymous.status == 401
    assert "WWW-Authenticate: NTLM" in anonymous.output
    assert diagnostics(anonymous).startswith("40101;reason=")

    wrong = await curl_edge(pool, pki, EXT_CHECK, "--ntlm", "-u", "CONTOSO\\alice:nope", data=body)
    assert wrong.status == 401
    assert diagnostics(wrong).startswith("40102;reason=")
    # A fresh challenge, so the client may start over on this connection.
    assert wrong.output.rstrip().count("WWW-Authenticate: NTLM") == 2

    unknown = await curl_edge(pool, pki, EXT_CHECK, "--ntlm", "-u", "CONTOSO\\eve:x", data=body)
    assert unknown.status == 401


async def test_check_from_outside_without_a_signed_in_user_is_forbidden(
    pool: ServicePool, pki: LabPKI
) -> None:
    result = await curl_edge(pool, pki, EXT_CHECK, data=check_body(user=None))
    assert result.status == 403
    assert diagnostics(result).startswith("40301;reason=")
    assert "signed-in user" in result.output


async def test_lockout_after_failures_refuses_even_the_right_password(
    pool: ServicePool, pki: LabPKI, phones: Phones
) -> None:
    locked: list[Event] = []
    unsubscribe = pool.events.subscribe(
        lambda e: locked.append(e) if e.kind == "service.account_locked" else None
    )
    body = check_body(user="bob@contoso.test")
    try:
        statuses = []
        for _ in range(pool.directory.lockout.threshold):
            conn = await phones.outside()
            response = await ntlm_request(
                conn, "POST", EXT_CHECK, "CONTOSO\\bob", "Winter2025!", body=body
            )
            statuses.append(response.status)
        # The failure that reaches the threshold already reports the lockout.
        assert statuses == [401, 401, 403]
        right = await curl_edge(
            pool, pki, EXT_CHECK, "--ntlm", "-u", "CONTOSO\\bob:Summer2026!", data=body
        )
    finally:
        unsubscribe()
    assert right.status == 403
    assert diagnostics(right).startswith("40302;reason=")
    assert "locked out" in right.output
    assert locked
    # Other accounts are not affected.
    conn = await phones.outside()
    alice = await ntlm_request(conn, "POST", EXT_CHECK, "CONTOSO\\alice", "Passw0rd!", body=body)
    assert alice.status == 200


async def test_ntlm_authenticates_the_connection_not_the_request(phones: Phones) -> None:
    conn = await phones.outside()
    body = check_body(user="alice@contoso.test")
    first = await ntlm_request(
        conn, "POST", EXT_CHECK, "alice@contoso.test", "Passw0rd!", body=body
    )
    assert first.status == 200
    again = await conn.request("POST", EXT_CHECK, body=body)
    assert again.status == 200
    nbt = APPROVED_IMAGES[1]
    download = await conn.request("GET", f"/DeviceUpdateFiles_Ext/{nbt.relative}")
    assert download.status == 200
    assert download.body == nbt.data

    other = await phones.outside()
    anonymous = await other.request("GET", f"/DeviceUpdateFiles_Ext/{nbt.relative}")
    assert anonymous.status == 401


async def test_sign_in_gives_in_band_provisioning_inside_and_outside(
    pool: ServicePool, pki: LabPKI, phones: Phones
) -> None:
    port = pool.https_port
    outside = await curl_edge(
        pool, pki, SIGNIN, "--ntlm", "-u", "CONTOSO\\bob:Summer2026!", data=b""
    )
    assert outside.status == 200, outside.output
    document = outside.output.split("\r\n\r\n")[-1].encode()
    assert provisioning(document) == {
        "updatesServerInternalUrl": f"https://pool01.contoso.test:{port}/RequestHandler/ucdevice.upx",
        "updatesServerExternalUrl": f"https://webext.contoso.test:{port}/RequestHandlerExt/ucdevice.upx",
        "EnableDeviceUpdate": "true",
        "deviceUpdateCheckInterval": "86400",
        "userUri": "bob@contoso.test",
    }

    inside = await phones.inside(source=INSIDE_PHONE)
    anonymous = await inside.request("POST", SIGNIN)
    assert anonymous.status == 401
    signed = await ntlm_request(inside, "POST", SIGNIN, "CONTOSO\\alice", "Passw0rd!")
    assert signed.status == 200
    assert b"alice@contoso.test" in signed.body


async def test_sign_in_gives_the_urls_of_the_users_home_pool_wherever_it_is_made(
    pool: ServicePool, phones: Phones
) -> None:
    port = pool.https_port

    def internal(pool_fqdn: str) -> str:
        return f"https://{pool_fqdn}:{port}/RequestHandler/ucdevice.upx"

    external = f"https://webext.contoso.test:{port}/RequestHandlerExt/ucdevice.upx"
    # Whichever front end the phone reached, of its user's pool or another.
    for server in ("fe01", "se01"):
        conn = await phones.inside(server)
        carol = await ntlm_request(conn, "POST", SIGNIN, *CAROL)
        assert carol.status == 200
        assert carol.header("x-ms-server-fqdn") == f"{server}.contoso.test"
        # se01 is published by no edge: no external URL at all, not the edge's.
        assert provisioning(carol.body) == {
            "updatesServerInternalUrl": internal("se01.contoso.test"),
            "EnableDeviceUpdate": "true",
            "deviceUpdateCheckInterval": "86400",
            "userUri": "carol@contoso.test",
        }
        assert b"updatesServerExternalUrl" not in carol.body

        conn = await phones.inside(server)
        alice = await ntlm_request(conn, "POST", SIGNIN, "CONTOSO\\alice", "Passw0rd!")
        assert alice.status == 200
        assert provisioning(alice.body) == {
            "updatesServerInternalUrl": internal("pool01.contoso.test"),
            "updatesServerExternalUrl": external,
            "EnableDeviceUpdate": "true",
            "deviceUpdateCheckInterval": "86400",
            "userUri": "alice@contoso.test",
        }

    # Through the edge too (to a front end of pool01), carol is sent to her own pool.
    outside = await phones.outside()
    carol = await ntlm_request(outside, "POST", SIGNIN, *CAROL)
    assert carol.status == 200
    assert provisioning(carol.body)["updatesServerInternalUrl"] == internal("se01.contoso.test")
    assert "updatesServerExternalUrl" not in provisioning(carol.body)


async def test_internal_paths_are_refused_through_the_edge(phones: Phones) -> None:
    conn = await phones.outside()
    nbt = APPROVED_IMAGES[1]
    response = await ntlm_request(
        conn, "GET", f"/DeviceUpdateFiles_Int/{nbt.relative}", "CONTOSO\\alice", "Passw0rd!"
    )
    assert response.status == 403
    assert (response.header("x-ms-diagnostics") or "").startswith("40303;")


async def test_edge_spreads_new_connections_round_robin(pool: ServicePool, phones: Phones) -> None:
    served_by: list[str] = []
    for _ in range(4):
        conn = await phones.outside()
        response = await ntlm_request(conn, "POST", SIGNIN, "CONTOSO\\alice", "Passw0rd!")
        assert response.status == 200
        served_by.append(response.header("x-ms-server-fqdn") or "")
        await conn.close()
    # Over the front ends of the pool it publishes (pool01), never se01.
    assert sorted(served_by) == ["fe01.contoso.test"] * 2 + ["fe02.contoso.test"] * 2
    assert served_by[0] != served_by[1]
    assert served_by[0] == served_by[2]
    assert pool.edge is not None
    assert sum(pool.edge.forwarded_to.values()) == 4

    # The front end sees the edge as its peer, as behind a real reverse proxy.
    kept = await phones.outside()
    assert (await ntlm_request(kept, "POST", SIGNIN, "CONTOSO\\alice", "Passw0rd!")).status == 200
    peers = {
        conn.peer
        for server in pool.servers.values()
        for conn in (server.external.connections if server.external else ())
    }
    assert peers == {str(pool.config.edge.address)}
