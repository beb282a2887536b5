"""`emulator run` and `emulator screen` as processes against a running lab, and bad arguments.

The lab runs on the test's loop in real time while the command runs in its own process
with its own (scaled) clock, as it would against `lab up`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from emulator.build import Location
from emulator.cli import _closed_tls_is_quiet, build_parser, main, parse_duration, specs_from
from emulator.faults import Call, PowerCut, Trigger
from emulator.states import PhoneState
from lab.ops.harness import FACTORY, NEW, RunningLab


async def emulator(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emulator.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_run_updates_a_fleet_and_screen_shows_a_phone_of_it(
    device_lab: RunningLab, tmp_path: Path, loop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    device_lab.publish("CX600", NEW)
    device_lab.publish("HP4110", NEW)
    code, out, err = await emulator(
        "run",
        "--state-dir",
        str(device_lab.state_dir),
        "--phones",
        "4",
        "--model",
        "CX600",
        "--model",
        "HP4110",
        "--location",
        "mixed",
        "--user",
        "bob",  # the password is asked for: here it comes from stdin
        "--scale",
        "1000",
        "--loop",
        loop,
        "--json",
        "--log",
        stdin=b"Summer2026!\n",
    )
    assert code == 0, err
    assert err == ""  # no progress display without a terminal
    data = json.loads(out)
    summary = data["summary"]
    assert summary["by_version"] == {NEW: 4}
    assert summary["by_state"] == {"idle": 4}
    assert summary["converged"] == 4
    assert 0 < summary["converge_seconds"]["p50"] <= summary["converge_seconds"]["max"]
    phones = data["phones"]
    assert [(p["model"], p["location"], p["address"]) for p in phones] == [
        ("CX600", "inside", "127.10.1.1"),
        ("HP4110", "outside", "127.20.1.1"),
        ("CX600", "inside", "127.10.1.2"),
        ("HP4110", "outside", "127.20.1.2"),
    ]
    assert {p["user"] for p in phones} == {"bob@contoso.test"}
    assert phones[1]["timeline"][0]["state"] == "booting"
    # Each log line carries its code and facts for programs, and the line for people.
    signed_in = [e for e in phones[1]["log"] if e["code"] == "signed-in"]
    assert signed_in[0]["facts"]["user"] == "bob@contoso.test"
    assert "signed in as bob@contoso.test" in signed_in[0]["line"]

    run = tmp_path / "run.json"
    run.write_text(out)
    assert main(["screen", "--from", str(run), "--phone", phones[1]["mac"]]) == 0
    screen = capsys.readouterr().out
    assert screen.startswith("System Information\n")
    assert "Model:           HP HP4110\n" in screen
    assert f"Current version: {NEW}\n" in screen
    assert f"Backup version:  {FACTORY}\n" in screen
    assert "Signed-in user:  bob@contoso.test\n" in screen
    assert main(["screen", "--from", str(run), "--phone", "2", "--log"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(screen)
    assert "signed in as bob@contoso.test" in shown


async def test_workers_share_the_fleet_and_their_results_are_merged(
    device_lab: RunningLab,
) -> None:
    device_lab.publish("CX600", NEW)
    code, out, err = await emulator(
        "run",
        "--state-dir",
        str(device_lab.state_dir),
        "--phones",
        "5",
        "--model",
        "CX600",
        "--workers",
        "2",
        "--scale",
        "1000",
        "--json",
        "--compact-json",
    )
    assert code == 0, err
    assert out.count("\n") == 1  # the whole document on one line, as asked
    data = json.loads(out)
    assert data["summary"]["phones"] == 5
    assert data["summary"]["by_version"] == {NEW: 5}
    assert data["summary"]["converged"] == 5
    # Each worker took its own consecutive share of addresses: no phone twice, none lost.
    addresses = [p["address"] for p in data["phones"]]
    assert addresses == [f"127.10.1.{i}" for i in range(1, 6)]
    assert len({p["mac"] for p in data["phones"]}) == 5


async def test_screen_runs_one_phone_when_given_no_run(device_lab: RunningLab) -> None:
    device_lab.publish("6721ip", NEW)
    code, screen, err = await emulator(
        "screen", "--state-dir", str(device_lab.state_dir), "--model", "6721ip", "--scale", "1000"
    )
    assert code == 0, err
    assert "Model:           Aastra 6721ip\n" in screen
    assert f"Current version: {NEW}\n" in screen
    assert "Update server:   https://ucupdates-r2.contoso.test:" in screen


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: command"),
        (["run", "--phones", "0"], "argument --phones: 0 must be between 1 and 999999"),
        (["run", "--model", "CX9"], "unknown phone model 'CX9'"),
        (["run", "--scale", "-3"], "the time scale must be a number > 0"),
        (["run", "--duration", "soon"], "'soon' is not a duration"),
        (["run", "--location", "roof"], "invalid choice: 'roof'"),
        (["run", "--nt-hash", "0" * 32], "--nt-hash needs --user"),
        (["run", "--start", "2026-12-01T09:00"], "needs a time zone"),
        (["run", "--call", "10m"], "is not AT:DURATION"),
        (["screen", "--phone", "1"], "--phone picks a phone of a run's JSON: give --from too"),
        (["screen", "--from", "/nonexistent/run.json"], "cannot read /nonexistent/run.json"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "lease.json").write_text("{}")  # never read: the arguments fail first
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("emulator: error: ")
    assert message in err


def test_a_user_with_a_bad_nt_hash_is_a_bad_argument(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lease = {
        "domain": "contoso.test",
        "sip_server": "pool01.contoso.test",
        "dns": ["127.10.0.2", 53],
        "https_port": 10443,
    }
    (tmp_path / "lease.json").write_text(json.dumps(lease))
    args = ["run", "--state-dir", str(tmp_path), "--user", "alice", "--nt-hash", "xyz"]
    assert main(args) == 2
    assert capsys.readouterr().err == "emulator: error: an NT hash is 32 hexadecimal digits\n"


def test_no_lab_is_not_a_bad_argument_but_a_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["run", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"emulator: no lease.json in {tmp_path}: is a lab running there? "
        f"(lab up --state-dir {tmp_path}), or give a lease written by hand with --lease\n"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("5m", 300),
        ("5min", 300),
        ("24h", 86_400),
        ("1h30m", 5400),
        ("1d", 86_400),
        ("-400d", -400 * 86_400),
        ("0.5h", 1800),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_fault_options_go_to_a_seeded_share_of_the_phones() -> None:
    options = "--power-cut --busy 10m --fault-share 0.5 --seed 3 --location mixed"
    models = "--model CX600 --model HP4110 --first-index 10"
    args = build_parser().parse_args(["run", *options.split(), *models.split()])
    specs = specs_from(args, 4, None)
    busy = Call(trigger=Trigger(on=PhoneState.DOWNLOADING), duration=600)
    faulty = set(random.Random(3).sample(range(4), 2))
    assert [s.faults for s in specs] == [
        (PowerCut(), busy) if i in faulty else () for i in range(4)
    ]
    assert [(s.model.name, s.index, s.location) for s in specs] == [
        ("CX600", 10, Location.INSIDE),
        ("HP4110", 11, Location.OUTSIDE),
        ("CX600", 12, Location.INSIDE),
        ("HP4110", 13, Location.OUTSIDE),
    ]


async def test_only_uvloops_tls_write_to_a_closed_socket_is_dropped() -> None:
    loop = asyncio.get_running_loop()
    passed: list[dict[str, Any]] = []
    handle = _closed_tls_is_quiet(lambda _, context: passed.append(context))
    closed = RuntimeError("unable to perform operation on <TCPTransport>; the handler is closed")
    handle(loop, {"message": "Fatal error on SSL protocol", "exception": closed})
    assert passed == []
    for kept in (
        {"message": "Fatal error on SSL protocol", "exception": RuntimeError("a bug")},
        {"message": "Fatal error on transport", "exception": closed},
        {"message": "Task exception was never retrieved", "exception": ValueError("x")},
    ):
        handle(loop, kept)
    assert len(passed) == 3
