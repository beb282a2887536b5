"""`lab scenario list` and `lab scenario run NAME`: replay a support case and check its outcome.

A run starts its own lab in this process, on the embedded default config with free ports,
in a fresh temporary state directory and PKI (or a new directory under ``--state-dir``,
kept for inspection), so it never touches a running lab. Phones run on a scaled clock.
Exit codes: 0 the expected outcome was observed, 1 it was not, 2 no such scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from rich.console import Console
from rich.table import Table

from lab.cli import common
from lab.errors import ScenarioError
from lab.net.config import default_config


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
        type=common.time_scale,
        default=None,
        help="phone seconds per real second (default: the scenario's own, 600 or more)",
    )
    run.add_argument(
        "--no-fault",
        action="store_true",
        help="leave the scenario's fault out, to see what a healthy lab does "
        "(the expected outcome is then not observed: exit 1)",
    )
    common.add_netns_options(run, "the scenario's lab")
    run.set_defaults(func=cmd_run)


def cmd_list(args: argparse.Namespace) -> int:
    """Print every scenario's name and symptom."""
    from lab.ops.scenarios import SCENARIOS

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
    from lab.ops.runner import run_event_loop
    from lab.ops.runs import ScenarioRun
    from lab.ops.scenarios import Observation, get_scenario
    from lab.ops.scenarios.report import render_report, scenario_report

    try:
        scenario = get_scenario(args.name)
    except ScenarioError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    # A capture is evidence: the run's directory is kept (under ./state by default).
    given = args.state_dir is not common.DEFAULT_STATE_DIR or args.capture is not None
    with contextlib.ExitStack() as stack:
        _, network = common.own_network(args, default_config(), stack)
        runner = ScenarioRun(
            keep_under=args.state_dir if given else None,
            network=network,
            capture=args.capture or (scenario.name if args.capture is not None else None),
        )
        observation: Observation = run_event_loop(
            lambda: runner.run(scenario, fault=not args.no_fault, scale=args.scale)
        )
    if args.json:
        common.print_json(
            {**observation.as_dict(), "state_dir": str(runner.workdir) if given else None}
        )
    else:
        print(render_report(scenario_report(observation)))
        if given:
            print(f"\nThe run's lab state, logs and phone files are in {runner.workdir}")
        if args.capture is not None and runner.workdir is not None:
            pcap = runner.workdir / "state" / "captures" / f"{runner.capture}.pcap"
            print(f"The capture of its network: {pcap} (TLS keys: {pcap.with_suffix('.keys')})")
    return 0 if observation.passed else 1
