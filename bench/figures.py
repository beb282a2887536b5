"""How every benchmark reports: figures, each a subject measured against a baseline or a limit.

A figure holds both raw numbers (medians of the runs), the ratio and the target, so the
table and the JSON file say the same thing. ``passed`` is None for figures reported
without a target (the ratio to nginx, for instance).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any


def median(values: Iterable[float]) -> float:
    """The median of ``values`` (0 when there are none)."""
    items = list(values)
    return statistics.median(items) if items else 0.0


def compare(
    name: str,
    subject: str,
    subject_runs: Iterable[float],
    baseline: str,
    baseline_runs: Iterable[float],
    unit: str,
    target_ratio: float | None = None,
) -> dict[str, Any]:
    """A figure: median of ``subject_runs`` over median of ``baseline_runs`` (higher is better)."""
    value = median(subject_runs)
    base = median(baseline_runs)
    ratio = value / base if base else float("inf")
    return {
        "name": name,
        "subject": subject,
        "baseline": baseline,
        "unit": unit,
        "subject_value": round(value, 3),
        "baseline_value": round(base, 3),
        "ratio": round(ratio, 3),
        "target_ratio": target_ratio,
        "passed": None if target_ratio is None else ratio >= target_ratio,
    }


def limit(
    name: str, subject: str, runs: Iterable[float], unit: str, target_max: float
) -> dict[str, Any]:
    """A figure: the median of ``runs`` against an upper limit (lower is better)."""
    value = median(runs)
    return {
        "name": name,
        "subject": subject,
        "baseline": None,
        "unit": unit,
        "subject_value": round(value, 3),
        "baseline_value": None,
        "ratio": None,
        "target_max": target_max,
        "passed": value < target_max,
    }


def reported(name: str, subject: str, value: float | None, unit: str) -> dict[str, Any]:
    """A figure reported without a baseline or a target."""
    return {
        "name": name,
        "subject": subject,
        "baseline": None,
        "unit": unit,
        "subject_value": value,
        "baseline_value": None,
        "ratio": None,
        "passed": None,
    }


def passed(figures: Iterable[dict[str, Any]]) -> bool:
    """True when no figure with a target missed it."""
    return all(f["passed"] is not False for f in figures)
