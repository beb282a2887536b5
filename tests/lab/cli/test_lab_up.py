"""`lab up` as a process: endpoints printed and published, status, clean stop on signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dns.message
import dns.query
import pytest
import tomli_w
from labprocess import LabProcess, lab_cmd, start_lab, stop_lab

from lab.service.audit import read_audit


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
    assert "last server in production in pool pool01.contoso.test" in refused.stderr
    # The Standard Edition server is the only one of its pool: the last one too.
    alone = lab("maintenance", "enter", "se01")
    assert alone.returncode == 1
    assert "se01 is the last server in production in pool se01.contoso.test" in alone.stderr
    status = json.loads(lab("status", "--json").stdout)
    assert status["pool"]["servers"]["fe01"]["mode"] == "maintenance"
    assert lab("maintenance", "exit", "fe01").returncode == 0
    assert lab("dns", "fault", "list", "--json").stdout.strip() == "{}"


def test_phones_follow_the_lab_clock_and_log_the_audit_lines_time(tmp_path: Path) -> None:
    # lab up at a lab time of its own, 60 times as fast as real time; emulator run reads
    # the clock from the lease, so the phone's log and the front end's audit line of the
    # same check tell the same time.
    up = start_lab(tmp_path, up_args=("--start", "2030-06-01T08:00:00Z", "--scale", "60"))
    try:
        emulator_run = [sys.executable, "-m", "emulator.cli", "run", "--state-dir", str(up.state)]
        assert up.info["clock"]["scale"] == 60
        assert up.info["clock"]["start"] == "2030-06-01T08:00:00+00:00"
        lab_time = datetime.fromisoformat(up.status()["lab_time"])
        assert datetime(2030, 6, 1, 8, tzinfo=UTC) <= lab_time < datetime(2030, 6, 1, 9, tzinfo=UTC)
        shown = " ".join(up.lab("status").stdout.split())  # rich folds long lines
        assert "lab time: 2030-06-01T08:00:00+00:00 at start, running at 60 times real time" in (
            shown
        )
        run = subprocess.run(
            [*emulator_run, "--phones", "1", "--duration", "1h", "--json", "--log"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        [phone] = json.loads(run.stdout)["phones"]
        log = phone["log"]
        [first] = [i for i, e in enumerate(log) if e["code"] == "checking"][:1]
        audit = [
            line
            for path in sorted((up.state / "servers").glob("*/AuditLogs/*.log"))
            for line in read_audit(path)
            if line["mac"] == phone["mac"]
        ]
        assert audit
        # The same request seen from both ends of the wire, on one clock: the front end
        # logged it after the phone began the check and before the phone logged the answer.
        # (Nothing is published: the answer is that the phone is up to date.)
        [answer] = [e for e in log[first:] if e["code"] == "up-to-date"][:1]
        began, answered = log[first]["time"], answer["time"]
        assert began <= audit[0]["time"] <= answered
        assert began.startswith("2030-06-01T08:")
        # (At 60 times real time a millisecond on the wire is 60 ms of lab time.)
        assert _seconds(answered) - _seconds(began) < 2
        # A scale of its own for the phones would make the two disagree: refused.
        refused = subprocess.run(
            [*emulator_run, "--phones", "1", "--scale", "500"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode == 2
        assert "the lab runs its clock at 60 times real time" in refused.stderr
        # What the CLI's store commands record is stamped in lab time too.
        added = up.lab("test-device", "add", "--mac", "00-04-F2-00-00-09", "--json")
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["added_at"].startswith("2030-06-01T08:")
    finally:
        stop_lab(up)


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_up_refuses_a_start_that_is_no_time(tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text("")
    for bad, why in (
        ("tomorrow", "'tomorrow' is not a date and time like 2026-06-01T08:00:00Z"),
        ("2030-06-01T08:00:00", "names no time zone: add Z or +HH:MM"),
    ):
        done = subprocess.run(
            lab_cmd(config, tmp_path / "state", "up", "--start", bad),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 2
        assert why in done.stderr
