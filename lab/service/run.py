"""Running the service on its own: ``python -m lab.service`` or ``run_service``.

The event loop is chosen here, when the service is run, and not when anything is imported:
uvloop where it is installed, asyncio's own loop otherwise. ``serve`` is the coroutine a
larger runner can await instead, on whatever loop it already runs.

How a lab process picks its loop (``event_loop_factory``) and stops on a signal
(``stop_on_signals``) is written once, here, for every runner of lab's to share. (The phones'
side, emulator/cli.py, picks its own loop: it never imports lab.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from lab.errors import LabError
from lab.net.config import LabConfig, load_config
from lab.net.firewall import FirewallPolicy
from lab.service.pool import ServicePool


async def serve(
    config: LabConfig,
    state_dir: Path,
    *,
    ready: Callable[[ServicePool], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a pool for ``config`` until ``stop`` is set (or SIGINT / SIGTERM without one)."""
    firewall = FirewallPolicy(config.inside, config.outside)
    signals: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if stop is None:
        stop = asyncio.Event()
        signals = stop_on_signals(stop)
    with signals:
        async with ServicePool(config, state_dir, firewall=firewall) as pool:
            if ready is not None:
                ready(pool)
            await stop.wait()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a lab process cleanly."""


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Within the block, SIGINT or SIGTERM sets ``stop`` (on the running loop) instead of
    ending the process; on the way out both are back to Python's default handling."""
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop where uvloop is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop builds wherever the lab runs
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_service(
    config: LabConfig,
    state_dir: Path,
    ready: Callable[[ServicePool], None] | None = None,
) -> None:
    """Run the service until SIGINT or SIGTERM, on uvloop where available."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(config, state_dir, ready=ready))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lab.service [--config FILE] [--state-dir DIR]``: run and print endpoints."""
    parser = argparse.ArgumentParser(
        prog="python -m lab.service", description="Run the Device Update Web service alone."
    )
    parser.add_argument("--config", type=Path, default=None, help="lab TOML file")
    parser.add_argument("--state-dir", type=Path, default=Path("state"), help="state directory")
    args = parser.parse_args(argv)

    def ready(pool: ServicePool) -> None:
        print(json.dumps(pool.endpoints(), indent=2), flush=True)

    try:
        run_service(load_config(args.config), args.state_dir, ready)
    except LabError as exc:
        print(f"lab.service: {exc}", file=sys.stderr)
        return 1
    return 0
