"""Fleets on Locust: a master and two workers, separate processes, converge 1,000 phones
against a real `lab up`, and Locust's own CSV statistics say so."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from labprocess import PASSWORDS, start_lab, stop_lab

from lab.ops.harness import NEW

PHONES = 1_000


def locust(*args: str) -> list[str]:
    locustfile = subprocess.run(
        [sys.executable, "-m", "emulator.cli", "locustfile"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return [str(Path(sys.executable).with_name("locust")), "-f", locustfile, *args]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_master_and_two_workers_converge_a_thousand_phones(tmp_path: Path) -> None:
    up = start_lab(tmp_path / "lab", up_args=("--scale", "3600"))
    try:
        up.publish(NEW)
        port = str(free_port())
        logs = contextlib.ExitStack()
        stats = tmp_path / "fleet"
        master = subprocess.Popen(
            locust(
                "--headless",
                "--master",
                "--master-bind-host",
                "127.0.0.1",
                "--master-bind-port",
                port,
                "--expect-workers",
                "2",
                "--users",
                str(PHONES),
                "--spawn-rate",
                "500",
                "--run-time",
                "150s",
                "--phone-state-dir",
                str(up.state),
                "--phone-location",
                "mixed",
                "--phone-user",
                "CONTOSO\\alice",
                "--phones-to-converge",
                str(PHONES),
                "--csv",
                str(stats),
                "--only-summary",
                # What the outside phones meet on their way is counted below; the run's
                # status is whether it ran.
                "--exit-code-on-error",
                "0",
            ),
            stdout=subprocess.DEVNULL,
            stderr=logs.enter_context((tmp_path / "master.log").open("w")),
            cwd=tmp_path,
        )
        workers = [
            subprocess.Popen(
                locust("--worker", "--master-host", "127.0.0.1", "--master-port", port),
                # The password reaches each worker as it would on another machine: its own
                # environment, never a command line.
                env={**os.environ, "EMULATOR_PASSWORD": PASSWORDS["alice"]},
                stdout=subprocess.DEVNULL,
                stderr=logs.enter_context((tmp_path / f"worker{i}.log").open("w")),
                cwd=tmp_path,
            )
            for i in (1, 2)
        ]
        try:
            assert master.wait(timeout=180) == 0, (tmp_path / "master.log").read_text()
            for worker in workers:
                assert worker.wait(timeout=30) == 0
        finally:
            for process in (master, *workers):
                if process.poll() is None:
                    process.kill()
                    process.wait()
            logs.close()
        rows = {
            (row["Type"], row["Name"]): row
            for row in csv.DictReader((tmp_path / "fleet_stats.csv").read_text().splitlines())
        }
        assert int(rows["PHONE", "converged"]["Request Count"]) == PHONES
        # Each phone checked before and after its update, and fetched two files.
        assert int(rows["POST", "update check"]["Request Count"]) >= 2 * PHONES
        assert int(rows["GET", "download"]["Request Count"]) == 2 * PHONES
        for state in ("booting", "checking", "downloading", "awaiting_reboot", "idle"):
            assert int(rows["PHONE", f"state {state}"]["Request Count"]) >= PHONES
        assert int(rows["GET", "download"]["Failure Count"]) == 0
        # alice signed in on every phone: the outside half through the edge, with NTLM.
        assert int(rows["POST", "sign-in"]["Request Count"]) == PHONES
        assert int(rows["POST", "sign-in"]["Failure Count"]) == 0
        # The only failures are what an outside phone meets on its way: its first check,
        # before alice's sign-in, refused (one each), and the internal names, which the
        # external DNS view does not have, before it falls back to the external URL.
        failures = {
            (row["Method"], row["Name"], row["Error"]): int(row["Occurrences"])
            for row in csv.DictReader((tmp_path / "fleet_failures.csv").read_text().splitlines())
        }
        assert failures.pop(("POST", "update check", "RuntimeError('403')")) == PHONES // 2
        assert set(failures) <= {("DNS", "A", "RuntimeError('NXDOMAIN')")}
        # The lab saw every phone, each on the new version, from both workers' blocks.
        flushed = up.lab("phones", "--json")
        assert flushed.returncode == 0, flushed.stderr
        phones = json.loads(flushed.stdout)
        assert len(phones) == PHONES
        assert {phone["version"] for phone in phones} == {NEW}
    finally:
        stop_lab(up)
