"""Live updates without a browser: the relay's coalescing on fake time, and a console on a
real lab in this process, from an action through the lab's events to the page's stream."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from lab.console.app import Console
from lab.console.labapi import LabAPI
from lab.console.live import LAB_PANELS, PHONES_MAX, Relay, panels_of
from lab.ops.harness import RunningLab


def test_each_kind_of_event_names_the_panels_it_changes() -> None:
    assert panels_of("firewall.changed") == ("network", "firewall", "wall", "phone")
    assert panels_of("maintenance.drained") == ("network", "servers")
    assert panels_of("store.changed") == ("rules", "testdevices", "devconfig")
    # A download's progress redraws the cards, not the diagram.
    assert panels_of("phone.progress") == ("wall", "phone")
    assert panels_of("phone.changed") == ("network", "wall", "phone")
    assert panels_of("lab.started") == LAB_PANELS
    assert panels_of("inventory.flushed") == ()


@pytest.mark.looptime
async def test_a_burst_is_announced_at_once_then_at_most_once_an_interval() -> None:
    # The relay is not started: nothing here reaches for the lab.
    relay = Relay(LabAPI("http://127.0.0.1:9", "unused"), interval=0.25)
    loop = asyncio.get_running_loop()
    with relay.listen() as listener:
        start = loop.time()
        relay.mark(["wall"], ["00-04-F2-00-00-01"])
        assert await listener.next() == {"panels": ["wall"], "phones": ["00-04-F2-00-00-01"]}
        assert loop.time() == start

        # A thousand phones changing: one announcement, an interval after the first.
        for n in range(1000):
            relay.mark(["wall", "network"], [f"00-04-F2-00-{n // 256:02X}-{n % 256:02X}"])
        assert await listener.next() == {"panels": ["network", "wall"], "phones": ["*"]}
        assert loop.time() == start + 0.25

        # A few phones: named; and a quiet relay announces the next change at once again.
        relay.mark(["phone"], ["00-04-F2-00-00-02"] * PHONES_MAX)
        assert await listener.next() == {"panels": ["phone"], "phones": ["00-04-F2-00-00-02"]}
        assert loop.time() == start + 0.5
        await asyncio.sleep(1)
        relay.mark(["dns"])
        assert await listener.next() == {"panels": ["dns"], "phones": []}
        assert loop.time() == start + 1.5
    await relay.stop()


@pytest.fixture
async def console(device_lab: RunningLab) -> AsyncIterator[Console]:
    """A console on the test's lab, on a free port."""
    async with Console(LabAPI.for_lab(device_lab.lab), device_lab.config, port=0) as running:
        yield running


async def test_an_action_reaches_the_lab_and_comes_back_as_a_panel_change(
    console: Console,
) -> None:
    jar = aiohttp.CookieJar(unsafe=True)  # cookies of 127.0.0.1, as a browser keeps them
    async with aiohttp.ClientSession(cookie_jar=jar) as client:
        async with client.get(console.login_url()) as page:
            assert page.status == 200
            html = await page.text()
        found = re.search(r'name="csrf-token" content="([^"]+)"', html)
        assert found is not None
        async with client.get(console.url + "events") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            assert await _event(stream) == (
                "hello",
                {"panels": [], "phones": [], "connected": True},
            )
            async with client.post(
                console.url + "actions/firewall-move",
                data={"target": "127.10.1.7", "zone": "outside"},
                headers={
                    "X-CSRF-Token": found[1],
                    "Origin": console.guard.origin,
                    "Accept": "application/json",
                },
            ) as answer:
                assert await answer.json() == {"message": "127.10.1.7 is now outside the firewall"}
            kind, data = await _event(stream)
            assert kind == "changed"
            assert {"network", "firewall"} <= set(data["panels"])
        async with client.get(console.url + "panels/firewall") as panel:
            assert "127.10.1.7/32" in await panel.text()


async def _event(stream: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    """The next server-sent event's name and data (comments and retry lines skipped)."""
    kind = ""
    while True:
        line = (await asyncio.wait_for(stream.content.readline(), 10)).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: ") and kind:
            return kind, json.loads(line.removeprefix("data: "))
