"""`lab test-device add|list|remove`: devices that receive pending updates.

A device is named by MAC address (twelve hex digits, bare or separated by ``-`` or ``:``,
stored as ``00-04-F2-00-00-01``) or by serial number (trimmed, upper-cased).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from lab.cli import common

if TYPE_CHECKING:
    from lab.store.store import TestDevice


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``test-device`` and its actions."""
    parser = common.subcommand(sub, "test-device", "devices that receive pending updates")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = common.subcommand(actions, "add", "make a device a test device")
    _identifier(add)
    add.add_argument("--name", help="a label for people (default: the MAC or serial)")
    add.add_argument("--json", action="store_true", help="print JSON")
    add.set_defaults(func=cmd_add)

    remove = common.subcommand(actions, "remove", "stop treating a device as a test device")
    _identifier(remove)
    remove.add_argument("--json", action="store_true", help="print JSON")
    remove.set_defaults(func=cmd_remove)

    listing = common.subcommand(actions, "list", "every test device")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)


def _identifier(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--mac", metavar="MAC", help="MAC address, e.g. 00-04-F2-00-00-01")
    which.add_argument("--serial", metavar="SERIAL", help="serial number, e.g. CX6A000001")


def devices_table(devices: list[TestDevice]) -> Table:
    """A readable table of test devices."""
    table = Table(title="test devices", title_justify="left")
    for column in ("by", "identifier", "name", "added"):
        table.add_column(column)
    for device in devices:
        by = "MAC" if device.kind == "mac" else "serial"
        table.add_row(by, device.value, device.name, device.added_at)
    return table


def cmd_add(args: argparse.Namespace) -> int:
    """Add a test device."""
    device = common.administration(args).add_test_device(args.mac, args.serial, args.name)
    if args.json:
        common.print_json(device.as_dict())
    else:
        Console().print(f"test device added: {device.value} ({device.name})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Remove a test device."""
    device = common.administration(args).remove_test_device(args.mac, args.serial)
    if args.json:
        common.print_json(device.as_dict())
    else:
        Console().print(f"test device removed: {device.value} ({device.name})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List test devices."""
    from lab.ops.administer import devices_json

    devices = common.administration(args).test_devices()
    if args.json:
        common.print_json(devices_json(devices))
        return 0
    console = Console()
    if devices:
        console.print(devices_table(devices))
    else:
        console.print("no test devices (add one with: lab test-device add --mac MAC)")
    return 0
