"""Every troubleshooting scenario as a test: it shows its expected outcome, and it can tell.

Each scenario runs a real lab and real phones on fake loop time (looptime), exactly as
`lab scenario run` does on a scaled clock. A scenario passes with its fault; without its
fault the same phone simply updates, which the scenario reports as a failure; a scenario
with no fault fails when it is told to expect something else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lab.errors import ScenarioError
from lab.net.config import LabConfig
from lab.ops.harness import FACTORY, NEW
from lab.ops.scenarios import (
    SCENARIOS,
    Scenario,
    get_scenario,
    readme_table,
    run_scenario,
    troubleshooting_table,
)
from lab.ops.scenarios.framework import NameTestDevice, PhoneSpec, PowerOn, Settle, Setup

BY_NAME = {s.name: s for s in SCENARIOS}
ISSUE = {
    # What the issue asks for, at least, and the scenario that shows it.
    "a phone never signed in finds the service through ucupdates-r2": "first-boot-discovery",
    "the ucupdates-r2 record is missing": "ucupdates-record-missing",
    "the record exists only in the SIP domain": "ucupdates-only-in-sip-domain",
    "the server certificate lacks the ucupdates-r2 name": "certificate-without-ucupdates-name",
    "the phone's clock is wrong": "phone-clock-wrong",
    "the update is still pending": "update-pending",
    "outside with no user signed in": "outside-no-user",
    "outside signed in (NTLM)": "outside-signed-in",
    # Issue 16: import is per pool, which replaced "imported on one front end only".
    "imported into one pool only": "imported-into-one-pool-only",
    "maintenance drain during downloads": "maintenance-drain",
    "immediate maintenance with resume on the other server": "maintenance-immediate",
    "restore": "restore-to-backup",
    "power lost while flashing": "power-cut-while-installing",
    "boot failure back to the backup": "boot-failure",
    "a tampered image": "tampered-image",
    "a wrongly signed catalog": "wrongly-signed-catalog",
    "a phone busy in calls": "busy-in-calls",
    "the 24-hour check picking up a newly approved version": "approved-at-24-hour-check",
    # Issue 16: the reverse proxy's classic mistakes.
    "the proxy's certificate lacks the external web name": (
        "proxy-certificate-without-external-web-name"
    ),
    "the proxy bridges to the internal port": "proxy-bridges-to-internal-port",
    "the proxy does not trust the front ends' CA": "proxy-does-not-trust-internal-ca",
    "the proxy strips or answers the NTLM exchange": "proxy-strips-ntlm",
}


# How the subject updates without the fault, where the fault is not the only thing the
# scenario shows: its phones run before the approval and see it at the 24-hour check.
WITHOUT_THE_FAULT = {"imported-into-one-pool-only": " at the periodic check (every 24 h)"}


def ids(scenario: Scenario) -> str:
    return scenario.name


@pytest.mark.looptime
@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids)
async def test_the_scenario_shows_its_expected_outcome(
    scenario: Scenario, lab_config: LabConfig, tmp_path: Path
) -> None:
    observation = await run_scenario(scenario, lab_config, tmp_path)

    assert observation.observed == scenario.expected, observation.log
    assert observation.passed
    assert observation.settled
    assert observation.fault == (scenario.fault.describe() if scenario.fault else None)
    # The log lines that show it (every code the scenario lists), and a timeline that
    # starts with the phones.
    assert observation.log
    shown = {line.entry.code for line in observation.log}
    assert sorted(set(scenario.evidence) - shown) == [], "evidence listed but never logged"
    times = [e.time for e in observation.timeline]
    assert times == sorted(times)
    assert times[0] == observation.start
    assert observation.virtual_seconds > 0


@pytest.mark.looptime
@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids)
async def test_the_scenario_fails_without_its_fault_or_with_another_expected_outcome(
    scenario: Scenario, lab_config: LabConfig, tmp_path: Path
) -> None:
    if scenario.fault is not None:
        observation = await run_scenario(scenario, lab_config, tmp_path, fault=False)
        # Without the fault the phone simply updates (a phone at home through the edge), and
        # the scenario says it failed.
        at_home = not scenario.phones[scenario.subject].inside
        how = WITHOUT_THE_FAULT.get(scenario.name, " through the edge" if at_home else "")
        assert observation.observed == f"updated {NEW}" + how
        assert observation.fault is None
    else:
        other = f"stayed on {FACTORY} (something else)"
        observation = await run_scenario(scenario, lab_config, tmp_path, expected=other)
        assert observation.observed == scenario.expected
        assert observation.expected == other
    assert not observation.passed


@pytest.mark.looptime
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s.depends_on], ids=ids)
async def test_a_scenario_without_a_fault_fails_without_what_it_depends_on(
    scenario: Scenario, lab_config: LabConfig, tmp_path: Path
) -> None:
    assert scenario.depends_on is not None
    without = scenario.depends_on.without(scenario)
    observation = await run_scenario(without, lab_config, tmp_path)
    # The same story with its key step taken away ends otherwise, and says it failed.
    assert observation.observed != scenario.expected, scenario.depends_on.what
    assert not observation.passed


def test_every_scenario_names_what_it_depends_on() -> None:
    assert [s.name for s in SCENARIOS if s.fault is None and s.depends_on is None] == []
    restore = BY_NAME["restore-to-backup"]
    assert restore.depends_on is not None
    lacking = dataclasses.replace(restore.depends_on, replace=((Settle(999.0), None),))
    with pytest.raises(ScenarioError, match="its dependency names steps it lacks"):
        lacking.without(restore)


def test_the_catalogue_covers_the_issue_with_distinct_kebab_case_names() -> None:
    assert len(BY_NAME) == len(SCENARIOS)
    assert set(ISSUE.values()) <= set(BY_NAME)
    for scenario in SCENARIOS:
        assert scenario.evidence, scenario.name
        assert all((scenario.title, scenario.symptom, scenario.cause, scenario.fix))
    # Outcomes that differ tell scenarios apart. Two phones told "no update" share theirs
    # and differ in their evidence: which pool answered (update-pending: the discovery pool,
    # whose rule holds the version pending; imported-into-one-pool-only: the home pool).
    expected = [s.expected for s in SCENARIOS]
    shared = {e for e in expected if expected.count(e) > 1}
    assert shared == {f"stayed on {FACTORY}"}
    assert [s.name for s in SCENARIOS if s.expected in shared] == [
        "update-pending",
        "imported-into-one-pool-only",
    ]


def test_a_scenario_is_found_by_name_and_an_unknown_name_lists_the_known_ones() -> None:
    assert get_scenario("tampered-image") is BY_NAME["tampered-image"]
    with pytest.raises(ScenarioError, match=r"no scenario 'tampered' \(known: first-boot"):
        get_scenario("tampered")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Tampered Image"}, "is not kebab-case"),
        ({"subject": 1}, "no phone 1 to observe"),
        ({"subject": -1}, "no phone -1 to observe"),
        ({"script": (PowerOn((0, 1)), Settle())}, "no phone 1 to power on"),
    ],
)
def test_a_badly_defined_scenario_is_refused(changes: dict[str, object], message: str) -> None:
    base = BY_NAME["first-boot-discovery"]
    with pytest.raises(ScenarioError, match=message):
        dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_test_device_must_be_one_of_the_scenario_phones() -> None:
    with pytest.raises(ScenarioError, match="no phone 2 to name a test device"):
        Scenario(
            name="x",
            title="x",
            symptom="x",
            cause="x",
            fix="x",
            expected="x",
            setup=Setup(admin=(NameTestDevice(phone=2),)),
            phones=(PhoneSpec(), PhoneSpec(index=2)),
        )


def test_the_readme_table_maps_each_symptom_to_its_cause_and_fix() -> None:
    table = readme_table()
    lines = table.splitlines()
    assert lines[:2] == ["| Symptom | Cause | Fix | See it |", "| --- | --- | --- | --- |"]
    assert len(lines) == 2 + len(SCENARIOS)
    for line, scenario in zip(lines[2:], SCENARIOS, strict=True):
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert cells == [
            scenario.symptom,
            scenario.cause,
            scenario.fix,
            f"`lab scenario run {scenario.name}`",
        ]


def test_the_readme_shows_the_table_as_the_catalogue_makes_it() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    assert readme_table().rstrip("\n") in readme


def test_the_table_keeps_each_text_in_its_cell() -> None:
    odd = dataclasses.replace(
        BY_NAME["first-boot-discovery"],
        symptom="a | b",
        cause="ucupdates-r2.<domain>\n  spread over lines",
    )
    (row,) = troubleshooting_table([odd]).splitlines()[2:]
    assert row.startswith(r"| a \| b | ucupdates-r2.&lt;domain&gt; spread over lines | ")
