"""`lab console`: the lab console, a web page on 127.0.0.1 for demos and training.

With the ``--state-dir`` of a running `lab up` it attaches to that lab; otherwise it starts
a lab itself in this process (the embedded default config, or ``--config``), on a clock
``--scale`` times real time, as `lab up` would. It opens no browser: it prints a login
link that works once, and serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console as Terminal

from lab.cli import common
from lab.cli.run import print_lab_up
from lab.clock import LabClock
from lab.errors import LabStateError
from lab.net.config import DEFAULT_SOURCE, LabConfig, load_config
from lab.ops.runfile import read_run_file

if TYPE_CHECKING:
    from lab.ops.runner import Lab


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``console``."""
    console = common.subcommand(
        sub,
        "console",
        "serve the lab console (a web page on 127.0.0.1) for the lab of --state-dir, "
        "starting one there if none runs",
    )
    console.add_argument(
        "--port",
        type=_port,
        default=None,
        help="the console's port on 127.0.0.1 (default: ports.console of the config, 10081; "
        "0 picks a free one)",
    )
    console.add_argument(
        "--scale",
        type=common.time_scale,
        default=None,
        help=f"lab seconds per real second for a lab the console starts (default "
        f"{common.DEMO_SCALE:g}: a phone's five-minute wait takes five seconds)",
    )
    common.add_netns_options(console, "a lab the console starts")
    console.set_defaults(func=cmd_console)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return port


def cmd_console(args: argparse.Namespace) -> int:
    """Serve the console until a signal; attach to a running lab or start one."""
    from lab.ops.runner import Lab, run_event_loop

    state: Path = args.state_dir
    running = _running(state)
    if running is not None and args.scale is not None:
        raise ValueError(
            f"--scale is for a lab the console starts; the lab of {state} is running "
            "with its own clock (lab up --scale)"
        )
    if running is not None and (args.netns or args.capture is not None):
        raise ValueError(
            f"--netns and --capture are for a lab the console starts; the lab of {state} is "
            "running in the network it was started with (lab capture starts a capture)"
        )
    terminal = Terminal()
    if running is not None:
        config = _config_of(args, running)
        print(f"attaching to the lab running from {state} (pid {running['pid']})", flush=True)
        # Its demo runs at the demo's usual pace; the lab attached to keeps its own clock.
        run_event_loop(
            lambda: _serve(terminal, config, args.port, common.DEMO_SCALE, attach_to=state)
        )
    else:
        scale = args.scale or common.DEMO_SCALE
        with contextlib.ExitStack() as stack:
            config, network = common.own_network(args, common.config_from(args), stack)
            lab = Lab(
                config,
                common.state_dir(args),
                clock=LabClock.starting(None, scale),
                network=network,
                capture=args.capture,
            )
            # The demo runs at the console's scale too (a fresh lab of its own).
            run_event_loop(lambda: _serve(terminal, config, args.port, scale, lab=lab))
    print("console stopped")
    return 0


def _running(state: Path) -> dict[str, object] | None:
    """run.json of the lab running from ``state``, or None when none is."""
    try:
        info = read_run_file(state)
    except LabStateError:
        return None
    return info if info["alive"] else None


def _config_of(args: argparse.Namespace, running: dict[str, object]) -> LabConfig:
    """The running lab's config: --config if given, else the file run.json names."""
    if args.config is not None:
        return common.config_from(args)
    source = str(running.get("config", DEFAULT_SOURCE))
    return load_config(None if source == DEFAULT_SOURCE else source)


async def _serve(
    terminal: Terminal,
    config: LabConfig,
    port: int | None,
    demo_scale: float,
    *,
    lab: Lab | None = None,
    attach_to: Path | None = None,
) -> None:
    """Serve the console for ``lab`` (started here), or for the lab running from
    ``attach_to``, until SIGINT or SIGTERM."""
    from lab.console.app import Console
    from lab.console.labapi import LabAPI
    from lab.service.run import stop_on_signals

    stop = asyncio.Event()
    with stop_on_signals(stop):
        async with contextlib.AsyncExitStack() as stack:
            if lab is not None:
                await stack.enter_async_context(lab)
                print_lab_up(terminal, lab)
                api = LabAPI.for_lab(lab)
            else:
                assert attach_to is not None
                api = LabAPI.attach(attach_to)
            console = await stack.enter_async_context(
                Console(api, config, port=port, demo_scale=demo_scale)
            )
            print(f"the lab console is at {console.url}; log in with this link (it works once):")
            # The link on a line of its own, for a terminal's click and for tools on a pipe.
            print(console.login_url(), flush=True)
            await stop.wait()
