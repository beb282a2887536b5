"""Running the service on its own: ``python -m lab.service`` or ``run_service``.

The event loop is chosen here, when the service is run, and not when anything is imported:
uvloop where it is installed, asyncio's own loop otherwise. ``serve`` is the coroutine a
larger runner can await instead, on whatever loop it already runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lab.config import LabConfig, load_config
from lab.errors import LabError
from lab.firewall import FirewallPolicy
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
    loop = asyncio.get_running_loop()
    own_signals = stop is None
    stop = stop or asyncio.Event()
    if own_signals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    try:
        async with ServicePool(config, state_dir, firewall=firewall) as pool:
            if ready is not None:
                ready(pool)
            await stop.wait()
    finally:
        if own_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
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
