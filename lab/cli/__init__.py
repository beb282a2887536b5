"""The ``lab`` command line: one sub-command module per area, each with ``register``.

Exit codes: 0 success, 1 the operation failed (for example a scenario's outcome was not
the expected one), 2 bad input (arguments, config, cab files): the message says what;
130 interrupted, 141 stdout's reader went away (``lab update list --json | head -1``),
quietly, as any tool in a pipeline.

`lab` starts in a fraction of a second: modules that cost time (aiohttp, the service, the
runner, the emulator, cryptography) are imported by the commands that use them, not at the
top of the command modules, so building the parser and a light command load only what
they need (tests/lab/cli/test_cli_startup.py checks it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from lab.cli import (
    cab,
    common,
    console,
    devconfig,
    phone,
    phones,
    run,
    runtime,
    scenario,
    testdevice,
    update,
)
from lab.errors import ConfigError, LabError, NetnsUnavailable

# Each module adds its sub-commands; keep this list in the order `lab --help` shows them.
COMMANDS: tuple[ModuleType, ...] = (
    run,
    console,
    update,
    testdevice,
    devconfig,
    phones,
    phone,
    runtime,
    cab,
    scenario,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``lab`` argument parser."""
    parser = common.ArgumentParser(
        prog="lab", description="Device Update Lab: DNS, update service and operations."
    )
    common.add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lab`` CLI and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.config is not None:
            # A named config is checked before anything runs, whatever the command.
            common.config_from(args)
        code: int = args.func(args)
        # A reader that went away shows here at the latest, not in the flush at exit.
        sys.stdout.flush()
    except BrokenPipeError as exc:
        if common.stdout_gone():
            return common.stdout_closed()
        # Another pipe or socket (the admin API's, say): an error like any other.
        print(f"lab: the other end closed the connection: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, NetnsUnavailable) as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    except (LabError, ValueError) as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
