"""``GET /metrics``: the lab's figures for Prometheus follow what its phones did.

Phones update on a real lab (the plugin's fixtures, on fake time); the text the admin API
serves is read back with prometheus_client's own parser, so a figure that the format
cannot carry, or a name that changed, fails here.
"""

from __future__ import annotations

import aiohttp
import pytest
from labprocess import samples

from emulator.states import PhoneState
from lab.admintoken import read_token
from lab.ops.harness import ALICE, FACTORY, NEW, T0, Phones, RunningLab, idle_on

POOL = 'pool="pool01.contoso.test"'


async def scrape(device_lab: RunningLab, token: str | None = None) -> tuple[int, str, str]:
    host, port = device_lab.lab.admin_address
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{host}:{port}/metrics", headers=headers) as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


def total(metrics: dict[str, float], prefix: str, *labels: str) -> float:
    """The sum of the samples named ``prefix`` whose labels include every one of ``labels``."""
    return sum(
        value
        for key, value in metrics.items()
        if key.split("{")[0] == prefix and all(label in key for label in labels)
    )


@pytest.mark.looptime
async def test_checks_downloads_signins_dns_and_the_inventory_are_counted(
    device_lab: RunningLab, phones: Phones
) -> None:
    device_lab.publish("CX600", NEW)
    inside = phones.phone("CX600", index=1)
    outside = phones.phone("CX600", index=2, inside=False)
    # Alice signs in as soon as the phone is up, before its first check.
    outside.sign_in(ALICE)
    for phone in (inside, outside):
        phone.power_on()
    for phone in (inside, outside):
        await phone.wait_for(idle_on(NEW), until=T0 + 7200)
    await device_lab.lab.pool.inventory.flush()  # type: ignore[union-attr]

    status, kind, text = await scrape(device_lab, read_token(device_lab.state_dir))
    assert status == 200
    assert kind.startswith("text/plain; version=")
    metrics = samples(text)

    # Each phone was offered the approved version once, inside and through the edge.
    offered = "lab_update_checks_total"
    assert total(metrics, offered, POOL, 'site="internal"', 'decision="approved"') == 1
    assert total(metrics, offered, POOL, 'site="external"', 'decision="approved"') == 1
    # Outside, every new connection's first request is NTLM's challenge.
    assert total(metrics, offered, 'site="external"', 'decision="challenged"') >= 1
    # The outside phone's check at boot went out before alice's sign-in was through:
    # refused (403, no signed-in user), as the audit log has it.
    refused = [r for r in device_lab.audit if r.status == 403]
    assert [(r.mac, r.path) for r in refused] == [
        (outside.phone.identity.mac, "/RequestHandler/ucdevice.upx")
    ]
    assert total(metrics, offered, 'decision="refused"') == 1
    # The catalog and the image, whole, for each; every byte counted.
    assert total(metrics, "lab_downloads_total", 'kind="whole"') == 4
    assert total(metrics, "lab_downloads_total", 'kind="resumed"') == 0
    size = device_lab.stored_bytes("CX600", NEW)
    assert total(metrics, "lab_download_bytes_total") == 2 * size
    assert total(metrics, "lab_transfers_total", 'result="done"') == 4
    assert total(metrics, "lab_transfers_in_progress") == 0
    assert metrics['lab_ntlm_signins_total{outcome="success"}'] >= 1
    assert metrics['lab_ntlm_signins_total{outcome="failure"}'] == 0
    assert total(metrics, "lab_dns_queries_total", 'view="internal"', 'rcode="NOERROR"') >= 1
    assert total(metrics, "lab_dns_queries_total", 'view="external"', 'rcode="NOERROR"') >= 1
    assert total(metrics, "lab_http_responses_total", 'status="403"') == 1
    assert total(metrics, "lab_http_responses_total") == len(device_lab.audit)
    # The inventory: both phones last checked from the new version, their rule's approved.
    assert metrics[f'lab_phones{{model="CX600",{POOL},state="approved",version="{NEW}"}}'] == 2
    assert f'version="{FACTORY}"' not in "".join(k for k in metrics if k.startswith("lab_phones"))
    assert total(metrics, "lab_phones_out_of_support_window") == 0
    for front_end in ("fe01", "fe02", "se01"):
        key = f'front_end="{front_end}"'
        assert total(metrics, "lab_front_end_mode", key, 'mode="production"') == 1
        assert total(metrics, "lab_front_end_mode", key, 'mode="maintenance"') == 0
    assert inside.phone.state is PhoneState.IDLE


@pytest.mark.looptime
async def test_maintenance_shows_in_the_mode_and_metrics_need_the_token(
    device_lab: RunningLab,
) -> None:
    status, _, _ = await scrape(device_lab)
    assert status == 401
    status, _, _ = await scrape(device_lab, "not-the-token")
    assert status == 401

    device_lab.lab.pool.enter_maintenance("fe02")
    _, _, text = await scrape(device_lab, read_token(device_lab.state_dir))
    metrics = samples(text)
    fe02 = 'front_end="fe02"'
    assert total(metrics, "lab_front_end_mode", fe02, 'mode="maintenance"') == 1
    assert total(metrics, "lab_front_end_mode", fe02, 'mode="production"') == 0
    # Nothing was asked yet: every counter is there, at zero, but none made up.
    assert total(metrics, "lab_update_checks_total") == 0
    assert metrics["lab_dns_malformed_total"] == 0
