"""`emulator run` against a deployment it knows only from a lease written by hand.

The lab on loopback stands in for the real pool: the test writes the lease a person would
(DNS server, DHCP domain, the CA the phones trust, the vendors' certificates), and the
phones send from one address, as from one machine, at the gentle pace such a run takes by
default, with the password from a file or the environment, never the command line.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from labprocess import PASSWORDS, LabProcess, start_lab, stop_lab

from lab.ops.harness import NEW

PHONE_SECONDS_APART = 600 / 2  # --scale 600, and the gentle default of 2 phones a second


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Any:
    up = start_lab(tmp_path_factory.mktemp("pool") / "lab")
    try:
        up.publish(NEW)
        yield up
    finally:
        stop_lab(up)


def hand_lease(up: LabProcess, path: Path) -> Path:
    """The lease a person writes for a real pool: no lab clock, no segments, no namespaces."""
    lab = json.loads((up.state / "lease.json").read_text())
    keys = ("domain", "sip_server", "dns", "https_port", "ca_cert", "vendor_certs")
    path.write_text(json.dumps({key: lab[key] for key in keys}, indent=2))
    return path


def emulator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emulator.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_phones_from_one_machine_update_at_a_gentle_pace(pool: LabProcess, tmp_path: Path) -> None:
    lease = hand_lease(pool, tmp_path / "lease.json")
    done = emulator(
        "--lease",
        str(lease),
        "--source",
        "127.10.1.200",
        "--phones",
        "3",
        "--scale",
        "600",
        "--stagger",
        "0",
        "--duration",
        "3h",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    phones = json.loads(done.stdout)["phones"]
    assert [p["version"] for p in phones] == [NEW] * 3
    assert {p["address"] for p in phones} == {"127.10.1.200"}
    # Two phones a real second at most: 300 phone seconds apart at 600 times real time.
    starts = [datetime.fromisoformat(p["powered_on_at"]).timestamp() for p in phones]
    assert [b - a for a, b in itertools.pairwise(starts)] == pytest.approx(
        [PHONE_SECONDS_APART] * 2, abs=1
    )
    audit = "".join(p.read_text() for p in pool.state.glob("servers/*/AuditLogs/*.log"))
    assert audit.count("127.10.1.200") >= 3


@pytest.mark.parametrize("given", ["file", "environment"])
def test_the_password_comes_from_a_file_or_the_environment(
    pool: LabProcess, tmp_path: Path, given: str
) -> None:
    lease = hand_lease(pool, tmp_path / "lease.json")
    secret = tmp_path / "password"
    secret.write_text(PASSWORDS["alice"] + "\n")
    args = ["--lease", str(lease), "--source", "127.20.1.200", "--user", "alice"]
    args += ["--first-index", "20" if given == "file" else "21", "--scale", "600", "--json"]
    if given == "file":
        done = emulator(*args, "--password-file", str(secret))
    else:
        done = emulator(*args, env={"EMULATOR_PASSWORD": PASSWORDS["alice"]})
    assert done.returncode == 0, done.stderr
    [phone] = json.loads(done.stdout)["phones"]
    assert phone["user"] == "alice@contoso.test"
    assert phone["version"] == NEW  # through the edge, with alice's NTLM sign-in


def test_the_lease_may_be_given_as_flags(pool: LabProcess) -> None:
    lab = json.loads((pool.state / "lease.json").read_text())
    host, port = lab["dns"]
    done = emulator(
        "--dns",
        f"{host}:{port}",
        "--dhcp-domain",
        lab["domain"],
        "--sip-server",
        lab["sip_server"],
        "--ca-cert",
        lab["ca_cert"],
        "--vendor-cert",
        f"Polycom={lab['vendor_certs']['Polycom']}",
        "--https-port",
        str(lab["https_port"]),
        "--source",
        "127.10.1.201",
        "--first-index",
        "30",
        "--scale",
        "600",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    [phone] = json.loads(done.stdout)["phones"]
    assert phone["version"] == NEW
    assert phone["address"] == "127.10.1.201"


def test_what_a_real_run_cannot_use_is_refused(pool: LabProcess, tmp_path: Path) -> None:
    lease = hand_lease(pool, tmp_path / "lease.json")
    empty = tmp_path / "empty"
    empty.write_text("")
    for args, said in [
        (["--lease", str(tmp_path / "missing.json")], "cannot read the lease"),
        (
            ["--lease", str(lease), "--user", "alice", "--password-file", str(empty)],
            "holds no password",
        ),
        (
            ["--lease", str(lease), "--user", "alice", "--password-file", str(tmp_path / "none")],
            "cannot read --password-file",
        ),
        (["--lease", str(lease), "--rate", "0"], "'0' is not a number > 0"),
        (["--dns", "127.10.0.2"], "--dns needs --dhcp-domain, --sip-server, --ca-cert too"),
        (["--lease", str(lease), "--dns", "127.10.0.2"], "not both"),
        (
            [
                "--dns",
                "127.10.0.2:x",
                "--dhcp-domain",
                "contoso.test",
                "--sip-server",
                "pool01.contoso.test",
                "--ca-cert",
                str(lease),
            ],
            "is not HOST or HOST:PORT",
        ),
        (
            [
                "--dns",
                "127.10.0.2",
                "--dhcp-domain",
                "contoso.test",
                "--sip-server",
                "pool01.contoso.test",
                "--ca-cert",
                str(lease),
                "--vendor-cert",
                "Polycom",
            ],
            "is not VENDOR=PATH",
        ),
    ]:
        done = emulator(*args)
        assert done.returncode in (1, 2), done.stdout
        assert said in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
