"""Running the service on its own: SIGINT or SIGTERM stops it cleanly, through the loop, and
only while it runs."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from lab.net.config import LabConfig
from lab.service import ServicePool
from lab.service.run import STOP_SIGNALS, serve, stop_on_signals


class ReachedTheProcess(AssertionError):
    """A signal reached Python's own handler instead of the loop's."""


@pytest.fixture
def caught_signals() -> Iterator[None]:
    """A signal the loop does not take fails the test, instead of ending the test run."""

    def caught(signum: int, frame: FrameType | None) -> None:
        raise ReachedTheProcess(signal.Signals(signum).name)

    before = {signum: signal.signal(signum, caught) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@pytest.mark.usefixtures("caught_signals")
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
async def test_a_signal_within_the_block_sets_stop_and_the_loop_lets_go_after(
    signum: signal.Signals,
) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signum)
        await stop.wait()
    # The loop no longer takes them: Python's default handling is back.
    default = signal.default_int_handler if signum is signal.SIGINT else signal.SIG_DFL
    assert signal.getsignal(signum) is default


@pytest.mark.usefixtures("caught_signals")
async def test_serve_with_no_stop_of_its_own_stops_on_sigterm(
    service_config: LabConfig, service_state: Path
) -> None:
    served: list[ServicePool] = []

    def ready(pool: ServicePool) -> None:
        served.append(pool)
        os.kill(os.getpid(), signal.SIGTERM)

    await serve(service_config, service_state, ready=ready)
    assert len(served) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
