"""The phone wall: phones hosted in a running lab, acted on as a person at the phone would.

In-process tests on the plugin's ``device_lab`` under fake time (looptime): the wall's phones
live on the lab's clock, talk to its DNS and front ends over loopback, and really update.
The admin API's routes are tested over HTTP on the real clock, with phones that are never
waited for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from emulator import LogCode, PhoneState
from emulator.models import get_model
from lab.admintoken import read_token
from lab.events import Event
from lab.ops.harness import FACTORY, IDLE_WAIT, NEW, T0, RunningLab, entered, idle_on, logged
from lab.ops.wall import MAX_PHONES, POWER_BACK_AFTER, PhoneWall, UnknownPhoneError, WallError
from lab.service.audit import audit_time

S = PhoneState
CX600 = get_model("CX600")
WALL_KINDS = ("phone.added", "phone.changed", "phone.progress", "phone.removed")


def mac(index: int, model: str = "CX600") -> str:
    return get_model(model).mac(index)


def wall_events(lab: RunningLab) -> list[Event]:
    """The wall's events from now on."""
    seen: list[Event] = []
    lab.lab.events.subscribe(seen.append, kinds=WALL_KINDS)
    return seen


def collapsed(values: list[Any]) -> list[Any]:
    """``values`` with runs of one value told once."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


@pytest.mark.looptime
async def test_phones_added_to_the_wall_update_end_to_end_and_the_wall_tells_it(
    device_lab: RunningLab,
) -> None:
    wall = device_lab.lab.wall
    events = wall_events(device_lab)
    device_lab.publish("CX600", NEW)

    added = await wall.add("CX600", count=3, plug_in=True)
    assert added["added"] == [mac(1), mac(2), mac(3)]
    assert added["message"] == (
        "3 CX600 phones added inside at 127.10.1.1 to 127.10.1.3, plugged in: each boots "
        "and checks for updates"
    )
    for each in added["added"]:
        await wall.driver(each).wait_for(idle_on(NEW), until=T0 + 3600)

    snapshot = wall.snapshot()
    assert (snapshot["count"], snapshot["limit"]) == (3, MAX_PHONES)
    assert snapshot["aggregates"] == {
        "by_state": {"idle": 3},
        "by_version": {NEW: 3},
        "by_model": {"CX600": 3},
        "by_location": {"inside": 3},
        "by_zone": {"inside": 3},
    }
    first = snapshot["phones"][0]
    assert {k: first[k] for k in first if k != "last_log"} == {
        "label": "CX600 #1",
        "model": "CX600",
        "vendor": "Polycom",
        "mac": mac(1),
        "serial": CX600.serial(1),
        "address": "127.10.1.1",
        "location": "inside",
        "zone": "inside",
        "user": None,
        "state": "idle",
        "state_text": "idle",
        "version": NEW,
        "backup_version": FACTORY,
        "pending_version": None,
        "calls": 0,
        "progress": None,
        "error": None,
    }
    assert first["last_log"]["code"] == LogCode.UP_TO_DATE.value
    assert [c["address"] for c in snapshot["phones"]] == ["127.10.1.1", "127.10.1.2", "127.10.1.3"]

    # Each phone was told once when added, then once per change of its card: the states
    # it went through, in order, as its own timeline has them.
    assert [e.data["mac"] for e in events if e.kind == "phone.added"] == added["added"]
    for each in added["added"]:
        told = [e.data for e in events if e.kind == "phone.changed" and e.data["mac"] == each]
        faces = [tuple(t.values()) for t in told]
        assert faces == collapsed(faces)
        timeline = [c.state.name.lower() for c in wall.driver(each).timeline]
        assert collapsed([t["state"] for t in told]) == collapsed(timeline)
        assert told[-1]["state"] == "idle"
        assert told[-1]["version"] == NEW
        # Downloads were told as they grew, the last bytes always.
        progress = [e.data for e in events if e.kind == "phone.progress" and e.data["mac"] == each]
        assert progress
        assert progress[-1]["done"] == progress[-1]["total"] > 0

    # A phone's detail: its screen, its log, and the audit lines the front ends wrote for it.
    detail = await wall.detail(mac(2).replace("-", "").lower())
    assert detail["phone"]["mac"] == mac(2)
    assert f"Current version: {NEW}\n" in detail["system_information"]
    assert f"Backup version:  {FACTORY}\n" in detail["system_information"]
    driver = wall.driver(mac(2))
    assert [line["line"] for line in detail["log"]] == [e.render() for e in driver.phone.log]
    assert detail["log_text"] == driver.phone.log.render()
    audit = detail["audit"]
    assert {line["mac"] for line in audit} == {mac(2)}
    assert {line["client_address"] for line in audit} == {"127.10.1.2"}
    assert [line["time"] for line in audit] == sorted(line["time"] for line in audit)
    # Its two checks (at power-on, and after the restart), on the lab's one clock: each
    # audit line carries the time of the check in the phone's log.
    assert [(line["path"], line["served_from"]) for line in audit] == [
        ("/RequestHandler/ucdevice.upx", "approved"),
        ("/RequestHandler/ucdevice.upx", ""),
    ]
    checks = logged(driver, LogCode.CHECKING)
    assert [line["time"] for line in audit] == [
        audit_time(driver.clock.datetime(t)) for t in checks
    ]


@pytest.mark.looptime
async def test_a_call_holds_the_restart_until_it_ends(device_lab: RunningLab) -> None:
    wall = device_lab.lab.wall
    device_lab.publish("CX600", NEW)
    (phone,) = (await wall.add("CX600", plug_in=True))["added"]
    driver = wall.driver(phone)
    staged = await driver.wait_for(lambda d: d.phone.state is S.AWAITING_REBOOT, until=T0 + 3600)

    started = wall.act(phone, "call-start")
    assert started["message"] == (
        f"call started on CX600 #1: the restart into {NEW} waits until the call ends"
    )
    assert (started["phone"]["calls"], started["phone"]["pending_version"]) == (1, NEW)

    # Long past the five quiet minutes, the call still holds the restart.
    await driver.wait_until(staged + 3 * IDLE_WAIT)
    assert (driver.phone.state, driver.phone.current_version) == (S.AWAITING_REBOOT, FACTORY)

    ended_at = driver.clock.now()
    ended = wall.act(phone, "call-end")
    assert ended["message"] == (
        f"call ended on CX600 #1: it restarts into {NEW} after 5 min without a call or use"
    )
    await driver.wait_for(idle_on(NEW), until=ended_at + 3600)
    assert entered(driver, S.BOOTING, after=staged) == [ended_at + IDLE_WAIT]


@pytest.mark.looptime
async def test_sign_in_shows_the_user_and_sign_out_takes_the_credentials_away(
    device_lab: RunningLab,
) -> None:
    wall = device_lab.lab.wall
    # Outside the firewall, through the edge: checks need a signed-in user.
    added = await wall.add("CX600", location="outside", user="bob", plug_in=True)
    assert added["message"] == (
        "1 CX600 phone added outside at 127.20.1.1, plugged in: it boots and checks for "
        "updates; bob@contoso.test signs in on it once it is up"
    )
    (phone,) = added["added"]
    driver = wall.driver(phone)
    await driver.wait_for(
        lambda d: d.phone.signed_in_user is not None and d.phone.state is S.IDLE,
        until=T0 + 3600,
    )
    card = wall.snapshot()["phones"][0]
    assert (card["user"], card["location"], card["zone"]) == (
        "bob@contoso.test",
        "outside",
        "outside",
    )
    detail = await wall.detail(phone)
    assert "Signed-in user:  bob@contoso.test\n" in detail["system_information"]

    signed_out = wall.act(phone, "sign-out")
    assert signed_out["message"].startswith("bob@contoso.test signed out of CX600 #1")
    assert signed_out["phone"]["user"] is None
    assert logged(driver, LogCode.SIGNED_OUT, user="bob@contoso.test")
    with pytest.raises(WallError, match="no user is signed in on CX600 #1"):
        wall.act(phone, "sign-out")

    # New firmware, and the phone restarted: with nobody signed in, the edge's front end
    # turns its check away, and it keeps its version.
    device_lab.publish("CX600", NEW)
    wall.act(phone, "unplug")
    replugged = driver.clock.now()
    wall.act(phone, "plug-in")
    await driver.wait_for(lambda d: d.phone.state is S.IDLE, until=replugged + 3600)
    assert logged(driver, LogCode.DENIED)[-1] > replugged
    assert driver.phone.current_version == FACTORY

    # Signed in again, it checks at sign-in with the user's credentials and updates.
    signed_in = wall.act(phone, "sign-in", user="bob@contoso.test")
    assert signed_in["message"] == (
        "bob@contoso.test signing in on CX600 #1: the user's home pool gives it its update URLs"
    )
    await driver.wait_for(idle_on(NEW), until=replugged + 7200)
    assert wall.snapshot()["phones"][0]["user"] == "bob@contoso.test"


@pytest.mark.looptime
async def test_a_power_cut_while_installing_damages_the_new_image_and_the_phone_recovers(
    device_lab: RunningLab,
) -> None:
    wall = device_lab.lab.wall
    device_lab.publish("CX600", NEW)
    (phone,) = (await wall.add("CX600", plug_in=True))["added"]
    driver = wall.driver(phone)
    await driver.wait_for(lambda d: d.phone.state is S.FLASHING, until=T0 + 3600)

    cut = driver.clock.now()
    result = wall.act(phone, "power-cut")
    assert result["while_installing"] is True
    assert result["message"] == (
        "power cut on CX600 #1 while installing: the image slot being written is left "
        f"damaged; power is back in 1 min, the phone boots {FACTORY} again and fetches the "
        "update anew at its power-on check"
    )
    assert result["phone"]["state"] == "off"
    assert logged(driver, LogCode.POWER_CUT_INSTALLING, version=NEW) == [cut]

    await driver.wait_for(idle_on(NEW), until=cut + 3600)
    assert entered(driver, S.BOOTING, after=cut)[0] == cut + POWER_BACK_AFTER
    assert len(logged(driver, LogCode.DOWNLOADED, module="CPE.nbt")) == 2

    # Not installing: a power cut is only a restart, and the wall says so.
    again = wall.act(phone, "power-cut")
    assert again["while_installing"] is False
    assert "while idle, not installing: nothing is damaged, it is a restart" in again["message"]
    await driver.wait_for(idle_on(NEW), until=driver.clock.now() + 3600)


@pytest.mark.looptime
async def test_the_wall_refuses_bad_input_and_what_a_phone_cannot_do_and_changes_nothing(
    device_lab: RunningLab,
) -> None:
    wall = device_lab.lab.wall
    events = wall_events(device_lab)
    refused: list[tuple[dict[str, Any], str]] = [
        ({"model": "CX999"}, "unknown phone model 'CX999'; known models: CX500, CX600"),
        ({"model": "CX600", "user": "mallory"}, "no directory user 'mallory' .*alice, bob"),
        ({"model": "CX600", "location": "dmz"}, "location must be inside or outside, not 'dmz'"),
        ({"model": "CX600", "count": 0}, "count must be a whole number from 1 to 2,000, not 0"),
        ({"model": "CX600", "count": 2001}, "not 2001"),
        ({"model": "CX600", "count": True}, "not True"),
    ]
    for bad, message in refused:
        with pytest.raises(ValueError, match=message):
            await wall.add(**bad)
    assert len(wall) == 0

    (phone,) = (await wall.add("CX600"))["added"]
    for action, message in [
        ("unplug", "CX600 #1 is already unplugged"),
        ("call-start", "CX600 #1 is off: a call needs a running phone"),
        ("call-end", "no call is in progress on CX600 #1"),
        ("sign-out", "CX600 #1 is unplugged: plug it in to sign out"),
        ("power-cut", "CX600 #1 is unplugged: there is no power to cut"),
    ]:
        with pytest.raises(WallError, match=message):
            wall.act(phone, action)
    with pytest.raises(ValueError, match="no phone action 'dance'"):
        wall.act(phone, "dance")
    with pytest.raises(ValueError, match="name the user to sign in"):
        wall.act(phone, "sign-in")
    with pytest.raises(ValueError, match="'00-04-F2' is not a MAC address"):
        wall.act("00-04-F2", "plug-in")
    with pytest.raises(UnknownPhoneError, match="no phone 00-04-F2-00-00-09 on the wall"):
        wall.act("00:04:f2:00:00:09", "plug-in")
    wall.act(phone, "plug-in")
    with pytest.raises(WallError, match=r"CX600 #1 is already plugged in \(booting\)"):
        wall.act(phone, "plug-in")
    with pytest.raises(WallError, match="booting: sign out once it is up"):
        wall.act(phone, "sign-out")
    assert [e.kind for e in events] == ["phone.added", "phone.changed"]  # the plug-in only

    # The wall holds MAX_PHONES: room is refused beyond, with what there is room for.
    await wall.add("HP4120", count=MAX_PHONES - 1, location="outside")
    with pytest.raises(WallError, match="at most 2,000 phones and has 2,000: room for 0 more"):
        await wall.add("CX600")
    page = wall.snapshot(offset=MAX_PHONES - 5, limit=10)
    assert page["count"] == MAX_PHONES
    assert page["aggregates"]["by_location"] == {"inside": 1, "outside": MAX_PHONES - 1}
    assert [c["address"] for c in page["phones"]] == [
        f"127.20.{(256 + n) // 256}.{(256 + n) % 256}" for n in range(1995, 2000)
    ]
    for offset, limit, message in [(-1, 10, "offset must be"), (0, 0, "limit must be")]:
        with pytest.raises(ValueError, match=message):
            wall.snapshot(offset, limit)


@pytest.mark.looptime
async def test_a_removed_phone_leaves_its_place_and_identity_to_the_next(
    device_lab: RunningLab,
) -> None:
    wall = device_lab.lab.wall
    events = wall_events(device_lab)
    first, second = (await wall.add("CX600", count=2, plug_in=True))["added"]
    removed = await wall.remove(first.lower())
    assert removed == {"removed": first, "message": f"CX600 #1 ({first}) removed"}
    with pytest.raises(UnknownPhoneError):
        wall.driver(first)
    assert events[-1].kind == "phone.removed"
    assert events[-1].data["mac"] == first
    again = await wall.add("CX600", location="inside")
    assert again["added"] == [first]
    assert [c["address"] for c in wall.snapshot()["phones"]] == ["127.10.1.1", "127.10.1.2"]
    assert wall.driver(second).phone.state is not S.OFF


@pytest.mark.looptime
async def test_the_wall_shows_the_zone_the_firewall_gives_a_phone(device_lab: RunningLab) -> None:
    wall = device_lab.lab.wall
    (phone,) = (await wall.add("HP4120", location="outside"))["added"]
    card = wall.snapshot()["phones"][0]
    assert (card["address"], card["location"], card["zone"]) == ("127.20.1.1", "outside", "outside")
    device_lab.lab.firewall.set_zone(card["address"], "inside")
    card = wall.snapshot()["phones"][0]
    assert (card["location"], card["zone"]) == ("outside", "inside")
    assert wall.snapshot()["aggregates"]["by_zone"] == {"inside": 1}
    assert phone == mac(1, "HP4120")


async def test_a_stopped_wall_takes_no_phones(device_lab: RunningLab) -> None:
    wall: PhoneWall = device_lab.lab.wall
    await wall.add("CX600")
    await wall.stop()
    with pytest.raises(WallError, match="the lab is not running"):
        await wall.add("CX600")
    with pytest.raises(WallError, match="the lab is not running"):
        wall.act(mac(1), "plug-in")
    assert wall.snapshot()["count"] == 0


# --- The admin API ----------------------------------------------------------------------------


@pytest.fixture
async def admin(device_lab: RunningLab) -> AsyncIterator[aiohttp.ClientSession]:
    host, port = device_lab.lab.admin_address
    token = read_token(device_lab.state_dir)
    async with aiohttp.ClientSession(
        f"http://{host}:{port}", headers={"Authorization": f"Bearer {token}"}
    ) as session:
        yield session


async def call(
    admin: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with admin.request(method, path, json=body) as response:
        return response.status, await response.json()


async def test_the_admin_api_adds_lists_shows_acts_on_and_removes_phones(
    device_lab: RunningLab, admin: aiohttp.ClientSession
) -> None:
    events = wall_events(device_lab)
    status, added = await call(
        admin, "POST", "/v1/phones", {"model": "CX600", "count": 2, "location": "outside"}
    )
    assert (status, added["added"]) == (200, [mac(1), mac(2)])

    status, page = await call(admin, "GET", "/v1/phones?offset=1&limit=1")
    assert status == 200
    assert (page["count"], page["offset"], page["page_size"]) == (2, 1, 1)
    assert [c["address"] for c in page["phones"]] == ["127.20.1.2"]
    assert page["aggregates"]["by_state"] == {"off": 2}

    status, detail = await call(admin, "GET", "/v1/phones/0004f2000001")
    assert status == 200
    assert f"Current version: {FACTORY}\n" in detail["system_information"]
    assert (detail["log"], detail["audit"]) == ([], [])

    status, plugged = await call(admin, "POST", "/v1/phones/00:04:f2:00:00:01/plug-in")
    assert (status, plugged["phone"]["state"]) == (200, "booting")
    assert plugged["message"] == (
        "CX600 #1 plugged in at 127.20.1.1 (outside the firewall): it boots and checks for "
        "updates at power-on"
    )
    # The firewall moves the phone; the wall shows the zone it is in now.
    await call(
        admin, "POST", "/v1/firewall", {"action": "set", "target": "127.20.1.1", "zone": "inside"}
    )
    status, detail = await call(admin, "GET", f"/v1/phones/{mac(1)}")
    assert (detail["phone"]["location"], detail["phone"]["zone"]) == ("outside", "inside")

    for method, path, body, expected, error in [
        ("POST", f"/v1/phones/{mac(1)}/call-start", None, 409, "a call needs a running phone"),
        ("POST", f"/v1/phones/{mac(1)}/sign-in", {}, 400, "name the user to sign in"),
        ("POST", f"/v1/phones/{mac(1)}/sign-in", {"user": "eve"}, 400, "no directory user 'eve'"),
        ("POST", f"/v1/phones/{mac(1)}/dance", None, 400, "no phone action 'dance'"),
        ("GET", "/v1/phones/00-04-F2-00-00-99", None, 404, "no phone 00-04-F2-00-00-99"),
        ("DELETE", "/v1/phones/00-04-F2-00-00-99", None, 404, "no phone 00-04-F2-00-00-99"),
        ("GET", "/v1/phones/nonsense", None, 400, "'nonsense' is not a MAC address"),
        ("GET", "/v1/phones?limit=0", None, 400, "limit must be a whole number >= 1"),
        ("GET", "/v1/phones?offset=x", None, 400, "offset must be a whole number, not 'x'"),
        ("POST", "/v1/phones", {"count": 2}, 400, "'model' must name a phone model"),
        ("POST", "/v1/phones", {"model": "CX600", "count": "3"}, 400, "count must be"),
        ("POST", "/v1/phones", {"model": "CX600", "plug_in": "yes"}, 400, "'plug_in' must be"),
        ("POST", "/v1/phones", {"model": "X1"}, 400, "unknown phone model 'X1'"),
        ("POST", "/v1/phones", [1], 400, "must be a JSON object"),
    ]:
        status, answer = await call(admin, method, path, body)
        assert (status, error in answer["error"]) == (expected, True), (path, answer)

    status, removed = await call(admin, "DELETE", "/v1/phones/0004F2000002")
    assert (status, removed["removed"]) == (200, mac(2))
    status, page = await call(admin, "GET", "/v1/phones")
    assert [c["mac"] for c in page["phones"]] == [mac(1)]
    kinds = [e.kind for e in events]
    assert kinds.count("phone.added") == 2
    assert kinds[-1] == "phone.removed"
