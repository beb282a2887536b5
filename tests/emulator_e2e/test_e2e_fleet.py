"""Fleets at a real lab: staggered boots from a seed, timelines, faults, the summary; and a
run in real time on uvloop with a scaled clock, as `emulator run` does."""

from __future__ import annotations

import asyncio
import io
import random
import time
from pathlib import Path

import pytest
import uvloop
from rich.console import Console

from emulator.build import Location
from emulator.clock import Clock, ScaledClock
from emulator.driver import LeaseNetwork
from emulator.errors import FleetError
from emulator.faults import BootFailure, Call, PowerCut, Trigger
from emulator.fleet import Fleet, PhoneResult, PhoneSpec, ProgressDisplay
from emulator.lease import Lease
from emulator.models import get_model
from emulator.states import PhoneState
from lab.net.config import LabConfig
from lab.ops.harness import (
    ALICE,
    BOOT,
    FACTORY,
    FLASH,
    IDLE_WAIT,
    NEW,
    T0,
    Phones,
    RunningLab,
    running_lab,
)

S = PhoneState
SEED = 7
STAGGER = 600.0
RESOLUTION = 1e-5
UPDATE = BOOT + IDLE_WAIT + BOOT
"""From power-on to running the new image, when the network takes no time (the five minutes
before the restart count from the verified download, installing included)."""


def restart_after_verified(phone: PhoneResult) -> float:
    """How long after its update's image was verified the phone restarted into it."""
    (verified,) = [c.time for c in phone.timeline if c.state is S.FLASHING]
    (waiting,) = [c.time for c in phone.timeline if c.state is S.AWAITING_REBOOT]
    (restart,) = [c.time for c in phone.timeline if c.state is S.BOOTING][1:]
    assert verified < waiting < restart
    return restart - verified


@pytest.mark.looptime
async def test_a_fleet_with_faults_converges_on_exact_times_from_its_seed(
    device_lab: RunningLab, phones: Phones, virtual_clock: Clock, tmp_path: Path
) -> None:
    cx600 = get_model("CX600")
    specs = [
        PhoneSpec(cx600, 1),
        PhoneSpec(get_model("HP4120"), 2, Location.OUTSIDE, credentials=ALICE),
        PhoneSpec(cx600, 3, faults=(PowerCut(),)),
        PhoneSpec(cx600, 4, faults=(BootFailure(),)),
        PhoneSpec(cx600, 5, faults=(Call(trigger=Trigger(on=S.DOWNLOADING), duration=600),)),
    ]
    device_lab.publish("CX600", NEW)
    device_lab.publish("HP4120", NEW)
    fleet = Fleet(
        specs,
        lease=device_lab.lease,
        clock=virtual_clock,
        network=phones.network,
        workdir=tmp_path / "fleet",
        seed=SEED,
        stagger=STAGGER,
    )
    result = await fleet.run(duration=86_400)

    draws = random.Random(SEED)
    offsets = [draws.uniform(0, STAGGER) for _ in specs]
    # Exact to looptime's resolution: its clock counts microseconds, and every timer of a
    # phone's life is rounded to one (the offsets drawn are not whole seconds).
    assert [p.powered_on_at for p in result.phones] == pytest.approx(
        [T0 + o for o in offsets], abs=RESOLUTION
    )
    assert [p.address for p in result.phones] == [
        "127.10.1.1",
        "127.20.1.1",
        "127.10.1.2",
        "127.10.1.3",
        "127.10.1.4",
    ]
    power_cut = BOOT + 10 + 60 + UPDATE  # cut 10 s into installing, back after 60 s
    boot_failure = BOOT + IDLE_WAIT + 5 + BOOT  # back on the backup image
    in_call = BOOT + 600 + IDLE_WAIT + BOOT  # the restart waits for the call to end
    expected = [UPDATE, UPDATE, power_cut, boot_failure, in_call]
    assert [p.converged_after for p in result.phones] == pytest.approx(
        [o + e for o, e in zip(offsets, expected, strict=True)], abs=RESOLUTION
    )
    assert [p.version for p in result.phones] == [NEW, NEW, NEW, FACTORY, NEW]
    for phone in result.phones[:2]:
        # The restart comes exactly five minutes after the image was verified.
        assert restart_after_verified(phone) == pytest.approx(IDLE_WAIT, abs=RESOLUTION)
    assert result.phones[1].user == "alice@contoso.test"
    timeline = [(c.state, c.version) for c in result.phones[0].timeline]
    assert timeline[0] == (S.BOOTING, FACTORY)
    assert timeline[-2:] == [(S.CHECKING, NEW), (S.IDLE, NEW)]

    summary = result.summary
    assert summary.by_state == {"idle": 5}
    assert summary.by_version == {NEW: 4, FACTORY: 1}
    assert summary.converged == 5
    times = sorted(p.converged_after or 0 for p in result.phones)
    assert (summary.converge_p50, summary.converge_p95, summary.converge_max) == (
        times[2],
        times[4],
        times[4],
    )
    assert summary.ended == pytest.approx(T0 + times[4], abs=RESOLUTION)
    data = result.as_dict()
    assert data["summary"]["converged"] == 5
    assert data["phones"][3]["timeline"][-1]["state"] == "idle"
    assert "Current version: 4.0.7577.4366" in data["phones"][3]["system_information"]


@pytest.mark.looptime
async def test_a_run_that_does_not_settle_ends_at_its_duration(
    device_lab: RunningLab, phones: Phones, virtual_clock: Clock, tmp_path: Path
) -> None:
    device_lab.publish("CX600", NEW)
    fleet = Fleet(
        [PhoneSpec(get_model("CX600"), 1)],
        lease=device_lab.lease,
        clock=virtual_clock,
        network=phones.network,
        workdir=tmp_path / "fleet",
    )
    result = await fleet.run(duration=BOOT + FLASH + 10)
    (phone,) = result.phones
    assert phone.state is S.AWAITING_REBOOT
    assert phone.converged_after is None
    assert result.summary.ended == T0 + BOOT + FLASH + 10
    assert result.summary.converged == 0


async def test_a_fleet_cannot_have_two_phones_with_one_mac(tmp_path: Path) -> None:
    lease = Lease("contoso.test", "pool01.contoso.test", ("127.10.0.2", 53), 443)
    loop = asyncio.get_running_loop()
    clock = ScaledClock(loop.time, start=T0)
    spec = PhoneSpec(get_model("CX600"), 1)
    with pytest.raises(FleetError, match="share MAC address 00-04-F2-00-00-01"):
        Fleet([spec, spec], lease=lease, clock=clock, workdir=tmp_path)
    with pytest.raises(FleetError, match="names no inside segment"):
        Fleet([spec], lease=lease, clock=clock, workdir=tmp_path)


def test_a_fleet_runs_in_real_time_on_uvloop_with_a_scaled_clock(
    lab_config: LabConfig, tmp_path: Path
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, uvloop.Loop)
        async with running_lab(lab_config, tmp_path / "state") as lab:
            lab.publish("CX600", NEW)
            lab.publish("6721ip", NEW)
            clock = ScaledClock(loop.time, start=time.time(), scale=2000)
            specs = [
                PhoneSpec(get_model("CX600"), 1),
                PhoneSpec(get_model("6721ip"), 2),
                PhoneSpec(get_model("6721ip"), 3, Location.OUTSIDE, credentials=ALICE),
            ]
            fleet = Fleet(
                specs,
                lease=lab.lease,
                clock=clock,
                network=LeaseNetwork(lab.lease, clock, max_clients=2),
                workdir=tmp_path / "fleet",
                stagger=60,
            )
            shown = io.StringIO()
            terminal = Console(file=shown, force_terminal=True, width=160)
            with ProgressDisplay(terminal, 86_400) as display:
                result = await fleet.run(
                    duration=86_400, progress=display.update, progress_every=0.01
                )
        assert "/3 settled;" in shown.getvalue()
        assert result.summary.by_version == {NEW: 3}, result.summary.render()
        assert result.summary.converged == 3
        for phone in result.phones:
            # Network time counts 2000 times over, and a timer runs as late as the loop lets
            # it (a millisecond of a busy machine is two minutes here): so only what does not
            # hang on the machine's speed is checked; the exact times are the fake-time tests'.
            assert phone.converged_after is not None
            assert phone.converged_after >= UPDATE
            # The five-minute wait restarted it, and never before its time.
            states = [c.state for c in phone.timeline]
            waiting = states.index(S.AWAITING_REBOOT)
            assert states[waiting - 1 : waiting + 2] == [S.FLASHING, S.AWAITING_REBOOT, S.BOOTING]
            assert restart_after_verified(phone) >= IDLE_WAIT

    uvloop.run(scenario())
