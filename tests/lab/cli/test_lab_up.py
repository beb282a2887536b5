"""`lab up` as a process: endpoints printed and published, status, clean stop on signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
import tomli_w
from labprocess import LabProcess, lab_cmd, start_lab, stop_lab


@pytest.fixture
def up(tmp_path: Path) -> Iterator[LabProcess]:
    """A `lab up` of the default config on free ports, stopped at the end."""
    running = start_lab(tmp_path)
    try:
        yield running
    finally:
        stop_lab(running)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_up_publishes_endpoints_and_stops_cleanly(up: LabProcess, signum: int) -> None:
    state = up.state
    info = up.status()
    assert info["alive"] is True
    assert info["pid"] == up.proc.pid
    host, port = info["endpoints"]["dns"]["udp"].rsplit(":", 1)
    assert host == "127.10.0.2"
    assert int(port) > 0

    query = dns.message.make_query("ucupdates-r2.contoso.test", "A")
    answer = dns.query.udp(query, host, port=int(port), source="127.10.0.77", timeout=5)
    assert sorted(str(r) for rrset in answer.answer for r in rrset) == [
        "127.10.0.11",
        "127.10.0.12",
    ]

    lease = json.loads((state / "lease.json").read_text())
    assert lease["dns"] == [host, int(port)]
    assert lease["domain"] == "contoso.test"
    assert Path(lease["ca_cert"]).is_file()

    up.proc.send_signal(signum)
    assert up.proc.wait(timeout=20) == 0
    assert not (state / "run.json").exists()
    gone = up.lab("status", timeout=30)
    assert gone.returncode == 1
    assert "no lab is running" in gone.stderr


def test_up_refuses_an_address_in_use(up: LabProcess, tmp_path: Path) -> None:
    port = up.endpoint("dns", "udp")[1]
    data = tomllib.loads(up.config.read_text())
    data["ports"]["dns"] = port
    clash = tmp_path / "clash.toml"
    clash.write_text(tomli_w.dumps(data))
    result = subprocess.run(
        lab_cmd(clash, tmp_path / "other-state", "up"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"127.10.0.2:{port}" in result.stderr


def test_runtime_commands_change_the_running_lab(up: LabProcess) -> None:
    host, port = up.endpoint("dns", "udp")
    lab = up.lab

    def ask(source: str) -> tuple[int, list[str]]:
        query = dns.message.make_query("ucupdates-r2.contoso.test", "A")
        answer = dns.query.udp(query, host, port=port, source=source, timeout=5)
        return answer.rcode(), sorted(str(r) for rrset in answer.answer for r in rrset)

    assert lab("firewall", "set", "127.10.0.77", "outside").returncode == 0
    assert ask("127.10.0.77") == (0, ["127.20.0.10"])
    shown = lab("firewall", "show", "--json")
    assert json.loads(shown.stdout)["overrides"] == [
        {"network": "127.10.0.77/32", "zone": "outside"}
    ]
    assert lab("firewall", "reset").returncode == 0
    assert ask("127.10.0.77") == (0, ["127.10.0.11", "127.10.0.12"])

    assert lab("dns", "fault", "set", "ucupdates-r2.contoso.test", "remove").returncode == 0
    assert ask("127.10.0.77") == (3, [])
    listed = lab("dns", "fault", "list")
    assert "ucupdates-r2.contoso.test" in listed.stdout
    assert "remove" in listed.stdout
    assert lab("dns", "fault", "clear", "--all").returncode == 0
    assert ask("127.10.0.77")[0] == 0

    bad = lab("firewall", "set", "127.10.0.300", "outside")
    assert bad.returncode == 2
    assert "'127.10.0.300' is not an IP address or CIDR range" in bad.stderr


def test_store_commands_are_taken_by_the_running_lab_at_once(up: LabProcess) -> None:
    # Each store command announces its change through the admin API, so the running lab
    # holds the new snapshot before the command returns; reading commands announce nothing.
    def lab(*args: str) -> subprocess.CompletedProcess[str]:
        done = up.lab(*args, timeout=30)
        assert done.returncode == 0, done.stderr
        assert "note:" not in done.stderr
        return done

    def store() -> dict[str, int]:
        status: dict[str, int] = json.loads(lab("status", "--json").stdout)["pool"]["store"]
        return status

    first = store()
    assert (first["rules"], first["test_devices"]) == (0, 0)
    lab("test-device", "add", "--mac", "00-04-F2-00-00-01", "--name", "desk")
    assert store()["generation"] == first["generation"] + 1
    assert store()["test_devices"] == 1
    lab("config", "set", "MaxLogFileSize=2048000")
    assert store()["generation"] == first["generation"] + 2
    lab("update", "list")
    lab("test-device", "list")
    assert store()["generation"] == first["generation"] + 2
    shown = lab("status")
    assert f"update store: snapshot {first['generation'] + 2} (0 rules, 1 test devices)" in (
        shown.stdout
    )


def test_global_options_may_follow_any_sub_command(up: LabProcess) -> None:

    def lab(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "lab.cli",
                *args,
                "--config",
                str(up.config),
                "--state-dir",
                str(up.state),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    entered = lab("maintenance", "enter", "fe01", "--json")
    assert entered.returncode == 0, entered.stderr
    assert json.loads(entered.stdout)["fe01"]["mode"] == "maintenance"
    refused = lab("maintenance", "enter", "fe02")
    assert refused.returncode == 1
    assert "last server in production" in refused.stderr
    status = json.loads(lab("status", "--json").stdout)
    assert status["pool"]["servers"]["fe01"]["mode"] == "maintenance"
    assert lab("maintenance", "exit", "fe01").returncode == 0
    assert lab("dns", "fault", "list", "--json").stdout.strip() == "{}"
