"""Runs the console starts and watches (lab.ops.runs): a scenario, the demo stepped by chapter.

Each run is real: a lab of its own on free ports in a temporary directory, real phones.
Most run on fake loop time (looptime); one scenario runs on its scaled clock, next to
`lab scenario run` as a process, and `lab demo --step` is stepped through its stdin.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w

from lab.cli import main
from lab.errors import LabStateError, ScenarioError
from lab.net.config import LabConfig, default_text
from lab.ops.demo import CHAPTERS, PENDING, STATE_MARKER
from lab.ops.runner import run_event_loop
from lab.ops.runs import DemoRun, RunBusyError, RunError, RunState, ScenarioRun
from lab.ops.scenarios import get_scenario, run_scenario
from lab.ops.scenarios.framework import TimelineEntry
from lab.ops.scenarios.report import render_report, scenario_report

SMALL_IMAGE = 16 * 1024
"""The demo's cabs are built in real time: small images keep it quick."""


async def until(run: ScenarioRun | DemoRun, done: Callable[[], bool]) -> None:
    """Wait on the run's news until ``done()`` holds (or the run has ended)."""
    seen = run.version
    while not done() and run.state in (RunState.READY, RunState.RUNNING):
        seen = await run.changed(seen)


# --- A scenario ---------------------------------------------------------------------------


@pytest.mark.looptime
async def test_the_timeline_callback_tells_each_entry_of_the_observation_as_it_happens(
    lab_config: LabConfig, tmp_path: Path
) -> None:
    # Restore-to-backup has it all: the setup, phone changes, and the administrator's
    # restore while the phone runs.
    told: list[tuple[TimelineEntry, int]] = []
    observation = await run_scenario(
        get_scenario("restore-to-backup"),
        lab_config,
        tmp_path,
        on_timeline=lambda entry: told.append((entry, len(told))),
    )

    entries = [entry for entry, _ in told]
    assert Counter(entries) == Counter(observation.timeline)
    assert len(entries) == len(observation.timeline) > 5
    # In the order they happened, which is the order of time.
    assert [e.time for e in entries] == sorted(e.time for e in entries)
    assert any("restore" in e.what for e in entries if e.who == "lab")


@pytest.mark.looptime
async def test_a_scenario_run_is_watched_as_it_goes_and_ends_with_the_report() -> None:
    runner = ScenarioRun()
    assert runner.as_dict()["state"] == "ready"
    watched: list[tuple[RunState, int]] = []
    runner.subscribe(lambda: watched.append((runner.state, len(runner.timeline))))

    runner.start("first-boot-discovery", loop_time=True)
    workdir = runner.workdir
    observation = await runner.wait()

    assert runner.state is RunState.DONE
    assert runner.error is None
    assert observation.passed
    assert runner.observation is observation
    # Watchers heard of the timeline while it grew, entry by entry, and of the end.
    growing = [n for state, n in watched if state is RunState.RUNNING]
    assert growing == sorted(growing)
    assert set(range(1, len(observation.timeline) + 1)) <= set(growing)
    assert watched[-1] == (RunState.DONE, len(observation.timeline))
    # The live timeline is the observation's.
    assert runner.timeline == list(observation.timeline)
    assert runner.as_dict()["timeline"][0] == {
        "offset": "+0:00:00",
        "who": "lab",
        "what": "administrator imports CX600 4.0.7577.4372 (approved)",
    }
    # A fresh lab in a temporary directory of its own, gone at the end.
    assert workdir is not None
    assert workdir.name.startswith("scenario-first-boot-discovery-")
    assert not workdir.exists()


@pytest.mark.looptime
async def test_the_report_holds_what_lab_scenario_run_prints() -> None:
    runner = ScenarioRun()
    runner.start("first-boot-discovery", loop_time=True)
    observation = await runner.wait()
    report = runner.report
    assert report is not None

    assert report == scenario_report(observation)
    assert runner.text == render_report(report)
    scenario = observation.scenario
    # What the command prints, line by line, written out here as its users see it.
    printed = [
        f"{scenario.title} ({scenario.name})",
        "",
        f"Symptom:  {scenario.symptom}",
        "Fault:    none",
        "",
        f"What happened ({report.phone_time} of phone time in {observation.real_seconds:.1f} s):",
        *(
            f"  {line.offset:>12}  {entry.who:<10}  {entry.what}"
            for line, entry in zip(report.timeline, observation.timeline, strict=True)
        ),
        "",
        "Phone log:",
        *(f"  {evidence.line}" for evidence in observation.log),
        "",
        f"Observed: {scenario.expected}",
        f"Expected: {scenario.expected}",
        "Result:   as expected",
        "",
        f"Cause:    {scenario.cause}",
        f"Fix:      {scenario.fix}",
    ]
    assert runner.text == "\n".join(printed)
    assert report.timeline[-1].offset == "+" + report.phone_time
    assert report.as_dict()["result"] == "as expected"
    assert runner.as_dict()["report"] == report.as_dict()


def test_a_run_on_its_scaled_clock_reports_as_the_command_does(tmp_path: Path) -> None:
    name = "ucupdates-record-missing"
    done = subprocess.run(
        [sys.executable, "-m", "lab.cli", "scenario", "run", name],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    runner = ScenarioRun()
    # On the lab's own loop, as the command runs it (which leaves the current loop alone).
    run_event_loop(lambda: runner.run(name))
    assert runner.scale == get_scenario(name).scale
    assert runner.text is not None

    # The same sections in the same words; only times differ between two real runs.
    def sections(text: str) -> tuple[list[str], list[str], list[str]]:
        lines = text.splitlines()
        happened = next(i for i, line in enumerate(lines) if line.startswith("What happened"))
        log = lines.index("Phone log:")
        observed = next(i for i, line in enumerate(lines) if line.startswith("Observed:"))
        timeline = [line.split(maxsplit=1)[1] for line in lines[happened + 1 : log - 1]]
        return lines[:happened], timeline, lines[observed:]

    assert sections(runner.text) == sections(done.stdout.rstrip("\n"))
    assert done.stdout.count("ERROR dns: lookup of ucupdates-r2.contoso.test failed") == (
        runner.text.count("ERROR dns: lookup of ucupdates-r2.contoso.test failed")
    )


@pytest.mark.looptime
async def test_a_second_start_while_a_scenario_runs_is_refused() -> None:
    runner = ScenarioRun()
    runner.start("update-pending", loop_time=True)

    with pytest.raises(RunBusyError, match="scenario update-pending is still running"):
        runner.start("boot-failure", loop_time=True)
    with pytest.raises(ScenarioError, match="no scenario 'no-such-case'"):
        runner.start("no-such-case")

    observation = await runner.wait()
    assert observation.scenario.name == "update-pending"
    assert observation.passed
    # Once it has ended, the runner starts the next one, and shows that one.
    runner.start("boot-failure", loop_time=True)
    assert runner.timeline == []
    assert runner.report is None
    assert (await runner.wait()).passed
    assert runner.describe() == "scenario boot-failure"


@pytest.mark.looptime
async def test_cancelling_a_scenario_run_stops_its_lab_and_removes_its_directory() -> None:
    runner = ScenarioRun()
    runner.start("first-boot-discovery", loop_time=True)
    # In the middle: the phone is downloading.
    await until(runner, lambda: any(e.what.startswith("downloading") for e in runner.timeline))
    workdir = runner.workdir
    assert workdir is not None
    assert (workdir / "state" / "run.json").is_file()

    await runner.cancel()

    assert runner.state is RunState.CANCELLED
    assert not workdir.exists()
    assert runner.report is None
    with pytest.raises(RunError, match="was cancelled"):
        await runner.wait()
    # Nothing of the lab or its phones is left running on the loop.
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.looptime
async def test_a_run_cancelled_before_it_began_leaves_nothing() -> None:
    runner = ScenarioRun()
    runner.start("first-boot-discovery", loop_time=True)
    workdir = runner.workdir
    assert workdir is not None
    assert workdir.is_dir()

    await runner.cancel()

    assert runner.state is RunState.CANCELLED
    assert not workdir.exists()
    assert runner.timeline == []


@pytest.mark.looptime
async def test_a_run_whose_lab_cannot_start_fails_with_the_reason(lab_config: LabConfig) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        runner = ScenarioRun(lab_config.with_ports(admin=port))
        runner.start("first-boot-discovery", loop_time=True)
        with pytest.raises(LabStateError, match="the admin API cannot listen"):
            await runner.wait()

    assert runner.state is RunState.FAILED
    assert runner.error == (
        f"the admin API cannot listen on 127.0.0.1:{port}: Address already in use; is "
        "another lab running? (ports.admin in the config)"
    )
    assert runner.as_dict()["error"] == runner.error
    assert runner.workdir is not None
    assert not runner.workdir.exists()


# --- The demo, chapter by chapter ---------------------------------------------------------


@pytest.mark.looptime
async def test_the_demo_steps_through_its_five_chapters_with_next() -> None:
    demo = DemoRun()
    with pytest.raises(RunError, match="waits for no next chapter"):
        demo.next()

    demo.start(scale=None, image_size=SMALL_IMAGE)
    workdir = demo.workdir
    waited: list[tuple[int, list[int]]] = []
    while True:
        await until(demo, lambda: demo.waiting)
        if not demo.waiting:
            break
        assert demo.waiting_for is not None
        current = demo.current
        assert current is not None
        # Nothing of the next chapter is told before Next.
        waited.append((demo.waiting_for.number, [c.number for c in demo.chapters]))
        assert demo.as_dict()["waiting_for"] == {
            "number": demo.waiting_for.number,
            "title": CHAPTERS[demo.waiting_for.number - 1],
        }
        demo.next()
        await until(demo, lambda: not demo.waiting)

    assert demo.state is RunState.DONE, demo.error
    assert waited == [(2, [1]), (3, [1, 2]), (4, [1, 2, 3]), (5, [1, 2, 3, 4])]
    result = await demo.wait()
    assert result.ok
    assert demo.as_dict()["ok"] is True
    assert [(c.number, c.title) for c in demo.chapters] == list(enumerate(CHAPTERS, start=1))

    # Each line with its chapter, in plain text.
    lines = {c.number: "\n".join(c.lines) for c in demo.chapters}
    assert "Device Update Lab demo: lab contoso" in demo.preamble[0]
    assert "inside phone, firewall moved it out" in lines[1]
    assert "signed in as alice@contoso.test" in lines[2]
    assert f"left {PENDING} pending: only test devices get it" in lines[3]
    assert "#6 CX700   inside, never signed in" in lines[4]
    assert "call ended; phone in use: the restart waits until" in lines[4]
    assert "Every phone ended as it should." in lines[5]
    assert "System Information, as each phone shows it" in lines[5]
    assert all("\x1b" not in line for c in demo.chapters for line in c.lines)
    assert not any("[bold]" in line or "[/]" in line for c in demo.chapters for line in c.lines)

    # A fresh lab on free ports in a temporary directory, gone at the end.
    assert "DNS 127.10.0.2:10053" not in demo.preamble[1]
    assert workdir is not None
    assert not workdir.exists()
    with pytest.raises(RunError, match="the demo is done"):
        demo.next()


@pytest.mark.looptime
async def test_cancelling_the_demo_between_chapters_stops_its_lab_and_removes_its_directory() -> (
    None
):
    demo = DemoRun()
    demo.start(scale=None, image_size=SMALL_IMAGE)
    await until(demo, lambda: demo.waiting)
    demo.next()
    await until(demo, lambda: demo.waiting_for is not None and demo.waiting_for.number == 3)
    with pytest.raises(RunBusyError, match="the demo is still running"):
        demo.start(scale=None)
    workdir = demo.workdir
    assert workdir is not None
    assert (workdir / "state" / "run.json").is_file()

    await demo.cancel()

    assert demo.state is RunState.CANCELLED
    assert not demo.waiting
    assert demo.result is None
    assert [c.number for c in demo.chapters] == [1, 2]
    assert not workdir.exists()
    assert asyncio.all_tasks() == {asyncio.current_task()}


# --- `lab demo --step` --------------------------------------------------------------------


def test_lab_demo_step_waits_for_enter_and_runs_on_when_stdin_ends(tmp_path: Path) -> None:
    data = tomllib.loads(default_text())
    data["ports"] = {"dns": 0, "internal": 0, "external": 0, "edge": 0, "admin": 0}
    config = tmp_path / "lab.toml"
    config.write_text(tomli_w.dumps(data))
    state = tmp_path / "state"
    command = [
        str(Path(sys.executable).with_name("lab")),
        "--config",
        str(config),
        "demo",
        "--step",
        "--state-dir",
        str(state),
        "--scale",
        "600",
    ]
    env = {**os.environ, "COLUMNS": "250"}
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        out: list[str] = []
        for line in proc.stdout:
            out.append(line.rstrip("\n"))
            if line.startswith(("Press Enter for chapter 2:", "Press Enter for chapter 3:")):
                proc.stdin.write("\n")  # Enter
                proc.stdin.flush()
            elif line.startswith("Press Enter for chapter 4:"):
                proc.stdin.close()  # and no more: the rest runs straight through
        err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, "\n".join(out) + err
    assert err == ""

    def at(text: str) -> int:
        (index,) = [i for i, line in enumerate(out) if text in line]
        return index

    order = [
        at("1. How a phone finds the update service"),
        at("Press Enter for chapter 2: Before the update: users sign in"),
        at("2. Before the update: users sign in"),
        at("Press Enter for chapter 3: The administrator publishes firmware"),
        at("3. The administrator publishes firmware"),
        at("Press Enter for chapter 4: The phones are plugged in"),
        at("stdin has ended: the remaining chapters follow straight away"),
        at("4. The phones are plugged in"),
        at("5. How every phone ended"),
        at("Every phone ended as it should."),
    ]
    assert order == sorted(order)
    assert not any("Press Enter for chapter 5" in line for line in out)
    assert (state / STATE_MARKER).is_file()


def test_lab_demo_step_and_json_do_not_go_together(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--step", "--json"])
    assert exit_info.value.code == 2
    assert "argument --json: not allowed with argument --step" in capsys.readouterr().err
