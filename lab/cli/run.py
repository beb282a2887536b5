"""`lab up`, `lab status` and `lab demo`: running a lab and looking at it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from lab.adminclient import AdminClient
from lab.cli import common
from lab.runner import Lab, read_run_file, run_event_loop, serve_until_signalled


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add up, status and demo."""
    up = common.subcommand(sub, "up", "start the lab and run it until Ctrl-C or SIGTERM")
    up.set_defaults(func=cmd_up)

    status = common.subcommand(sub, "status", "show the endpoints of the running lab")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)

    demo = common.subcommand(sub, "demo", "start the lab and show phones' view of it")
    demo.set_defaults(func=cmd_demo)


def _endpoint_rows(endpoints: dict[str, dict[str, str]]) -> list[tuple[str, str, str]]:
    return [
        (service, transport, address)
        for service, listeners in sorted(endpoints.items())
        for transport, address in sorted(listeners.items())
    ]


def endpoints_table(endpoints: dict[str, dict[str, str]], title: str) -> Table:
    """A readable table of endpoints."""
    table = Table(title=title, title_justify="left")
    for column in ("service", "listener", "address"):
        table.add_column(column)
    for row in _endpoint_rows(endpoints):
        table.add_row(*row)
    return table


def servers_table(servers: dict[str, dict[str, Any]]) -> Table:
    """Each front end's mode, transfers in progress and open connections."""
    table = Table(title="front ends", title_justify="left")
    for column in ("server", "mode", "transfers in progress", "connections"):
        table.add_column(column)
    for name, server in sorted(servers.items()):
        table.add_row(
            name, server["mode"], str(len(server["transfers"])), str(server["connections"])
        )
    return table


def cmd_up(args: argparse.Namespace) -> int:
    """Start the lab; print every endpoint; stop cleanly on a signal."""
    config = common.config_from(args)
    state = common.state_dir(args)
    console = Console()

    def ready(lab: Lab) -> None:
        console.print(endpoints_table(lab.endpoints(), f"lab {config.name} is up"))
        console.print(f"state: {state}  (run.json, lease.json)  stop with Ctrl-C")
        # A line tools can wait for on a pipe.
        print("ready", flush=True)

    run_event_loop(lambda: serve_until_signalled(Lab(config, state), ready))
    console.print("lab stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the running lab's endpoints and each front end's mode and transfers."""
    state = common.state_dir(args, create=False)
    info = read_run_file(state)
    if info["alive"]:
        # The live view (modes, transfers, firewall) comes from the lab itself.
        info = {**info, **AdminClient(state).get("/v1/status"), "alive": True}
    if args.json:
        common.print_json(info)
        return 0
    console = Console()
    alive = "running" if info["alive"] else "NOT running (stale run.json)"
    console.print(f"lab from {info['config']}: pid {info['pid']} {alive}")
    console.print(endpoints_table(info["endpoints"], "endpoints"))
    servers = info.get("pool", {}).get("servers", {})
    if servers:
        console.print(servers_table(servers))
    return 0 if info["alive"] else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo on the chosen config."""
    from lab.demo import run_demo

    config = common.config_from(args)
    ok = run_event_loop(lambda: run_demo(config, common.state_dir(args), Console()))
    if not ok:
        print("demo: some checks did not come out as expected", file=sys.stderr)
    return 0 if ok else 1
