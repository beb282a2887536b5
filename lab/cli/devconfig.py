"""`lab config show|set`: the device-update configuration (Set-CsDeviceUpdateConfiguration).

Settings keep Lync's names and defaults; ``set`` takes ``NAME=VALUE`` pairs (names in any
case, ``NAME=default`` restores the default) and refuses a value out of its range with
the range in the message. Time spans are written as Lync writes them (``14.00:00:00``,
``00:02:00``) or as ``14d`` / ``2m``.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from lab.cli import common
from lab.errors import SettingError
from lab.store.devconfig import SETTINGS, DeviceUpdateConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config show`` and ``config set``."""
    parser = common.subcommand(sub, "config", "show or change the device-update configuration")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    show = common.subcommand(actions, "show", "every setting, its default and its range")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    names = ", ".join(s.name for s in SETTINGS)
    change = common.subcommand(actions, "set", "change settings, all or none")
    change.add_argument(
        "pairs", nargs="+", metavar="NAME=VALUE", help=f"e.g. MaxLogFileSize=2048000; {names}"
    )
    change.add_argument("--json", action="store_true", help="print JSON")
    change.set_defaults(func=cmd_set)


def config_table(config: DeviceUpdateConfig) -> Table:
    """A readable table of the configuration."""
    table = Table(title="device-update configuration", title_justify="left")
    table.add_column("setting", no_wrap=True)
    table.add_column("value")
    table.add_column("default")
    table.add_column("allowed")
    texts = config.texts()
    for entry in SETTINGS:
        value = texts[entry.name] or "(not set)"
        default = entry.default or "(not set)"
        table.add_row(entry.name, value if value != default else f"[dim]{value}[/dim]", default,
                      entry.allowed)  # fmt: skip
    return table


def _show(args: argparse.Namespace, config: DeviceUpdateConfig) -> int:
    from lab.ops.administer import settings_json

    if args.json:
        common.print_json(settings_json(config))
    else:
        Console().print(config_table(config))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Show the configuration."""
    return _show(args, common.administration(args).device_config())


def cmd_set(args: argparse.Namespace) -> int:
    """Change settings."""
    changes: dict[str, str] = {}
    for pair in args.pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name.strip():
            raise SettingError(f"{pair!r} is not NAME=VALUE")
        changes[name.strip()] = value
    return _show(args, common.administration(args).set_settings(changes))
