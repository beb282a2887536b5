"""`lab scenario list` and `lab scenario run NAME`: replay a support case and check its outcome.

A run starts its own lab in this process, on the embedded default config with free ports,
in a fresh temporary state directory and PKI (or a new directory under ``--state-dir``,
kept for inspection), so it never touches a running lab. Phones run on a scaled clock.
Exit codes: 0 the expected outcome was observed, 1 it was not, 2 no such scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lab.cli import common
from lab.errors import ScenarioError
from lab.net.config import LabConfig, default_config
from lab.ops.runner import run_event_loop
from lab.ops.scenarios import SCENARIOS, Observation, Scenario, get_scenario, run_scenario


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``scenario list`` and ``scenario run``."""
    scenario = common.subcommand(sub, "scenario", "troubleshooting scenarios: list or run one")
    actions = scenario.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = common.subcommand(actions, "list", "every scenario with its symptom")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)

    run = common.subcommand(
        actions, "run", "run a scenario and check that its expected outcome is observed"
    )
    run.add_argument("name", metavar="NAME", help="a scenario name (see: lab scenario list)")
    run.add_argument("--json", action="store_true", help="print JSON")
    run.add_argument(
        "--scale",
        type=_scale,
        default=None,
        help="phone seconds per real second (default: the scenario's own, 600 or more)",
    )
    run.add_argument(
        "--no-fault",
        action="store_true",
        help="leave the scenario's fault out, to see what a healthy lab does "
        "(the expected outcome is then not observed: exit 1)",
    )
    run.set_defaults(func=cmd_run)


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"the time scale must be a number > 0, not {text}")
    return value


def cmd_list(args: argparse.Namespace) -> int:
    """Print every scenario's name and symptom."""
    if args.json:
        common.print_json([s.as_dict() for s in SCENARIOS])
        return 0
    table = Table(title="troubleshooting scenarios", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("symptom")
    for s in SCENARIOS:
        table.add_row(s.name, s.symptom)
    Console().print(table)
    print("run one with: lab scenario run NAME")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run one scenario; exit 0 only when the observed outcome is the expected one."""
    try:
        scenario = get_scenario(args.name)
    except ScenarioError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    scale = args.scale or scenario.scale
    given = args.state_dir is not common.DEFAULT_STATE_DIR
    with _workdir(scenario, args.state_dir if given else None) as workdir:
        config = _config(workdir)
        with _quiet_resets():
            observation: Observation = run_event_loop(
                lambda: run_scenario(
                    scenario, config, workdir, fault=not args.no_fault, scale=scale
                )
            )
        if args.json:
            common.print_json(
                {**observation.as_dict(), "state_dir": str(workdir) if given else None}
            )
        else:
            print(render(observation))
            if given:
                print(f"\nThe run's lab state, logs and phone files are in {workdir}")
    return 0 if observation.passed else 1


@contextlib.contextmanager
def _workdir(scenario: Scenario, parent: Path | None) -> Iterator[Path]:
    """A fresh directory for the run: temporary, or a new one under ``parent`` that is kept."""
    if parent is None:
        with tempfile.TemporaryDirectory(prefix=f"scenario-{scenario.name}-") as path:
            yield Path(path)
        return
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    yield Path(tempfile.mkdtemp(prefix=f"scenario-{scenario.name}-", dir=parent))


def _config(workdir: Path) -> LabConfig:
    """The embedded default lab (the scenarios' outcomes name its domains) on free ports."""
    return (
        default_config()
        .with_ports(dns=0, internal=0, external=0, edge=0, admin=0)
        .with_pki_dir(workdir / "certs")
    )


class _ResetFilter(logging.Filter):
    """Drops aiohttp's report of a write to a connection an immediate maintenance reset."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionResetError)


@contextlib.contextmanager
def _quiet_resets() -> Iterator[None]:
    # Cutting transfers is the point of a maintenance scenario; the server's handler then
    # fails to write and aiohttp prints a traceback that would bury the scenario's report.
    logger = logging.getLogger("aiohttp.server")
    quiet = _ResetFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def render(observation: Observation) -> str:
    """The run as text: title, what happened, the phone log lines, the outcome, the fix."""
    s = observation.scenario
    verdict = "as expected" if observation.passed else "NOT the expected outcome"
    scale = f", {observation.scale:g}x" if observation.scale else ""
    lines = [
        f"{s.title} ({s.name})",
        "",
        f"Symptom:  {s.symptom}",
        f"Fault:    {observation.fault or 'none'}",
        "",
        f"What happened ({_duration(observation.virtual_seconds)} of phone time in "
        f"{observation.real_seconds:.1f} s{scale}):",
    ]
    lines += [
        f"  {_offset(e.time - observation.start):>12}  {e.who:<10}  {e.what}"
        for e in observation.timeline
    ]
    lines += ["", "Phone log:"]
    lines += [f"  {line.line}" for line in observation.log] or ["  (no matching lines)"]
    lines += [
        "",
        f"Observed: {observation.observed}",
        f"Expected: {observation.expected}",
        f"Result:   {verdict}",
        "",
        f"Cause:    {s.cause}",
        f"Fix:      {s.fix}",
    ]
    return "\n".join(lines)


def _offset(seconds: float) -> str:
    """``+1d 02:03:04`` or ``+0:00:05``: how far into the run."""
    days, rest = divmod(round(seconds), 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02}:{secs:02}"
    return f"+{days}d {clock}" if days else f"+{clock}"


def _duration(seconds: float) -> str:
    return _offset(seconds)[1:]
