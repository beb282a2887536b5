"""Troubleshooting scenarios (`lab scenario list|run`): the framework and the catalogue."""

from __future__ import annotations

from lab.ops.scenarios.catalogue import SCENARIOS
from lab.ops.scenarios.framework import (
    Observation,
    Scenario,
    describe_outcome,
    find,
    run_scenario,
    troubleshooting_table,
)


def get_scenario(name: str) -> Scenario:
    """The catalogue's scenario called ``name``; ScenarioError naming the known ones otherwise."""
    return find(SCENARIOS, name)


def readme_table() -> str:
    """The README's troubleshooting table (Markdown), made from the catalogue."""
    return troubleshooting_table(SCENARIOS)


__all__ = [
    "SCENARIOS",
    "Observation",
    "Scenario",
    "describe_outcome",
    "get_scenario",
    "readme_table",
    "run_scenario",
    "troubleshooting_table",
]
