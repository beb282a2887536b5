"""What every ``lab`` sub-command shares: global options, the config and the state directory."""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from lab.clock import LabClock, utc_now
from lab.errors import AdminError, LabStateError
from lab.net.config import LabConfig, load_config
from lab.ops.adminclient import AdminClient
from lab.ops.runfile import read_run_file

if TYPE_CHECKING:
    from contextlib import ExitStack

    from lab.net.netns import LabNetwork
    from lab.ops.administer import Administration
    from lab.store.store import Store

DEFAULT_STATE_DIR = Path("state")

DEMO_SCALE = 60.0
"""lab.ops.demo's DEFAULT_SCALE, for help texts and defaults: importing the demo to read it
would cost every command the whole lab (tests/lab/cli/test_cli_startup.py holds them equal)."""

STDOUT_CLOSED = 141
"""Exit code when stdout's reader went away (``lab update list --json | head -1``): 128 +
SIGPIPE, what a shell reports for a tool that SIGPIPE ended, as 130 is 128 + SIGINT."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """--config and --state-dir, accepted before or after the sub-command."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="lab TOML file (default: the embedded default lab)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where the lab keeps its store, run.json and logs (default: ./state)",
    )


def subcommand(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    """Add a sub-command that also accepts the global options after its name."""
    parser = sub.add_parser(name, help=help_text, description=help_text)
    # SUPPRESS keeps a value given before the sub-command from being overwritten.
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def config_from(args: argparse.Namespace) -> LabConfig:
    """The lab config the arguments name."""
    return load_config(args.config)


def state_dir(args: argparse.Namespace, create: bool = True) -> Path:
    """The state directory, created (private to this user) when ``create``."""
    path: Path = args.state_dir
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def lab_clock(state: Path) -> Callable[[], datetime]:
    """Lab time for the lab of ``state``: its published clock while it runs, else the wall
    clock (what the CLI's store commands stamp their changes with)."""
    try:
        info = read_run_file(state)
    except LabStateError:
        return utc_now
    clock = info.get("clock") if info["alive"] else None
    return LabClock.published(clock).now if clock else utc_now


def open_store(state: Path, config: LabConfig | None = None) -> Store:
    """The update store of ``state``, stamping changes with the lab's time (``config``
    moves the rules of a store from before pools to its pools)."""
    from lab.store.store import Store

    return Store.open(state, now=lab_clock(state), pool_of=config.pool_of() if config else None)


def _ask_running_lab(state: Path, path: str) -> AdminError | None:
    """POST ``path`` to the lab running from ``state``, if one is; the error when a running
    lab did not answer (nothing to do, and None, when no lab runs)."""
    try:
        running = read_run_file(state)["alive"]
    except LabStateError:
        return None
    if not running:
        return None
    try:
        AdminClient(state).post(path)
    except AdminError as exc:
        return exc
    return None


def announce_store_change(state: Path) -> None:
    """Tell the lab running from ``state``, if one is, that its update store changed, so
    its very next check sees the change (it would otherwise notice within a moment)."""
    failed = _ask_running_lab(state, "/v1/store/refresh")
    if failed is not None:
        from lab.service.updates import REFRESH_INTERVAL

        print(
            f"note: the running lab was not told of this change ({failed}); it takes it "
            f"within {REFRESH_INTERVAL} s of a check",
            file=sys.stderr,
        )


def flush_inventory(state: Path) -> None:
    """Have the lab running from ``state``, if one is, write the checks it has answered but
    not yet recorded (it writes them in batches), so the inventory read next holds them."""
    failed = _ask_running_lab(state, "/v1/inventory/flush")
    if failed is not None:
        print(
            f"note: the running lab did not write its latest checks ({failed}); the last "
            "half-second of them may be missing",
            file=sys.stderr,
        )


def administration(args: argparse.Namespace, config: LabConfig | None = None) -> Administration:
    """The administrator's operations on the state directory the arguments name (created),
    stamped with the lab's time, each change announced to a lab running from it."""
    from lab.net.pki import LabPKI
    from lab.ops.administer import Administration

    config = config if config is not None else config_from(args)
    state = state_dir(args)
    return Administration(
        config=config,
        state_dir=state,
        pki=LabPKI(config),
        now=lab_clock(state),
        announce=lambda action: announce_store_change(state),
    )


def print_json(data: Any) -> None:
    """Pretty JSON on stdout."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone: its write end then polls POLLERR
    (a terminal, a file or a pipe still read never does)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def stdout_closed() -> int:
    """Send what is left for stdout to the null device once its reader has closed the pipe.

    Python ignores SIGPIPE, so writing to a pipe nobody reads raises BrokenPipeError; the
    caller catches it, and this keeps the interpreter's own flush of stdout at exit from
    raising it again. Returns STDOUT_CLOSED, the code to exit with.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return STDOUT_CLOSED


def time_scale(text: str) -> float:
    """An argparse type: a time scale, lab (or phone) seconds per real second, > 0."""
    try:
        scale = float(text)
    except ValueError:
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time scale (a number > 0)")
    return scale


def add_netns_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--netns and --capture [NAME], for commands that run a lab."""
    parser.add_argument(
        "--netns",
        action="store_true",
        help=f"run {what} in a network of its own: namespaces, a router with nftables rules "
        "made from the firewall, ports 53/443/4443 (docs/network-tests.md)",
    )
    parser.add_argument(
        "--capture",
        nargs="?",
        const="",
        default=None,
        metavar="NAME",
        help="with --netns: record the router's traffic and the TLS keys into "
        "<state>/captures/NAME.pcap and NAME.keys (default name: the time)",
    )


def own_network(
    args: argparse.Namespace, config: LabConfig, stack: ExitStack
) -> tuple[LabConfig, LabNetwork | None]:
    """The config to run and the lab's own network when ``--netns`` asks for one, built now
    (before any thread starts) and taken down when ``stack`` closes."""
    if not args.netns:
        if args.capture is not None:
            raise ValueError("--capture records the lab's own network: give --netns too")
        return config, None
    from lab.net.netns import LabNetwork, netns_config

    config = netns_config(config)
    network = stack.enter_context(LabNetwork(config))
    return config, network
