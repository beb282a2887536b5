"""``emulator run --metrics-port``: a fleet's figures for Prometheus follow its phones."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from labprocess import samples, start_lab, stop_lab

from emulator.build import Location
from emulator.clock import Clock
from emulator.fleet import Fleet, PhoneSpec
from emulator.metrics import CONVERGE_BUCKETS, served
from emulator.models import get_model
from lab.ops.harness import ALICE, BOOT, IDLE_WAIT, NEW, Phones, RunningLab


async def scrape(port: int) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return samples(await response.text())


@pytest.mark.looptime
async def test_phones_by_state_and_their_time_to_converge_are_served(
    device_lab: RunningLab, phones: Phones, virtual_clock: Clock, tmp_path: Path
) -> None:
    device_lab.publish("CX600", NEW)
    cx600 = get_model("CX600")
    fleet = Fleet(
        [
            PhoneSpec(cx600, 1),
            PhoneSpec(cx600, 2),
            PhoneSpec(cx600, 3, Location.OUTSIDE, credentials=ALICE),
        ],
        lease=device_lab.lease,
        clock=virtual_clock,
        network=phones.network,
        workdir=tmp_path / "fleet",
    )
    async with served(fleet, 0) as port:
        before = await scrape(port)
        assert before['emulator_phones{state="off"}'] == 3
        assert before["emulator_phones_settled"] == 0
        assert before["emulator_time_to_converge_seconds_count"] == 0

        result = await fleet.run(duration=86_400)
        after = await scrape(port)

    assert after['emulator_phones{state="idle"}'] == 3
    assert after['emulator_phones{state="off"}'] == 0
    assert after["emulator_phones_settled"] == 3
    times = [p.converged_after for p in result.phones if p.converged_after is not None]
    assert after["emulator_time_to_converge_seconds_count"] == 3
    assert after["emulator_time_to_converge_seconds_sum"] == pytest.approx(sum(times))
    for bound in CONVERGE_BUCKETS:
        expected = sum(1 for t in times if t <= bound)
        assert after[f'emulator_time_to_converge_seconds_bucket{{le="{bound}.0"}}'] == expected
    # Every phone took at least a boot, the five-minute wait and another boot.
    assert min(times) >= BOOT + IDLE_WAIT + BOOT
    assert after["emulator_downloaded_bytes_total"] == 3 * device_lab.stored_bytes("CX600", NEW)


def emulator_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emulator.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_each_worker_serves_its_share(tmp_path: Path) -> None:
    up = start_lab(tmp_path / "lab", up_args=("--scale", "3600"))
    try:
        state = ("--state-dir", str(up.state), "--phones", "4", "--workers", "2")
        done = emulator_run(*state, "--metrics-port", "0", "--json", "--compact-json")
        assert done.returncode == 0, done.stderr
        ports = re.findall(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", done.stderr)
        assert len(set(ports)) == 2, done.stderr
        refused = emulator_run(*state, "--metrics-port", "65535")
        assert refused.returncode != 0
        assert "--metrics-port 65535 leaves no port for 2 workers" in refused.stderr
        bad = emulator_run("--metrics-port", "http")
        assert bad.returncode == 2
        assert "'http' is not a port (0-65535)" in bad.stderr
    finally:
        stop_lab(up)
