"""`lab phone` against a real `lab up` process: phones on the lab's wall, added, acted on and
shown from the command line, as a person at a terminal does.

The lab runs at 600 times real time, so a phone boots in a tenth of a second and waits its
five quiet minutes in half a second. The tests wait for what the phones do on the lab's own
event stream (the ``phone.*`` events the console follows), never by sleeping.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from labprocess import LabProcess, lab_cmd, start_lab, stop_lab

from emulator.models import get_model
from lab.admintoken import read_token
from lab.ops.harness import FACTORY, NEW

CX600_1 = get_model("CX600").mac(1)
CX600_2 = get_model("CX600").mac(2)
EVENT_TIMEOUT = 30.0
"""Real seconds a read of the event stream may wait before the test fails."""


@pytest.fixture
def up(tmp_path: Path) -> Iterator[LabProcess]:
    """`lab up --scale 600` of the default config on free ports, stopped at the end."""
    running = start_lab(tmp_path, up_args=("--scale", "600"))
    try:
        yield running
    finally:
        stop_lab(running)


class Events:
    """The running lab's event stream (GET /v1/events), open from when it is made."""

    def __init__(self, lab: LabProcess) -> None:
        host, port = lab.endpoint("admin", "http")
        request = urllib.request.Request(
            f"http://{host}:{port}/v1/events",
            headers={"Authorization": f"Bearer {read_token(lab.state)}"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        # A read that waits longer than the timeout fails the test instead of hanging it.
        self.response = opener.open(request, timeout=EVENT_TIMEOUT)

    def wait(self, *conditions: Callable[[dict[str, Any]], bool]) -> None:
        """Read events until each of ``conditions`` has held for one (in any order)."""
        waiting = list(conditions)
        for line in self.response:
            event: dict[str, Any] = json.loads(line)
            waiting = [condition for condition in waiting if not condition(event)]
            if not waiting:
                return
        raise AssertionError("the lab's event stream ended")

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def events(up: LabProcess) -> Iterator[Events]:
    stream = Events(up)
    try:
        yield stream
    finally:
        stream.close()


def phone_is(mac: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    """A ``phone.changed`` of ``mac`` telling ``fields`` (state, version, user...)."""
    return lambda e: (
        e["kind"] == "phone.changed"
        and e["mac"] == mac
        and all(e.get(k) == v for k, v in fields.items())
    )


def ok(lab: LabProcess, *args: str) -> str:
    """Run `lab ARGS` against the lab; its output, once it exited 0."""
    result = lab.lab(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_json(lab: LabProcess, *args: str) -> Any:
    return json.loads(ok(lab, *args, "--json"))


def publish(lab: LabProcess, model: str, version: str) -> None:
    """Build a vendor cab, import it into every pool and approve it, as an administrator."""
    cab = lab.state.parent / f"{model}-{version}.cab"
    ok(lab, "cab", "build", "--model", model, "--version", version, "-o", str(cab))
    ok(lab, "update", "import", str(cab), "--all-pools")
    ok(lab, "update", "approve", "--model", model)


def test_phones_added_from_the_cli_update_and_show_what_happened(
    up: LabProcess, events: Events
) -> None:
    publish(up, "CX600", NEW)
    added = as_json(up, "phone", "add", "CX600", "--count", "2", "--plug-in")
    assert added["added"] == [CX600_1, CX600_2]
    events.wait(*(phone_is(mac, state="idle", version=NEW) for mac in added["added"]))

    listing = as_json(up, "phone", "list")
    assert listing["count"] == 2
    assert listing["aggregates"]["by_version"] == {NEW: 2}
    assert [(c["label"], c["address"], c["backup_version"]) for c in listing["phones"]] == [
        ("CX600 #1", "127.10.1.1", FACTORY),
        ("CX600 #2", "127.10.1.2", FACTORY),
    ]
    table = ok(up, "phone", "list")
    for text in ("phones on the wall", CX600_1, "127.10.1.2", NEW, "2 phones (room for 1,998"):
        assert text in table
    assert f"version: {NEW} 2" in table

    shown = ok(up, "phone", "show", "0004f2000001")
    assert f"Current version: {NEW}" in shown
    assert "phone log, last 20 of" in shown
    assert "audit lines for this MAC" in shown
    detail = as_json(up, "phone", "show", "00:04:f2:00:00:01")
    assert detail["phone"]["version"] == NEW
    assert [line["served_from"] for line in detail["audit"]][:1] == ["approved"]
    assert {line["mac"] for line in detail["audit"]} == {CX600_1}
    assert detail["log"][-1]["code"] == "up-to-date"


def test_a_person_at_the_phone_from_the_cli_and_what_is_refused(
    up: LabProcess, events: Events, tmp_path: Path
) -> None:
    said = ok(up, "phone", "add", "CX600", "--location", "outside", "--user", "bob", "--plug-in")
    assert "1 CX600 phone added outside at 127.20.1.1" in said
    events.wait(phone_is(CX600_1, state="idle", user="bob@contoso.test"))

    assert "call started on CX600 #1" in ok(up, "phone", "call-start", CX600_1)
    events.wait(phone_is(CX600_1, calls=1))
    assert "call ended on CX600 #1" in ok(up, "phone", "call-end", CX600_1)

    assert "bob@contoso.test signed out of CX600 #1" in ok(up, "phone", "sign-out", CX600_1)
    assert "alice@contoso.test signing in" in ok(up, "phone", "sign-in", CX600_1, "--user", "alice")
    events.wait(phone_is(CX600_1, state="idle", user="alice@contoso.test"))

    assert "unplugged while idle" in ok(up, "phone", "unplug", CX600_1)
    assert "plugged in at 127.20.1.1 (outside the firewall)" in ok(up, "phone", "plug-in", CX600_1)
    cut = as_json(up, "phone", "power-cut", CX600_1)
    assert cut["while_installing"] is False
    assert "not installing: nothing is damaged" in cut["message"]

    for argv, code, message in [
        (("show", "nonsense"), 2, "'nonsense' is not a MAC address"),
        (("call-end", "0004f2000009"), 1, "no phone 00-04-F2-00-00-09 on the wall"),
        (("add", "CX999"), 2, "unknown phone model 'CX999'"),
        (("add", "CX600", "--user", "mallory"), 2, "no directory user 'mallory'"),
        (("add", "CX600", "--count", "2001"), 2, "count must be a whole number from 1 to 2,000"),
        (("sign-in", CX600_1), 2, "the following arguments are required: --user"),
    ]:
        result = up.lab("phone", *argv)
        assert (result.returncode, message in result.stderr) == (code, True), result.stderr

    assert "CX600 #1 (00-04-F2-00-00-01) removed" in ok(up, "phone", "remove", CX600_1)
    assert as_json(up, "phone", "list")["count"] == 0
    assert "no phones on the wall" in ok(up, "phone", "list")

    # No lab at all: said plainly, exit 1.
    result = subprocess.run(
        lab_cmd(up.config, tmp_path / "elsewhere", "phone", "list"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "no lab is running from" in result.stderr
    assert "start one with `lab up" in result.stderr
