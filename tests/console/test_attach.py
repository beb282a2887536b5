"""`lab console --state-dir` of a running `lab up`: the console attaches to that lab.

No browser: plain HTTP, as the page's requests are made. The console shows the running
lab, relays its events (a change made with the CLI reaches the page's stream), and
stopping it leaves the lab running and quick to stop.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_page import ConsoleProcess, start_console
from labprocess import LabProcess, lab_cmd, start_lab, stop_lab

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabProcess]:
    """A `lab up` of the test's own."""
    running = start_lab(tmp_path / "lab")
    try:
        yield running
    finally:
        stop_lab(running)


def _login(console: ConsoleProcess) -> str:
    """Follow the login link; the session cookie it sets."""
    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=10)
    connection.request("GET", console.login_url.removeprefix(console.origin))
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 303
    assert response.getheader("Location") == "/"
    return str(response.getheader("Set-Cookie")).split(";", 1)[0]


def _next_event(response: http.client.HTTPResponse) -> tuple[str, dict[str, Any]]:
    kind = ""
    while line := response.readline().decode():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ").strip()
        elif line.startswith("data: ") and kind:
            return kind, json.loads(line.removeprefix("data: "))
    raise AssertionError("the event stream ended")


def test_the_console_attaches_to_a_running_lab(lab: LabProcess, tmp_path: Path) -> None:
    # The running lab keeps its own clock: --scale is for a lab the console starts.
    refused = lab.lab("console", "--port", "0", "--scale", "10")
    assert refused.returncode == 2
    assert "--scale is for a lab the console starts" in refused.stderr
    # So is a network of its own: the running lab keeps the one it was started with.
    refused = lab.lab("console", "--port", "0", "--netns")
    assert refused.returncode == 2
    assert "--netns and --capture are for a lab the console starts" in refused.stderr

    console = start_console(tmp_path / "console", config=lab.config, state=lab.state)
    try:
        assert any("attaching to the lab running from" in line for line in console.output)
        cookie = _login(console)

        connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=10)
        connection.request("GET", "/panels/network", headers={"Cookie": cookie})
        network = connection.getresponse().read().decode()
        dns_host, dns_port = lab.endpoint("dns", "udp")
        assert f"{dns_host}:{dns_port}" in network  # this lab's DNS, on its own port

        # A change made with the CLI reaches the console's page as a panel change.
        connection.request("GET", "/events", headers={"Cookie": cookie})
        stream = connection.getresponse()
        assert _next_event(stream) == ("hello", {"panels": [], "phones": [], "connected": True})
        moved = lab.lab("firewall", "set", "127.10.1.9", "outside")
        assert moved.returncode == 0, moved.stderr
        kind, data = _next_event(stream)
        assert kind == "changed"
        assert "firewall" in data["panels"]
        connection.close()
    finally:
        console.stop()
    assert console.proc.returncode == 0

    # The lab runs on without the console, and its event stream let go of it.
    assert lab.status()["alive"] is True
    started = time.monotonic()
    stop_lab(lab)
    assert time.monotonic() - started < 10


def test_a_console_starts_a_lab_of_its_own_when_none_runs(tmp_path: Path) -> None:
    console = start_console(tmp_path)
    try:
        info = json.loads((console.state / "run.json").read_text())
        assert "console" not in info["endpoints"]  # the console is not part of the lab
        # The lab the console started runs 60 times as fast as real time.
        assert info["clock"]["scale"] == 60
        assert any("lab contoso is up" in line for line in console.output)
        # `lab status` sees it as any `lab up`.
        status = console.lab("status", "--json")
        assert status.returncode == 0, status.stderr
    finally:
        console.stop()
    assert console.proc.returncode == 0
    assert not (console.state / "run.json").exists()


def test_the_console_port_taken_is_said_in_one_line(tmp_path: Path) -> None:
    first = start_console(tmp_path / "first")
    try:
        taken = lab_cmd(first.config, tmp_path / "second", "console", "--port", str(first.port))
        result = subprocess.run(taken, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 1
        assert f"port {first.port} on 127.0.0.1 (the console" in result.stderr
    finally:
        first.stop()


def test_the_console_follows_its_lab_started_again(tmp_path: Path) -> None:
    lab = start_lab(tmp_path / "lab")
    console = start_console(tmp_path / "console", config=lab.config, state=lab.state)
    try:
        cookie = _login(console)
        connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=15)
        connection.request("GET", "/events", headers={"Cookie": cookie})
        stream = connection.getresponse()
        assert _next_event(stream)[1]["connected"] is True

        # The lab stops: the page is told it is away.
        stop_lab(lab)
        while _next_event(stream)[1]["connected"]:
            pass

        # Started again on the same state directory: a new admin port and token, which the
        # console reads again, and the page is live once more.
        lab = start_lab(tmp_path / "lab")
        while not _next_event(stream)[1]["connected"]:
            pass
        moved = lab.lab("firewall", "flip")
        assert moved.returncode == 0, moved.stderr
        while "firewall" not in _next_event(stream)[1]["panels"]:
            pass
        connection.close()
    finally:
        console.stop()
        stop_lab(lab)
