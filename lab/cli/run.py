"""`lab up`, `lab status` and `lab demo`: running a lab and looking at it.

`lab demo --step` waits for a line on stdin (Enter) before each chapter but the first. It
reads whatever stdin is, so a script can step it through a pipe; when stdin ends (nothing
more to read: a closed pipe, /dev/null, a CI job), it says so and runs the remaining
chapters straight through.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from lab.cli import common
from lab.clock import LabClock, parse_lab_time
from lab.errors import ClockError
from lab.ops.adminclient import AdminClient
from lab.ops.runfile import read_run_file

if TYPE_CHECKING:
    from lab.ops.demo import BetweenChapters
    from lab.ops.runner import Lab


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add up, status and demo."""
    up = common.subcommand(sub, "up", "start the lab and run it until Ctrl-C or SIGTERM")
    up.add_argument(
        "--start",
        type=_lab_time,
        metavar="TIME",
        help="lab time at start, e.g. 2026-06-01T08:00:00Z (default: now); phones that "
        "take the lease follow the lab's clock",
    )
    up.add_argument(
        "--scale",
        type=common.time_scale,
        default=1.0,
        help="lab seconds per real second (default 1): at 60 a phone's day takes 24 minutes",
    )
    common.add_netns_options(up, "the lab")
    up.set_defaults(func=cmd_up)

    status = common.subcommand(sub, "status", "show the endpoints of the running lab")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)

    demo = common.subcommand(
        sub, "demo", "run a lab and a fleet of phones, and narrate how the phones update"
    )
    demo.add_argument(
        "--scale",
        type=common.time_scale,
        default=common.DEMO_SCALE,
        help=f"phone seconds per real second (default {common.DEMO_SCALE:g}: the five-minute "
        "wait before a restart takes five seconds)",
    )
    told = demo.add_mutually_exclusive_group()
    told.add_argument(
        "--json", action="store_true", help="print the outcome as JSON instead of narrating"
    )
    told.add_argument(
        "--step",
        action="store_true",
        help="wait for Enter before each chapter (when stdin ends: straight through)",
    )
    common.add_netns_options(demo, "the demo's lab")
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
    """Each front end's pool, mode, transfers in progress and open connections."""
    table = Table(title="front ends", title_justify="left")
    for column in ("pool", "server", "mode", "transfers", "connections"):
        table.add_column(column)
    for name, server in sorted(servers.items(), key=lambda item: (item[1]["pool"], item[0])):
        table.add_row(
            server["pool"],
            name,
            server["mode"],
            str(len(server["transfers"])),
            str(server["connections"]),
        )
    return table


def cmd_up(args: argparse.Namespace) -> int:
    """Start the lab; print every endpoint; stop cleanly on a signal."""
    from lab.ops.runner import Lab, run_event_loop, serve_until_signalled

    config = common.config_from(args)
    state = common.state_dir(args)
    console = Console()

    def ready(lab: Lab) -> None:
        print_lab_up(console, lab)
        # A line tools can wait for on a pipe.
        print("ready", flush=True)

    clock = LabClock.starting(args.start, args.scale)
    with contextlib.ExitStack() as stack:
        config, network = common.own_network(args, config, stack)
        lab = Lab(config, state, clock=clock, network=network, capture=args.capture)
        run_event_loop(lambda: serve_until_signalled(lab, ready))
    console.print("lab stopped")
    return 0


def print_lab_up(console: Console, lab: Lab) -> None:
    """What a lab started from the CLI says once it is up: endpoints, state, clock."""
    console.print(endpoints_table(lab.endpoints(), f"lab {lab.config.name} is up"))
    console.print(f"state: {lab.state_dir}  (run.json, lease.json)  stop with Ctrl-C")
    console.print(_clock_line(lab.clock.as_dict()))
    if lab.network is not None:
        for line in network_lines(lab.network.snapshot()):
            console.print(line)


def network_lines(network: dict[str, Any]) -> list[str]:
    """The lab's own network in a few lines: segments, router, capture (run.json's or the
    admin API's ``network``)."""
    lines = ["network: the lab's own (namespaces); the router forwards by nftables rules"]
    for name, segment in network["segments"].items():
        hosts = ", ".join(segment["hosts"]) or "phones only"
        lines.append(f"  {name:<9} {segment['range']:<16} router {segment['router']:<13} {hosts}")
    capture = network.get("capture") or {}
    if capture.get("running"):
        lines.append(f"capturing: {capture['file']} (TLS keys: {capture['keys']})")
    elif capture.get("file"):
        lines.append(f"last capture: {capture['file']} ({capture.get('packets')} packets)")
    return lines


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
    if "lab_time" in info:
        console.print(f"lab time now: {info['lab_time']}; {_clock_line(info.get('clock'))}")
    console.print(endpoints_table(info["endpoints"], "endpoints"))
    servers = info.get("pool", {}).get("servers", {})
    if servers:
        console.print(servers_table(servers))
    for line in status_lines(info.get("pool", {})):
        console.print(line)
    if info.get("network"):
        for line in network_lines(info["network"]):
            console.print(line)
    return 0 if info["alive"] else 1


def status_lines(pool: dict[str, Any]) -> list[str]:
    """The snapshot checks are decided on, and what the limits hold back right now:
    connections, locked accounts, throttled addresses (docs/security.md)."""
    lines: list[str] = []
    store = pool.get("store") or {}
    if store:
        lines.append(
            f"update store: snapshot {store['generation']} ({store['rules']} rules, "
            f"{store['test_devices']} test devices); {store['answers_kept']} answers kept "
            f"({store['answer_bytes'] / 1024:.1f} KiB)"
        )
    budget = pool.get("connections") or {}
    if budget:
        lines.append(
            f"connections: {budget['open']} open of {budget['total_cap']} "
            f"(at most {budget['per_address_cap']} per address, "
            f"{budget['admin_reserve']} kept for the admin API); "
            f"refused: {budget['refused_per_address']} over an address's cap, "
            f"{budget['refused_total']} over the total"
        )
    timed_out = sum(
        site.get("timed_out", 0)
        for server in pool.get("servers", {}).values()
        for site in server.get("limits", {}).values()
    )
    if timed_out:
        lines.append(f"connections cut for sending too slowly: {timed_out}")
    ntlm = pool.get("ntlm") or {}
    for title, key in (
        ("locked accounts", "locked_accounts"),
        ("throttled addresses", "throttled_addresses"),
    ):
        held = ntlm.get(key) or {}
        if held:
            shown = ", ".join(f"{who} ({seconds} s left)" for who, seconds in held.items())
            lines.append(f"{title}: {shown}")
    return lines


def _lab_time(text: str) -> float:
    try:
        return parse_lab_time(text)
    except ClockError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _clock_line(clock: dict[str, Any] | None) -> str:
    """The lab's clock in words (run.json's ``clock``)."""
    if not clock:
        return "lab time: the wall clock"
    speed = "real time" if clock["scale"] == 1 else f"{clock['scale']:g} times real time"
    return f"lab time: {clock['start']} at start, running at {speed}"


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo on the chosen config: in --state-dir if given, else in a temporary one."""
    from lab.ops.demo import prepare_state_dir, run_demo
    from lab.ops.runner import run_event_loop

    config = common.config_from(args)
    console = Console(quiet=args.json)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Plain output (CI, pipes): wide enough that the tables need not squeeze.
        console = Console(quiet=args.json, width=120)
    with contextlib.ExitStack() as stack:
        # The global option's default object itself means --state-dir was not given.
        if args.state_dir is common.DEFAULT_STATE_DIR:
            temporary = stack.enter_context(tempfile.TemporaryDirectory(prefix="lab-demo-"))
            state = Path(temporary) / "state"
            console.print("state: a temporary directory, removed at the end (--state-dir keeps it)")
        else:
            state = prepare_state_dir(args.state_dir)
            console.print(f"state: {state} (kept: audit logs, store, phones' downloads)")
        # A fresh PKI with the state: the phones trust whatever CA the lease names.
        config = config.with_pki_dir(state / "certs")
        config, network = common.own_network(args, config, stack)
        gate = enter_between_chapters(console, StdinLines()) if args.step else None
        result = run_event_loop(
            lambda: run_demo(
                config,
                state,
                console,
                scale=args.scale,
                between_chapters=gate,
                network=network,
                capture=args.capture,
            )
        )
    if args.json:
        common.print_json(result.as_dict())
    return 0 if result.ok else 1


def enter_between_chapters(console: Console, lines: StdinLines) -> BetweenChapters:
    """A wait between the demo's chapters for a line from ``lines`` (Enter on a terminal),
    until they end: from then on the chapters follow each other straight away."""
    ended = False

    async def wait(number: int, title: str) -> None:
        nonlocal ended
        if ended:
            return
        console.print(f"[dim]Press Enter for chapter {number}: {title}[/]")
        # On a pipe the prompt must be out before the demo waits for its answer.
        console.file.flush()
        if await lines.readline() is None:
            ended = True
            console.print("stdin has ended: the remaining chapters follow straight away")

    return wait


class StdinLines:
    """Lines of stdin, read without blocking the loop: a terminal or a pipe is waited on
    with the loop's reader, a file (or /dev/null, which cannot be waited on) read at once."""

    def __init__(self, fd: int | None = None) -> None:
        self.fd = sys.stdin.fileno() if fd is None else fd
        self._buffer = b""
        self._ended = False

    async def readline(self) -> str | None:
        """The next line without its end, or None once stdin has ended."""
        while b"\n" not in self._buffer and not self._ended:
            chunk = await self._read()
            self._ended = not chunk
            self._buffer += chunk
        if not self._buffer:
            return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    async def _read(self) -> bytes:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        try:
            loop.add_reader(self.fd, ready)
        except OSError:
            return self._read_now()  # a file: there is no waiting for it
        try:
            await readable
        finally:
            loop.remove_reader(self.fd)
        return self._read_now()

    def _read_now(self) -> bytes:
        try:
            return os.read(self.fd, 4096)
        except OSError:
            return b""  # stdin closed under us: it has ended
