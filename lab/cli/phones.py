"""`lab phones`: the phones the update service has seen, and which of them need attention.

One line per phone (by MAC address): what it runs, the approved version of its rule on
the server it last checked with, where it was (inside, or outside through the edge), when
and who was signed in. Flags (lab.inventory): ``not-approved`` when it runs another
version than the approved one, ``left-behind`` when that approval is more than 60 days
old. The service writes the inventory in batches, so a check shows here within a second.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from lab.cli import common

if TYPE_CHECKING:
    from lab.service.inventory import PhoneStatus


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``phones``."""
    parser = common.subcommand(sub, "phones", "the phones the update service has seen")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_phones)


def phones_table(statuses: list[PhoneStatus]) -> Table:
    """A readable table of the inventory: ``approved`` is the version the rule of the
    phone's kind approves in ``pool``, the pool of the ``server`` it last checked with."""
    from lab.service.inventory import Flag

    flag_style = {Flag.NOT_APPROVED: "yellow", Flag.LEFT_BEHIND: "bold red"}
    table = Table(title="phones", title_justify="left")
    for column in (
        "MAC",
        "serial",
        "model",
        "version",
        "approved",
        "pool",
        "server",
        "where",
        "last seen",
        "last user",
        "flags",
    ):
        table.add_column(column, no_wrap=column in ("MAC", "version", "approved"))
    for status in statuses:
        phone = status.phone
        flags = " ".join(f"[{flag_style[f]}]{f.value}[/]" for f in status.flags)
        table.add_row(
            phone.mac,
            phone.serial,
            f"{phone.kind.vendor} {phone.kind.model}",
            phone.version,
            status.approved or "[dim](none)[/dim]",
            phone.pool,
            phone.server,
            f"{phone.zone} {phone.address}",
            phone.last_seen,
            phone.last_user or "",
            flags,
        )
    return table


def cmd_phones(args: argparse.Namespace) -> int:
    """List the inventory."""
    from lab.service.inventory import read_inventory

    state = common.state_dir(args)
    # Every check a running lab has answered, not only those of its last batch.
    common.flush_inventory(state)
    # Assessed at lab time: the support window runs on the lab's clock.
    now = common.lab_clock(state)
    with common.open_store(state, common.config_from(args)) as store:
        statuses = read_inventory(store, now())
    if args.json:
        common.print_json([s.as_dict() for s in statuses])
        return 0
    console = Console()
    if statuses:
        console.print(phones_table(statuses))
    else:
        console.print("no phones seen yet (a phone appears after its first update check)")
    return 0
