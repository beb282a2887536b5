"""Runtime commands that change a running lab through its admin API.

`lab firewall`, `lab dns fault`, `lab maintenance` and `lab events`; each finds the lab
from ``--state-dir`` and fails with exit code 1 and the reason when none is running.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from lab.cli import common
from lab.cli.run import servers_table
from lab.ops.adminclient import AdminClient

FAULT_KINDS = ("remove", "servfail", "delay", "drop")
MAINTENANCE_NOTE = (
    "Maintenance follows the semantics of Enter-CcUpdate and Exit-CcUpdate, cmdlets of the "
    "Cloud Connector Edition appliance, not of Lync Server: on a Lync pool, drain a front end "
    "with Stop-CsWindowsService -Graceful (Start-CsWindowsService brings it back). "
    "Microsoft's page on Enter-CcUpdate contradicts itself: its summary drains the appliance "
    "(calls in progress finish, new ones are refused), its detailed description stops all "
    "services at once, ending calls. The lab has both modes: `enter` drains, after the "
    "summary (transfers in progress finish; new requests get 503 with Retry-After and go to "
    "the other front ends); `enter --immediate` stops at once, after the detailed "
    "description (transfers in progress are cut). `exit` returns the server to production, "
    "as Exit-CcUpdate does."
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add firewall, dns, maintenance and events."""
    fw = common.subcommand(sub, "firewall", "show or change the firewall policy at runtime")
    fw_sub = fw.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = common.subcommand(fw_sub, "show", "segments, overrides and the flip")
    show.add_argument("--json", action="store_true")
    show.add_argument(
        "--rules",
        action="store_true",
        help="with --netns: the router's nftables ruleset, as nft lists it",
    )
    move = common.subcommand(fw_sub, "set", "put an address or range inside or outside")
    move.add_argument("target", help="address (127.10.0.100) or range (127.10.1.0/24)")
    move.add_argument("zone", choices=("inside", "outside"))
    clear = common.subcommand(fw_sub, "clear", "drop the override for an address or range")
    clear.add_argument("target")
    flip = common.subcommand(fw_sub, "flip", "swap inside and outside for everything")
    flip.add_argument("--off", action="store_true", help="undo the flip")
    common.subcommand(fw_sub, "reset", "drop every override and the flip")
    fw.set_defaults(func=cmd_firewall)

    dns = common.subcommand(sub, "dns", "runtime DNS faults of the running lab")
    dns_sub = dns.add_subparsers(dest="dns_command", required=True, metavar="COMMAND")
    fault = common.subcommand(dns_sub, "fault", "set, clear or list faults per name")
    fault_sub = fault.add_subparsers(dest="action", required=True, metavar="ACTION")
    fset = common.subcommand(fault_sub, "set", "make a name misbehave")
    fset.add_argument("name", help="a name in a lab zone, e.g. ucupdates-r2.contoso.test")
    fset.add_argument("kind", choices=FAULT_KINDS)
    fset.add_argument("--delay", type=float, default=0.0, help="seconds, for kind delay")
    fclear = common.subcommand(fault_sub, "clear", "clear the fault on a name (or --all)")
    fclear.add_argument("name", nargs="?")
    fclear.add_argument("--all", action="store_true")
    flist = common.subcommand(fault_sub, "list", "the faults in force")
    flist.add_argument("--json", action="store_true")
    dns.set_defaults(func=cmd_dns)

    mnt = common.subcommand(
        sub, "maintenance", "take a front end out of production (enter) or return it (exit)"
    )
    mnt.epilog = MAINTENANCE_NOTE
    mnt_sub = mnt.add_subparsers(dest="action", required=True, metavar="ACTION")
    enter = common.subcommand(
        mnt_sub,
        "enter",
        "take SERVER out of production: drain it (transfers in progress finish, new requests "
        "go to the other front ends)",
    )
    enter.epilog = MAINTENANCE_NOTE
    enter.add_argument("server")
    enter.add_argument(
        "--immediate",
        action="store_true",
        help="stop at once instead of draining: cut transfers in progress",
    )
    enter.add_argument(
        "--force", action="store_true", help="even if it is the pool's last server in production"
    )
    enter.add_argument("--json", action="store_true", help="print JSON")
    leave = common.subcommand(mnt_sub, "exit", "return SERVER to production (Exit-CcUpdate)")
    leave.add_argument("server")
    leave.add_argument("--json", action="store_true", help="print JSON")
    mnt.set_defaults(func=cmd_maintenance)

    cap = common.subcommand(
        sub, "capture", "record the traffic of a lab's own network (lab up --netns)"
    )
    cap_sub = cap.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = common.subcommand(
        cap_sub, "start", "start tcpdump on the router and the TLS key log of the servers"
    )
    start.add_argument(
        "name", nargs="?", help="file name without extension (default: the time now)"
    )
    common.subcommand(cap_sub, "stop", "stop it; the pcap and its key log are complete")
    common.subcommand(cap_sub, "status", "the capture running, or the last one")
    for parser in cap_sub.choices.values():
        parser.add_argument("--json", action="store_true", help="print JSON")
    cap.set_defaults(func=cmd_capture)

    ev = common.subcommand(sub, "events", "follow the running lab's events (Ctrl-C to stop)")
    ev.set_defaults(func=cmd_events)


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(common.state_dir(args, create=False))


def cmd_firewall(args: argparse.Namespace) -> int:
    """Show or change the firewall policy."""
    client = _client(args)
    if args.action == "show" and args.rules:
        print(client.get("/v1/network")["ruleset"], end="")
        return 0
    if args.action == "show":
        policy = client.get("/v1/firewall")
    elif args.action == "set":
        policy = client.post(
            "/v1/firewall", {"action": "set", "target": args.target, "zone": args.zone}
        )
    elif args.action == "clear":
        policy = client.post("/v1/firewall", {"action": "clear", "target": args.target})
    elif args.action == "flip":
        policy = client.post("/v1/firewall", {"action": "flip", "on": not args.off})
    else:
        policy = client.post("/v1/firewall", {"action": "reset"})
    if getattr(args, "json", False):
        common.print_json(policy)
        return 0
    console = Console()
    flipped = "  [bold red]FLIPPED: inside and outside swapped[/]" if policy["flipped"] else ""
    console.print(f"inside {policy['inside']}  outside {policy['outside']}{flipped}")
    table = Table(title="overrides", title_justify="left")
    table.add_column("address or range")
    table.add_column("zone")
    for override in policy["overrides"]:
        table.add_row(override["network"], override["zone"])
    console.print(table if policy["overrides"] else "no overrides")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    """Start, stop or show the capture of the lab's own network."""
    client = _client(args)
    if args.action == "start":
        info = client.post("/v1/capture", {"action": "start", "name": args.name})
    elif args.action == "stop":
        info = client.post("/v1/capture", {"action": "stop"})
    else:
        info = client.get("/v1/network")["capture"]
    if args.json:
        common.print_json(info)
        return 0
    if info.get("running"):
        print(f"capturing on the router with {info['tool']} into {info['file']}")
        print(f"TLS session keys: {info['keys']}")
    elif info.get("file"):
        print(f"capture stopped: {info['file']} ({info.get('packets')} packets)")
        print(f"read it: tshark -r {info['file']} -o tls.keylog_file:{info['keys']}")
    else:
        print("no capture yet (lab capture start)")
    return 0


def cmd_dns(args: argparse.Namespace) -> int:
    """Set, clear or list DNS faults."""
    client = _client(args)
    if args.action == "set":
        faults = client.post(
            "/v1/dns/faults", {"name": args.name, "kind": args.kind, "delay": args.delay}
        )
    elif args.action == "clear":
        if args.all == bool(args.name):
            raise ValueError("name a fault to clear, or give --all (not both)")
        faults = client.delete("/v1/dns/faults" + ("" if args.all else f"/{args.name}"))
    else:
        faults = client.get("/v1/dns/faults")
    if getattr(args, "json", False):
        common.print_json(faults)
        return 0
    table = Table(title="DNS faults", title_justify="left")
    for column in ("name", "fault", "delay"):
        table.add_column(column)
    for name, fault in sorted(faults.items()):
        table.add_row(name, str(fault.get("kind")), str(fault.get("delay", "")))
    Console().print(table if faults else "no DNS faults")
    return 0


def cmd_maintenance(args: argparse.Namespace) -> int:
    """Enter or exit maintenance on a front end."""
    client = _client(args)
    path = f"/v1/maintenance/{args.server}/{args.action}"
    body = {"immediate": args.immediate, "force": args.force} if args.action == "enter" else {}
    servers = client.post(path, body)["pool"]["servers"]
    if args.json:
        common.print_json(servers)
    else:
        Console().print(servers_table(servers))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """Print events as they happen."""
    console = Console()
    try:
        for event in _client(args).events():
            kind = event.pop("kind")
            event.pop("at", None)
            details = " ".join(f"{k}={v}" for k, v in sorted(event.items()))
            console.print(f"[bold]{kind}[/] {details}", highlight=False)
    except KeyboardInterrupt:
        pass
    return 0
