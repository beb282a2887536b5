"""The admin API of a running lab: token guard, firewall and DNS faults at runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from lab.admintoken import TOKEN_FILE, read_token
from lab.net.config import LabConfig
from lab.net.dnsprobe import query
from lab.ops.runner import Lab
from lab.service.audit import read_audit
from lab.store.store import Store

INSIDE_PHONE = "127.10.0.150"
OTHER_INSIDE_PHONE = "127.10.0.151"


@pytest.fixture
async def lab(lab_config: LabConfig, tmp_path: Path) -> AsyncIterator[Lab]:
    async with Lab(lab_config, tmp_path / "state") as running:
        yield running


@pytest.fixture
async def admin(lab: Lab) -> AsyncIterator[aiohttp.ClientSession]:
    host, port = lab.admin_address
    token = read_token(lab.state_dir)
    async with aiohttp.ClientSession(
        f"http://{host}:{port}", headers={"Authorization": f"Bearer {token}"}
    ) as session:
        yield session


async def _addresses(lab: Lab, source: str) -> set[str]:
    answer = await query(lab.config.ucupdates_names[0], lab.dns.address, source)
    return {str(rr.rdata) for rr in answer.rr}


async def test_token_is_private_and_required(lab: Lab) -> None:
    assert (lab.state_dir / TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    host, port = lab.admin_address
    async with aiohttp.ClientSession(f"http://{host}:{port}") as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with anonymous.get("/v1/status", headers=headers) as response:
                assert response.status == 401
                assert "admin token" in (await response.json())["error"]


async def test_firewall_change_moves_a_phone_to_the_external_view(
    lab: Lab, admin: aiohttp.ClientSession
) -> None:
    assert await _addresses(lab, INSIDE_PHONE) == {"127.10.0.11", "127.10.0.12"}
    async with admin.post(
        "/v1/firewall", json={"action": "set", "target": INSIDE_PHONE, "zone": "outside"}
    ) as response:
        assert response.status == 200
        assert (await response.json())["overrides"] == [
            {"network": f"{INSIDE_PHONE}/32", "zone": "outside"}
        ]
    assert await _addresses(lab, INSIDE_PHONE) == {"127.20.0.10"}
    async with admin.post("/v1/firewall", json={"action": "reset"}) as response:
        assert response.status == 200
    assert await _addresses(lab, INSIDE_PHONE) == {"127.10.0.11", "127.10.0.12"}


async def test_dns_fault_through_the_api(lab: Lab, admin: aiohttp.ClientSession) -> None:
    name = lab.config.ucupdates_names[0]
    async with admin.post("/v1/dns/faults", json={"name": name, "kind": "remove"}) as response:
        assert response.status == 200
    answer = await query(name, lab.dns.address, INSIDE_PHONE)
    assert answer.header.rcode == 3  # NXDOMAIN
    async with admin.delete(f"/v1/dns/faults/{name}") as response:
        assert response.status == 200
    assert await _addresses(lab, INSIDE_PHONE) == {"127.10.0.11", "127.10.0.12"}


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/v1/firewall",
            {"action": "set", "target": "300.1.1.1", "zone": "outside"},
            "is not an IP address",
        ),
        ("/v1/firewall", {"action": "explode"}, "unknown firewall action"),
        ("/v1/firewall", ["not", "an", "object"], "must be a JSON object"),
        ("/v1/dns/faults", {"name": "ucupdates-r2.contoso.test", "kind": "melt"}, "melt"),
        ("/v1/dns/faults", {"name": "www.example.org", "kind": "drop"}, "www.example.org"),
    ],
)
async def test_bad_requests_get_400_with_the_reason(
    admin: aiohttp.ClientSession, path: str, body: object, message: str
) -> None:
    async with admin.post(path, json=body) as response:
        assert response.status == 400
        assert message in (await response.json())["error"]


async def test_maintenance_through_the_api_and_the_last_server_needs_force(
    lab: Lab, admin: aiohttp.ClientSession
) -> None:
    async with admin.post("/v1/maintenance/fe01/enter", json={}) as response:
        assert response.status == 200
        servers = (await response.json())["pool"]["servers"]
    assert servers["fe01"]["mode"] == "maintenance"  # nothing in progress: drained at once
    assert servers["fe02"]["mode"] == "production"
    assert servers["se01"]["mode"] == "production"  # another pool
    async with admin.post("/v1/maintenance/fe02/enter", json={}) as response:
        assert response.status == 409
        error = (await response.json())["error"]
        assert "fe02 is the last server in production in pool pool01.contoso.test" in error
    async with admin.post("/v1/maintenance/fe02/enter", json={"force": True}) as response:
        assert response.status == 200
    async with admin.post("/v1/maintenance/fe01/exit", json={}) as response:
        assert response.status == 200
        assert (await response.json())["pool"]["servers"]["fe01"]["mode"] == "production"
    async with admin.post("/v1/maintenance/fe09/enter", json={}) as response:
        assert response.status == 409
        assert "no front end 'fe09'" in (await response.json())["error"]


CHECK = """<DeviceUpdateRequest><DeviceType>UCPhone</DeviceType><Vendor>Polycom</Vendor>
<Model>CX600</Model><Revision>A</Revision><Locale>ENU</Locale>
<MacAddress>00-04-F2-00-00-07</MacAddress><SerialNumber>CX6A000007</SerialNumber>
<Modules><Module name="CPE.nbt" version="4.0.7577.4366"/></Modules></DeviceUpdateRequest>"""


async def _check_from(lab: Lab, source: str, times: int) -> None:
    fe = lab.config.front_ends[0]
    connector = aiohttp.TCPConnector(ssl=lab.pki.client_context(), local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as phone:
        for _ in range(times):
            async with phone.post(
                f"https://{fe.address}:{lab.pool.https_port}/RequestHandler/ucdevice.upx",
                data=CHECK,
                headers={"Content-Type": "text/xml"},
                server_hostname=lab.config.ucupdates_names[0],
            ) as response:
                assert response.status == 200
                assert 'downloads="0"' in await response.text()


async def test_every_check_leaves_one_audit_line_in_its_servers_log(lab: Lab) -> None:
    # Repeated checks are written through the log's repeat: each still gets a whole line,
    # and a line that differs in more than its time (another address) is written in full.
    await _check_from(lab, INSIDE_PHONE, 3)
    await _check_from(lab, OTHER_INSIDE_PHONE, 1)
    await _check_from(lab, INSIDE_PHONE, 1)
    fe = lab.config.front_ends[0]
    logs = list((lab.state_dir / "servers" / fe.name / "AuditLogs").iterdir())
    assert len(logs) == 1
    rows = read_audit(logs[0])
    assert [row["client_address"] for row in rows] == [INSIDE_PHONE] * 3 + [
        OTHER_INSIDE_PHONE,
        INSIDE_PHONE,
    ]
    assert {row["mac"] for row in rows} == {"00-04-F2-00-00-07"}
    assert {row["status"] for row in rows} == {"200"}
    assert all(row["reason"] and row["installed_modules"] for row in rows)
    same = [{k: v for k, v in row.items() if k not in ("time", "client_address")} for row in rows]
    assert all(fields == same[0] for fields in same)
    assert [row["time"] for row in rows] == sorted(row["time"] for row in rows)
    assert not (lab.state_dir / "servers" / "fe02" / "AuditLogs").exists()


async def test_the_inventory_is_written_on_demand(lab: Lab, admin: aiohttp.ClientSession) -> None:
    # `lab phones` asks for this first: every check answered so far is then in the store,
    # not only those of the last batch (the inventory writes every half-second).
    await _check_from(lab, INSIDE_PHONE, 1)
    async with admin.post("/v1/inventory/flush") as response:
        assert response.status == 200
        written = (await response.json())["phones"]
    assert written in (0, 1)  # 0 when the half-second batch came first
    with Store.open(lab.state_dir) as store:
        assert [p.mac for p in store.phones()] == ["00-04-F2-00-00-07"]
    async with admin.post("/v1/inventory/flush") as response:
        assert (await response.json()) == {"phones": 0}  # nothing new since
