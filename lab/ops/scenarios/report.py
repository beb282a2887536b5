"""A scenario run's report: what `lab scenario run` prints and the console shows.

One function gives the report as data (`scenario_report`), one renders it as the text the
CLI prints (`render_report`); the console shows the same data, so both tell a run alike:
title, symptom and fault, what happened (the timeline), the phone log lines that show it,
the observed and expected outcome, the result, then cause and fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lab.ops.scenarios.framework import Observation, TimelineEntry


@dataclass(frozen=True)
class TimelineLine:
    """One line of the timeline as the report shows it: how far into the run, who, what."""

    offset: str
    """``+0:00:05`` or ``+1d 02:03:04`` of phone time since the phones were made."""
    who: str
    what: str

    def render(self) -> str:
        """The line as `lab scenario run` prints it."""
        return f"  {self.offset:>12}  {self.who:<10}  {self.what}"


@dataclass(frozen=True)
class ScenarioReport:
    """A run of a scenario as its report tells it, field by field."""

    name: str
    title: str
    symptom: str
    fault: str | None
    """The fault as applied; None when the scenario has none or the run left it out."""
    phone_time: str
    """How much phone time the run took (``1d 02:03:04``, ``0:05:00``)."""
    real_seconds: float
    scale: float | None
    """Phone seconds per real second, or None on the loop's own time."""
    timeline: tuple[TimelineLine, ...]
    evidence: tuple[str, ...]
    """The phone log lines that show the outcome, as the phones' logs write them."""
    observed: str
    expected: str
    passed: bool
    cause: str
    fix: str

    @property
    def result(self) -> str:
        """The verdict in words."""
        return "as expected" if self.passed else "NOT the expected outcome"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "name": self.name,
            "title": self.title,
            "symptom": self.symptom,
            "fault": self.fault,
            "phone_time": self.phone_time,
            "real_seconds": round(self.real_seconds, 3),
            "scale": self.scale,
            "timeline": [
                {"offset": line.offset, "who": line.who, "what": line.what}
                for line in self.timeline
            ],
            "evidence": list(self.evidence),
            "observed": self.observed,
            "expected": self.expected,
            "passed": self.passed,
            "result": self.result,
            "cause": self.cause,
            "fix": self.fix,
        }


def scenario_report(observation: Observation) -> ScenarioReport:
    """The report of a finished run."""
    s = observation.scenario
    return ScenarioReport(
        name=s.name,
        title=s.title,
        symptom=s.symptom,
        fault=observation.fault,
        phone_time=duration(observation.virtual_seconds),
        real_seconds=observation.real_seconds,
        scale=observation.scale,
        timeline=tuple(timeline_line(e, observation.start) for e in observation.timeline),
        evidence=tuple(line.line for line in observation.log),
        observed=observation.observed,
        expected=observation.expected,
        passed=observation.passed,
        cause=s.cause,
        fix=s.fix,
    )


def render_report(report: ScenarioReport) -> str:
    """The report as text: title, what happened, the phone log lines, the outcome, the fix."""
    scale = f", {report.scale:g}x" if report.scale else ""
    spent = f"{report.phone_time} of phone time in {report.real_seconds:.1f} s{scale}"
    lines = [
        f"{report.title} ({report.name})",
        "",
        f"Symptom:  {report.symptom}",
        f"Fault:    {report.fault or 'none'}",
        "",
        f"What happened ({spent}):",
    ]
    lines += [line.render() for line in report.timeline]
    lines += ["", "Phone log:"]
    lines += [f"  {line}" for line in report.evidence] or ["  (no matching lines)"]
    lines += [
        "",
        f"Observed: {report.observed}",
        f"Expected: {report.expected}",
        f"Result:   {report.result}",
        "",
        f"Cause:    {report.cause}",
        f"Fix:      {report.fix}",
    ]
    return "\n".join(lines)


def timeline_line(entry: TimelineEntry, start: float) -> TimelineLine:
    """``entry`` as the report shows it, its offset counted from phone time ``start``."""
    return TimelineLine(offset(entry.time - start), entry.who, entry.what)


def offset(seconds: float) -> str:
    """``+1d 02:03:04`` or ``+0:00:05``: how far into the run."""
    days, rest = divmod(round(seconds), 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02}:{secs:02}"
    return f"+{days}d {clock}" if days else f"+{clock}"


def duration(seconds: float) -> str:
    """``1d 02:03:04`` or ``0:00:05``: a length of phone time."""
    return offset(seconds)[1:]
