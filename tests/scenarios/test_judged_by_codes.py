"""Scenarios judge a phone by its log's codes and facts, never by the log's sentences.

Every line a phone writes during these runs says only a placeholder: codes and facts stay,
the words go. Each scenario must still come out as it expects (and without its fault, as a
plain update), so an outcome that leaned on a sentence would fail here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from emulator.phonelog import LogEntry, LogLevel, PhoneLog
from lab.net.config import LabConfig
from lab.ops.harness import NEW
from lab.ops.scenarios import SCENARIOS, Scenario, run_scenario

PLACEHOLDER = "(words for people only)"


@pytest.fixture
def wordless_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every phone log line written from now on says only the placeholder."""
    add = PhoneLog.add

    def add_without_words(
        self: PhoneLog, time: float, level: LogLevel, topic: str, message: str, **coded: Any
    ) -> LogEntry:
        return add(self, time, level, topic, PLACEHOLDER, **coded)

    monkeypatch.setattr(PhoneLog, "add", add_without_words)


def ids(scenario: Scenario) -> str:
    return scenario.name


@pytest.mark.looptime
@pytest.mark.usefixtures("wordless_logs")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids)
async def test_the_outcome_comes_from_codes_and_facts_alone(
    scenario: Scenario, lab_config: LabConfig, tmp_path: Path
) -> None:
    observation = await run_scenario(scenario, lab_config, tmp_path)

    assert observation.observed == scenario.expected
    # The evidence is chosen by code too, and shown in the (here missing) words.
    assert observation.log
    assert all(line.line.endswith(PLACEHOLDER) for line in observation.log)


@pytest.mark.looptime
@pytest.mark.usefixtures("wordless_logs")
async def test_without_its_fault_a_wordless_phone_still_reads_as_updated(
    lab_config: LabConfig, tmp_path: Path
) -> None:
    faulty = next(s for s in SCENARIOS if s.name == "outside-no-user")
    observation = await run_scenario(faulty, lab_config, tmp_path, fault=False)

    assert observation.observed == f"updated {NEW}"
