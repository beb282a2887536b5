"""`lab phone`: phones on the running lab's wall, added and acted on from a terminal.

The phone wall (lab.ops.wall) hosts emulated phones inside the running lab (`lab up`), on
its clock and its network; the console shows the same wall. Every command here goes
through the lab's admin API (lab.ops.wall_api), so a terminal and the console see and do
the same thing:

    lab phone add CX600 --count 3 --location outside --user bob --plug-in
    lab phone list                      cards and counts (--json)
    lab phone show 00-04-F2-00-00-01    card, System Information, phone log, audit lines
    lab phone plug-in | unplug | sign-in --user NAME | sign-out | call-start | call-end |
              power-cut | remove MAC

A MAC may be written bare or separated by ``-`` or ``:``. Exit codes as every runtime
command: 1 when no lab is running or the phone's state refuses the action, 2 for bad input.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lab.cli import common
from lab.errors import LabStateError
from lab.ops.adminclient import AdminClient

ACTION_HELP = {
    "plug-in": "plug the phone in: it boots and checks for updates",
    "unplug": "unplug the phone: what it is doing is dropped",
    "sign-in": "sign a directory user in on the phone (--user)",
    "sign-out": "sign the user out; the phone keeps its in-band provisioning",
    "call-start": "start a call: a restart to finish an update waits until it ends",
    "call-end": "end a call",
    "power-cut": "cut the power (while installing, the new image is damaged); back in a minute",
    "remove": "take the phone off the wall",
}
"""What each action on one phone (lab.ops.wall.ACTIONS, in its order, and remove) does: the
sub-commands are made from it, as importing the wall would cost every command the whole lab
(tests/lab/cli/test_cli_startup.py holds the two equal)."""
PAGE = 1_000
"""Cards asked for per request (the admin API's largest page)."""
LOG_LINES = 20
"""Phone log lines `lab phone show` prints (all of them with --json)."""
WIDE = 180
"""From this width on, `lab phone list` shows each phone's last log line, in what the
other columns leave (they take about 150 characters)."""
PIPED_WIDTH = 220
"""The width `lab phone list` and `show` lay their tables out in when the output is not a
terminal."""
_STATE_STYLE = {
    "idle": "green",
    "off": "dim",
    "downloading": "cyan",
    "awaiting_reboot": "yellow",
    "flashing": "yellow",
    "stopped": "bold red",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``phone`` and its actions."""
    parser = common.subcommand(sub, "phone", "phones on the running lab's wall: add, list, act")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = common.subcommand(actions, "add", "add phones of a model to the wall")
    add.add_argument("model", help="CX500, CX600, CX3000, CX700, 6721ip, 6725ip, HP4110, HP4120")
    add.add_argument("--count", type=int, default=1, help="how many (default 1)")
    add.add_argument(
        "--location",
        choices=("inside", "outside"),
        default="inside",
        help="which side of the firewall they are plugged in on (default inside)",
    )
    add.add_argument("--user", help="a directory user of the lab's config who signs in on each")
    add.add_argument("--plug-in", action="store_true", help="plug them in at once")
    add.add_argument("--json", action="store_true", help="print JSON")
    add.set_defaults(func=cmd_add)

    listing = common.subcommand(actions, "list", "every phone on the wall, and counts")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)

    show = common.subcommand(
        actions, "show", "one phone: card, System Information, phone log, audit lines"
    )
    show.add_argument("mac", metavar="MAC")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    for name in ACTION_HELP:
        act = common.subcommand(actions, name, ACTION_HELP[name])
        act.add_argument("mac", metavar="MAC")
        if name == "sign-in":
            act.add_argument("--user", required=True, help="a directory user of the lab's config")
        act.add_argument("--json", action="store_true", help="print JSON")
        act.set_defaults(func=cmd_act)


def _client(args: argparse.Namespace) -> AdminClient:
    state = common.state_dir(args, create=False)
    try:
        return AdminClient(state)
    except LabStateError as exc:
        raise LabStateError(f"{exc}; start one with `lab up --state-dir {state}`") from None


def _wide_console() -> Console:
    """A console for wide tables: the terminal's width, or PIPED_WIDTH when the output is
    not a terminal (nobody's window to fit: a file or a pager gets every column)."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPED_WIDTH)


def _path(mac: str) -> str:
    return f"/v1/phones/{quote(mac, safe='')}"


def cmd_add(args: argparse.Namespace) -> int:
    """Add phones to the wall."""
    body: dict[str, Any] = {
        "model": args.model,
        "count": args.count,
        "location": args.location,
        "plug_in": args.plug_in,
    }
    if args.user is not None:
        body["user"] = args.user
    added = _client(args).post("/v1/phones", body)
    if args.json:
        common.print_json(added)
        return 0
    console = Console()
    console.print(added["message"], highlight=False)
    macs = added["added"]
    console.print(", ".join(macs) if len(macs) <= 4 else f"{macs[0]} ... {macs[-1]}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Every phone on the wall, and counts by state, version, model and location."""
    client = _client(args)
    snapshot = client.get(f"/v1/phones?limit={PAGE}")
    while len(snapshot["phones"]) < snapshot["count"]:
        page = client.get(f"/v1/phones?offset={len(snapshot['phones'])}&limit={PAGE}")
        if not page["phones"]:
            break  # phones were removed meanwhile
        snapshot["phones"] += page["phones"]
    if args.json:
        common.print_json({**snapshot, "offset": 0, "page_size": len(snapshot["phones"])})
        return 0
    console = _wide_console()
    if not snapshot["count"]:
        console.print("no phones on the wall (add some with `lab phone add MODEL`)")
        return 0
    console.print(phones_table(snapshot["phones"], console.width))
    console.print(aggregates_text(snapshot), highlight=False)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """One phone in full."""
    detail = _client(args).get(_path(args.mac))
    if args.json:
        common.print_json(detail)
        return 0
    console = _wide_console()
    card = detail["phone"]
    console.print(card_table(card))
    console.print(Panel(detail["system_information"].rstrip(), title="System Information"))
    lines = detail["log"][-LOG_LINES:]
    log = Text("\n".join(line["line"] for line in lines) or "(empty)")
    console.print(Panel(log, title=f"phone log, last {len(lines)} of {len(detail['log'])} lines"))
    if detail["audit"]:
        console.print(audit_table(detail["audit"]))
    else:
        console.print("no audit lines for this MAC yet (a front end writes one per check)")
    return 0


def cmd_act(args: argparse.Namespace) -> int:
    """Do one action to one phone, or take it off the wall."""
    client = _client(args)
    if args.action == "remove":
        result = client.delete(_path(args.mac))
    else:
        body = {"user": args.user} if args.action == "sign-in" else {}
        result = client.post(f"{_path(args.mac)}/{args.action}", body)
    if args.json:
        common.print_json(result)
        return 0
    Console().print(result["message"], highlight=False)
    return 0


# --- Rendering ------------------------------------------------------------------------------


def phones_table(cards: list[dict[str, Any]], width: int) -> Table:
    """The wall's cards, one row each; with the last log line when ``width`` (the
    terminal's) leaves room for it."""
    table = Table(title="phones on the wall", title_justify="left")
    # Identities never wrap; the rest wraps in a narrow terminal, but keeps a few letters.
    for column in ("phone", "MAC", "address", "where", "user", "state", "version", "backup"):
        fixed = column in ("phone", "MAC", "address", "version")
        table.add_column(column, no_wrap=fixed, min_width=None if fixed else 7)
    with_log = width >= WIDE
    if with_log:
        table.add_column("last log line", overflow="ellipsis", no_wrap=True, max_width=width - 150)
    for card in cards:
        style = _STATE_STYLE.get(card["state"], "")
        state = card["state_text"] + (f" {_percent(card['progress'])}" if card["progress"] else "")
        if card["calls"]:
            state += " (in a call)" if card["calls"] == 1 else f" ({card['calls']} calls)"
        row = [
            card["label"],
            card["mac"],
            card["address"],
            _where(card),
            card["user"] or "",
            f"[{style}]{escape(state)}[/]" if style else escape(state),
            card["version"],
            card["backup_version"] or "",
        ]
        last = card["last_log"]
        table.add_row(*row, *([Text(_message(last))] if with_log else []))
    return table


def aggregates_text(snapshot: dict[str, Any]) -> str:
    """The counts under the table, one line each."""
    aggregates = snapshot["aggregates"]
    count, limit = snapshot["count"], snapshot["limit"]
    lines = [f"{count:,} phone{'s' if count != 1 else ''} (room for {limit - count:,} more)"]
    for title, key in (
        ("state", "by_state"),
        ("version", "by_version"),
        ("model", "by_model"),
        ("plugged in", "by_location"),
        ("firewall zone", "by_zone"),
    ):
        counts = aggregates[key]
        lines.append(f"  {title}: " + ", ".join(f"{name} {n:,}" for name, n in counts.items()))
    return "\n".join(lines)


def card_table(card: dict[str, Any]) -> Table:
    """One card as rows of a name and a value."""
    table = Table(title=f"{card['label']} ({card['mac']})", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("model", f"{card['vendor']} {card['model']}"),
        ("serial number", card["serial"]),
        ("address", card["address"]),
        ("where", _where(card)),
        ("user", card["user"] or "not signed in"),
        ("state", card["state_text"]),
        ("current version", card["version"]),
        ("backup version", card["backup_version"] or "none"),
        ("pending restart into", card["pending_version"] or "-"),
        ("calls in progress", str(card["calls"])),
        ("download", _progress(card["progress"]) if card["progress"] else "-"),
    ]
    if card["error"]:
        rows.append(("stopped", card["error"]))
    for name, value in rows:
        table.add_row(name, Text(value))
    return table


def audit_table(lines: list[dict[str, str]]) -> Table:
    """The audit lines the front ends wrote for the phone."""
    table = Table(title="audit lines for this MAC", title_justify="left")
    for column in ("time", "server", "site", "client", "status", "installed", "decision"):
        table.add_column(column, no_wrap=column in ("time", "client", "status"))
    table.add_column("reason", overflow="fold")
    for line in lines:
        decision = line["decision"]
        if line.get("served_from"):
            decision += f" ({line['served_from']})"
        table.add_row(
            line["time"],
            line["server"],
            line["site"],
            line["client_address"],
            line["status"],
            _installed(line["installed_modules"]),
            decision,
            Text(line["reason"]),
        )
    return table


def _where(card: dict[str, Any]) -> str:
    """Where the phone is plugged in, and the zone the firewall puts it in when that differs."""
    if card["zone"] == card["location"]:
        return str(card["location"])
    return f"{card['location']} (firewall: {card['zone']})"


def _message(line: dict[str, Any] | None) -> str:
    """A log line without its time (the table is about now)."""
    return "" if line is None else str(line["line"]).split(" ", 1)[-1]


def _percent(progress: dict[str, Any]) -> str:
    done, total = progress["done"], progress["total"]
    return f"{100 * done // total}%" if total else f"{done:,} bytes"


def _progress(progress: dict[str, Any]) -> str:
    done, total = progress["done"], progress["total"]
    if not total:
        return f"{done:,} bytes"
    return f"{100 * done // total}% of {total:,} bytes"


def _installed(modules: str) -> str:
    """The versions in an audit line's installed modules (``CPE.nbt:4.0.7577.4366 ...``)."""
    versions = [part.split(":", 1)[-1] for part in modules.split()]
    return ", ".join(dict.fromkeys(versions))
