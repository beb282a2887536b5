"""`lab scenario list` and `lab scenario run`: a real run on a scaled clock, and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.cli import main
from lab.ops.scenarios import SCENARIOS, get_scenario


def lab_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lab`` as a process, as a support engineer would."""
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=50,
        check=False,
    )


def test_run_replays_a_scenario_on_the_scaled_clock_and_exits_0(tmp_path: Path) -> None:
    scenario = get_scenario("ucupdates-record-missing")
    done = lab_process("scenario", "run", scenario.name, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert out.startswith(f"{scenario.title} ({scenario.name})\n")
    assert f"Fault:    {scenario.fault.describe()}\n" in out  # type: ignore[union-attr]
    assert "of phone time in" in out
    assert "ERROR dns: lookup of ucupdates-r2.contoso.test failed" in out
    assert f"Observed: {scenario.expected}\nExpected: {scenario.expected}\n" in out
    assert "Result:   as expected\n" in out
    assert f"Fix:      {scenario.fix}" in out
    # A fresh temporary state: nothing is left in the working directory.
    assert list(tmp_path.iterdir()) == []


def test_run_json_shows_the_same_on_a_scaled_clock(tmp_path: Path) -> None:
    done = lab_process("scenario", "run", "first-boot-discovery", "--json", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["name"] == "first-boot-discovery"
    assert data["passed"] is True
    assert data["observed"] == data["expected"] == get_scenario("first-boot-discovery").expected
    assert data["scale"] == 600
    # Phone time ran far faster than real time (600x, less the real time start-up takes).
    assert data["virtual_seconds"] > 20 * data["real_seconds"]
    offsets = [entry["offset"] for entry in data["timeline"]]
    assert offsets == sorted(offsets)
    assert offsets[0] == 0
    updated = [entry for entry in data["log"] if entry["code"] == "updated"]
    assert updated
    assert updated[0]["facts"]["version"]
    assert "update complete" in updated[0]["line"]
    assert data["state_dir"] is None


def test_run_without_the_fault_exits_1_and_keeps_its_state_under_the_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "run.json").write_text("{}")  # a running lab's own file: left alone
    args = ["--state-dir", str(state), "scenario", "run", "tampered-image", "--no-fault"]
    assert main([*args, "--scale", "1000"]) == 1

    out = capsys.readouterr().out
    assert "Fault:    none\n" in out
    assert "Observed: updated 4.0.7577.4372\n" in out
    assert "Result:   NOT the expected outcome\n" in out
    (kept,) = [p for p in state.iterdir() if p.name != "run.json"]
    assert kept.name.startswith("scenario-tampered-image-")
    assert (kept / "state" / "lease.json").is_file()
    assert (kept / "certs" / "ca.pem").is_file()
    assert f"are in {kept}" in out
    assert (state / "run.json").read_text() == "{}"


def test_an_unknown_scenario_exits_2_with_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "run", "no-such-case"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("lab: no scenario 'no-such-case' (known: first-boot-discovery, ")
    assert all(s.name in err for s in SCENARIOS)


def test_a_bad_scale_is_a_bad_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["scenario", "run", "boot-failure", "--scale", "0"])
    assert exit_.value.code == 2
    assert "argument --scale: '0' is not a time scale (a number > 0)" in capsys.readouterr().err


def test_list_shows_every_name_and_symptom(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data] == [s.name for s in SCENARIOS]
    assert [d["symptom"] for d in data] == [s.symptom for s in SCENARIOS]
    assert data[1]["fault"] == "no ucupdates-r2.contoso.test record in DNS"
    assert data[0]["fault"] is None

    assert main(["scenario", "list"]) == 0
    table = capsys.readouterr().out
    assert all(s.name in table for s in SCENARIOS)
    assert "run one with: lab scenario run NAME" in table
